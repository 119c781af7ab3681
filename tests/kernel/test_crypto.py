"""kernel.crypto: hash-to-curve against its vectors and an independent reference; tokens.

The reference below re-derives hash-to-curve from the text of docs/normalization.md with
hashlib and Euler's criterion (``pow``), sharing no code with the module under test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from kernel.crypto import (
    CURVE25519_P,
    HASH_TO_CURVE_TAG,
    SMALL_ORDER_U,
    PositionCipher,
    hash_to_curve,
    is_on_curve,
    sha256,
    validate_token,
)
from kernel.errors import InvalidPoint, UnknownHandle

P = 2**255 - 19
A = 486662
VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "hash_to_curve.json").read_text("utf-8")
)


def euler_on_curve(u: int) -> bool:
    """u is on Curve25519 iff u^3 + A u^2 + u is a square mod p (Euler's criterion)."""
    rhs = (u * u * u + A * u * u + u) % P
    return rhs == 0 or pow(rhs, (P - 1) // 2, P) == 1


def reference_hash_to_curve(kind: str, value: str) -> tuple[int, bytes]:
    def prefixed(part: bytes) -> bytes:
        return len(part).to_bytes(4, "big") + part

    head = prefixed(VECTORS["tag"].encode()) + prefixed(kind.encode()) + prefixed(value.encode())
    for counter in range(256):
        digest = hashlib.sha256(head + counter.to_bytes(4, "big")).digest()
        u = int.from_bytes(digest, "little") & ((1 << 255) - 1)
        if u < P and u not in (0, 1) and euler_on_curve(u):
            return counter, u.to_bytes(32, "little")
    raise AssertionError("no point found")


def test_tag_matches_the_vectors() -> None:
    assert HASH_TO_CURVE_TAG.decode() == VECTORS["tag"]


@pytest.mark.parametrize("case", VECTORS["vectors"], ids=lambda c: f"{c['kind']}:{c['value']}")
def test_hash_to_curve_known_answers(case: dict[str, Any]) -> None:
    expected = bytes.fromhex(case["u"])
    assert hash_to_curve(case["kind"], case["value"]) == expected
    assert reference_hash_to_curve(case["kind"], case["value"]) == (case["counter"], expected)


def test_vectors_include_retries() -> None:
    # Some values must need several attempts, or the counter is never exercised.
    assert max(c["counter"] for c in VECTORS["vectors"]) >= 2
    assert any(c["counter"] == 0 for c in VECTORS["vectors"])


@given(kind=st.sampled_from(["email", "phone"]), value=st.text(max_size=80))
def test_hash_to_curve_always_lands_on_the_curve(kind: str, value: str) -> None:
    token = hash_to_curve(kind, value)
    assert len(token) == 32 and token[31] & 0x80 == 0
    u = validate_token(token)
    assert euler_on_curve(u)
    assert reference_hash_to_curve(kind, value)[1] == token


@given(value=st.text(min_size=1, max_size=40))
def test_kind_separates_domains(value: str) -> None:
    assert hash_to_curve("email", value) != hash_to_curve("phone", value)


def test_length_prefixes_prevent_ambiguous_concatenation() -> None:
    # Without length prefixes ("ab", "c") and ("a", "bc") would hash the same bytes.
    assert hash_to_curve("ab", "c") != hash_to_curve("a", "bc")


def test_sha256_known_answer() -> None:
    # FIPS 180-2 example "abc".
    assert sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# --- validate_token ----------------------------------------------------------------------


def some_twist_u() -> int:
    u = 2
    while euler_on_curve(u):
        u += 1
    return u


INVALID_TOKENS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "32 bytes"),
    ("31 bytes", bytes(31), "32 bytes"),
    ("33 bytes", bytes(33), "32 bytes"),
    ("top bit set", (9).to_bytes(32, "little")[:31] + b"\x80", "top bit"),
    ("u = p (non-canonical zero)", P.to_bytes(32, "little"), "canonical"),
    ("u = p + 1 (non-canonical one)", (P + 1).to_bytes(32, "little"), "canonical"),
    ("u = 2^255 - 1", ((1 << 255) - 1).to_bytes(32, "little"), "canonical"),
    ("twist point", some_twist_u().to_bytes(32, "little"), "twist"),
] + [
    (f"small order u={u % 10**6}", u.to_bytes(32, "little"), "small order")
    for u in sorted(SMALL_ORDER_U)
    if u < P
]


@pytest.mark.parametrize(("token", "reason"), [c[1:] for c in INVALID_TOKENS],
                         ids=[c[0] for c in INVALID_TOKENS])  # fmt: skip
def test_invalid_tokens_are_refused(token: bytes, reason: str) -> None:
    with pytest.raises(InvalidPoint, match=reason):
        validate_token(token)


def test_small_order_points_blind_to_the_identity() -> None:
    # Why the blocklist exists: every such point multiplies to zero under any key, and
    # pyca refuses the all-zero shared secret.
    key = X25519PrivateKey.generate()
    for u in SMALL_ORDER_U:
        with pytest.raises(ValueError):
            key.exchange(X25519PublicKey.from_public_bytes(u.to_bytes(32, "little")))


def test_on_curve_small_order_points_are_exactly_the_blocklist_on_the_curve() -> None:
    on_curve = {u for u in SMALL_ORDER_U if u < P and euler_on_curve(u)}
    assert on_curve == {u for u in SMALL_ORDER_U if is_on_curve(u)}
    assert {0, 1} <= on_curve and len(on_curve) == 4  # orders 2, 4 and the two of order 8


@given(st.integers(min_value=0, max_value=CURVE25519_P - 1))
def test_is_on_curve_agrees_with_euler(u: int) -> None:
    assert is_on_curve(u) == euler_on_curve(u)


def test_invalid_point_messages_never_echo_the_token() -> None:
    token = some_twist_u().to_bytes(32, "little")
    with pytest.raises(InvalidPoint) as caught:
        validate_token(token)
    message = str(caught.value)
    assert token.hex() not in message and repr(token) not in message


# --- handles that map back to positions -----------------------------------------------


@given(count=st.integers(min_value=0, max_value=3000), data=st.data())
def test_position_cipher_handles_map_back_to_their_positions(count: int, data: Any) -> None:
    cipher = PositionCipher(count)
    handles = cipher.handles()
    assert len(handles) == count and len(set(handles)) == count
    assert all(len(h) == PositionCipher.BLOCK for h in handles)
    picked = data.draw(st.lists(st.integers(min_value=0, max_value=max(count - 1, 0))))
    picked = picked if count else []
    assert cipher.positions([handles[i] for i in picked]) == picked


def test_position_cipher_handles_are_fresh_per_set_and_not_positions() -> None:
    one, two = PositionCipher(1000), PositionCipher(1000)
    assert not set(one.handles()) & set(two.handles())
    # No structure shows through: the handle of position i is not i, and handles of
    # consecutive positions share no common prefix beyond chance.
    handles = one.handles()
    assert all(h != i.to_bytes(16, "big") for i, h in enumerate(handles))
    assert sum(a[:2] == b[:2] for a, b in zip(handles, handles[1:], strict=False)) < 5


def test_position_cipher_refuses_handles_it_did_not_issue() -> None:
    cipher = PositionCipher(100)
    handles = cipher.handles()
    foreign = PositionCipher(100).handles()
    with pytest.raises(UnknownHandle):
        cipher.positions([handles[0], foreign[0]])
    with pytest.raises(UnknownHandle):
        cipher.positions([bytes(16)])
    with pytest.raises(UnknownHandle):
        cipher.positions([handles[1][:15]])
    tampered = bytes([handles[2][0] ^ 1]) + handles[2][1:]
    with pytest.raises(UnknownHandle):
        cipher.positions([tampered])
    assert "secret" in repr(cipher) and handles[0].hex() not in repr(cipher)


def test_position_cipher_refuses_a_position_past_the_set() -> None:
    small = PositionCipher(10)
    handles = small.handles()
    small.count = 5  # the same key and base for a set of five: handles 5..9 are past its end
    assert small.positions(handles[:5]) == [0, 1, 2, 3, 4]
    with pytest.raises(UnknownHandle):
        small.positions([handles[7]])
