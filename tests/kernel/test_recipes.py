"""The kernel's crypto recipes beyond hash-to-curve, and the key directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.crypto import (
    BlindingKey,
    HpkeKeyPair,
    SigningKey,
    canonical_json,
    commitment,
    derive_blinding_key,
    hash_to_curve,
    random_bytes,
    random_on_curve_token,
    seal,
    signed_message,
    validate_token,
    verify_signature,
)
from kernel.errors import (
    ConfigurationError,
    CryptoError,
    DecryptionFailed,
    InvalidPoint,
    KeyStoreError,
    SignatureInvalid,
)
from kernel.keys import KeyStore

X25519_VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "x25519.json").read_text("utf-8")
)

# --- blinding --------------------------------------------------------------------------


@pytest.mark.parametrize("case", X25519_VECTORS["single"], ids=lambda c: c["name"])
def test_rfc7748_single_vectors(case: dict[str, Any]) -> None:
    key, u = bytes.fromhex(case["scalar"]), bytes.fromhex(case["u"])
    raw = X25519PrivateKey.from_private_bytes(key).exchange(X25519PublicKey.from_public_bytes(u))
    assert raw.hex() == case["output"]
    if case["accepted"]:
        assert BlindingKey(key).blind(u).hex() == case["output"]
    else:
        with pytest.raises(InvalidPoint):
            BlindingKey(key).blind(u)


def test_rfc7748_iterated_vectors() -> None:
    k = u = (9).to_bytes(32, "little")
    wanted = {c["iterations"]: c["output"] for c in X25519_VECTORS["iterated"]}
    for iteration in range(1, max(wanted) + 1):
        k, u = BlindingKey(k).blind(u), k
        if iteration in wanted:
            assert k.hex() == wanted[iteration]


tokens = st.builds(hash_to_curve, st.sampled_from(["email", "phone"]), st.text(max_size=30))
secrets_ = st.binary(min_size=32, max_size=32)


@settings(max_examples=60)
@given(token=tokens, a=secrets_, b=secrets_)
def test_blinding_commutes(token: bytes, a: bytes, b: bytes) -> None:
    ka, kb = BlindingKey(a), BlindingKey(b)
    ab = kb.blind(ka.blind(token))
    assert ab == ka.blind(kb.blind(token))
    validate_token(ab)  # blinded tokens are valid tokens for the next party


@settings(max_examples=30)
@given(token=tokens, a=secrets_, b=secrets_)
def test_different_keys_give_unlinkable_tokens(token: bytes, a: bytes, b: bytes) -> None:
    if a[:31] != b[:31] or (a[31] & 0x7F) != (b[31] & 0x7F):  # same clamped scalar otherwise
        assert BlindingKey(a).blind(token) != BlindingKey(b).blind(token)


def test_blind_many_equals_blind_and_validates() -> None:
    key = BlindingKey(random_bytes(32))
    batch = [hash_to_curve("email", f"u{i}@example.com") for i in range(20)]
    assert key.blind_many(batch) == [key.blind(t) for t in batch]
    with pytest.raises(InvalidPoint):
        key.blind_many([*batch, bytes(32)])


def test_derived_keys_separate_scope_segment_and_epoch() -> None:
    master = random_bytes(32)
    token = hash_to_curve("email", "a@example.com")
    base = derive_blinding_key(master, scope="agr-1", segment="sailing", epoch=7).blind(token)
    again = derive_blinding_key(master, scope="agr-1", segment="sailing", epoch=7).blind(token)
    assert base == again
    for other in (
        {"scope": "agr-2", "segment": "sailing", "epoch": 7},
        {"scope": "agr-1", "segment": "sailin", "epoch": 7},
        {"scope": "agr-1", "segment": "sailing", "epoch": 8},
        # length prefixes: moving a character between fields changes the key
        {"scope": "agr-1s", "segment": "ailing", "epoch": 7},
    ):
        assert derive_blinding_key(master, **other).blind(token) != base  # type: ignore[arg-type]
    assert "secret" in repr(derive_blinding_key(master, scope="a", segment="b", epoch=1))
    assert master.hex() not in repr(derive_blinding_key(master, scope="a", segment="b", epoch=1))


def test_random_tokens_are_valid_and_distinct() -> None:
    dummies = {random_on_curve_token() for _ in range(200)}
    assert len(dummies) == 200
    for token in dummies:
        validate_token(token)


# --- canonical JSON ----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(value=json_values)
def test_canonical_json_is_rfc8785(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(CryptoError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected


def test_canonical_json_falls_back_for_floats_and_refuses_bad_strings() -> None:
    assert canonical_json({"x": 1.5e21, "y": 0.1}) == rfc8785.dumps({"x": 1.5e21, "y": 0.1})
    with pytest.raises(CryptoError):
        canonical_json({"x": "\ud800"})
    with pytest.raises(CryptoError):
        canonical_json({"x": float("nan")})


# --- signatures --------------------------------------------------------------------------


def test_sign_and_verify_and_every_kind_of_tampering() -> None:
    key = SigningKey.generate()
    fields = {"origin": "accord/node/a", "tree_size": 3, "root_hash": "00" * 32}
    signature = key.sign("tree-head", fields)
    verify_signature(key.public_key, "tree-head", fields, signature)
    with pytest.raises(SignatureInvalid):
        verify_signature(key.public_key, "tree-head", {**fields, "tree_size": 4}, signature)
    with pytest.raises(SignatureInvalid):  # replayed as another kind of object
        verify_signature(key.public_key, "agreement", fields, signature)
    with pytest.raises(SignatureInvalid):
        verify_signature(SigningKey.generate().public_key, "tree-head", fields, signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    with pytest.raises(SignatureInvalid):
        verify_signature(key.public_key, "tree-head", fields, flipped)
    with pytest.raises(SignatureInvalid):
        verify_signature(b"short", "tree-head", fields, signature)
    with pytest.raises(CryptoError):
        key.sign("no-such-kind", fields)


def test_signed_message_has_a_distinct_prefix_per_kind() -> None:
    fields = {"a": 1}
    assert signed_message("tree-head", fields) == b'accord/tree-head/v1\n{"a":1}'
    assert signed_message("agreement", fields) != signed_message("tree-head", fields)


def test_signing_key_pem_round_trip_and_repr() -> None:
    key = SigningKey.generate()
    again = SigningKey.from_pem(key.to_pem())
    assert again.public_key == key.public_key
    assert b"PRIVATE" not in repr(key).encode() and key.key_id[:16] in repr(key)
    with pytest.raises(CryptoError):
        SigningKey.from_pem(b"not a key")


# --- commitments and HPKE ----------------------------------------------------------------


def test_commitments_bind_record_and_salt() -> None:
    salt, record = random_bytes(32), b'{"a":1}'
    value = commitment(salt, record)
    assert len(value) == 32 and value == commitment(salt, record)
    assert commitment(random_bytes(32), record) != value
    assert commitment(salt, b'{"a":2}') != value
    with pytest.raises(CryptoError):
        commitment(b"short", record)


def test_hpke_seal_and_open_with_context_binding() -> None:
    pair = HpkeKeyPair(random_bytes(32))
    sealed = seal(b"payload", recipient_public_key=pair.public_key, context=b"agr|flow|bt")
    assert b"payload" not in sealed
    assert pair.open(sealed, context=b"agr|flow|bt") == b"payload"
    with pytest.raises(DecryptionFailed):
        pair.open(sealed, context=b"agr|other-flow|bt")
    with pytest.raises(DecryptionFailed):
        HpkeKeyPair(random_bytes(32)).open(sealed, context=b"agr|flow|bt")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        pair.open(tampered, context=b"agr|flow|bt")


# --- key directory -----------------------------------------------------------------------


def test_key_store_create_open_and_permissions(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "keys", name="solent-boats")
    opened = KeyStore.open(tmp_path / "keys")
    assert opened.identity == store.identity
    assert opened.identity.origin == "accord/node/solent-boats"
    assert opened.signing_key().public_key == store.identity.signing_public_key
    assert opened.hpke_key().public_key == store.identity.hpke_public_key
    assert len(opened.master_secret()) == 32
    for name in ("signing.pem", "master.key", "hpke.key"):
        mode = stat.S_IMODE(os.stat(tmp_path / "keys" / name).st_mode)
        assert mode == 0o600, name
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        KeyStore.create(tmp_path / "keys", name="solent-boats")


def test_key_store_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="accord node init"):
        KeyStore.open(tmp_path / "none")
    with pytest.raises(ConfigurationError):
        KeyStore.create(tmp_path / "k", name="Bad Name")
    store = KeyStore.create(tmp_path / "k", name="n1")
    (tmp_path / "k" / "signing.pem").write_bytes(SigningKey.generate().to_pem())
    with pytest.raises(KeyStoreError, match="does not match"):
        store.signing_key()
    (tmp_path / "k" / "master.key").write_bytes(b"short")
    with pytest.raises(KeyStoreError):
        store.master_secret()
