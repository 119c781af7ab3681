"""Crypto recipes: the one module that touches ``cryptography.hazmat``.

Recipes have no knobs. Verification raises, it never returns a bool.

* ``sha256(data)`` — SHA-256 (audit-log hashes, record digests).
* ``hash_to_curve(kind, value)`` — a normalized identifier to the u-coordinate of a
  point on Curve25519 itself, never its twist (DESIGN.md, matching step 2;
  docs/normalization.md has the exact encoding and tests/vectors/hash_to_curve.json the
  known answers).
* ``validate_token(token)`` — the one check every token received from outside passes
  before use: 32 bytes, top bit clear, u < p, not of small order, on the curve; anything
  else raises :class:`~kernel.errors.InvalidPoint`.
* ``BlindingKey`` / ``derive_blinding_key`` — X25519 blinding with a secret derived by
  HKDF-SHA256 from a node's master secret per (scope, segment, epoch).
* ``canonical_json`` and ``signed_message`` — RFC 8785 encodings; every signed object
  is ``b"accord/<kind>/v1\n" + canonical_json(fields)``, so a signature over one kind
  of object can never be replayed as another.
* ``SigningKey`` / ``verify_signature`` — Ed25519; verification raises
  :class:`~kernel.errors.SignatureInvalid`.
* ``commitment(salt, record)`` — HMAC-SHA256 of a canonical record under a per-record
  salt: what the audit log stores instead of the record (docs/audit-log.md).
* ``HpkeKeyPair`` / ``seal`` / ``open_sealed`` — HPKE base mode (RFC 9180,
  DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM) for released payloads.
* ``random_bytes(n)`` — ``secrets``; tests inject their own sources where they need to.

Why "on the curve, not the twist": X25519 accepts any u, and about half of all 32-byte
strings are u-coordinates of the quadratic twist. If hash outputs were used as they come,
whether a token lies on the curve or the twist would survive blinding (X25519 keeps a
point on its own curve), so every token would leak one key-independent bit of its
identifier. Retrying with a counter until the value is on the curve removes that bit.
The test is Euler's criterion through gmpy2's Jacobi symbol: u is on Curve25519 iff
``u³ + A·u² + u`` is a square mod p (or zero).
"""

from __future__ import annotations

import json
import secrets
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import gmpy2
import rfc8785
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac, hpke, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kernel.errors import (
    CryptoError,
    DecryptionFailed,
    InvalidPoint,
    SignatureInvalid,
    UnknownHandle,
)

__all__ = [
    "CURVE25519_A",
    "CURVE25519_P",
    "HASH_TO_CURVE_TAG",
    "KEY_SIZE",
    "TOKEN_SIZE",
    "BlindingKey",
    "HpkeKeyPair",
    "PositionCipher",
    "SigningKey",
    "canonical_json",
    "commitment",
    "blinding_secret",
    "derive_blinding_key",
    "hash_to_curve",
    "hkdf_sha256",
    "is_on_curve",
    "key_id",
    "open_sealed",
    "random_bytes",
    "random_on_curve_token",
    "seal",
    "sha256",
    "signed_message",
    "validate_token",
    "verify_signature",
    "x25519_throughput",
]

CURVE25519_P: Final = 2**255 - 19
CURVE25519_A: Final = 486662
TOKEN_SIZE: Final = 32
KEY_SIZE: Final = 32
HASH_TO_CURVE_TAG: Final = b"accord/hash-to-curve/curve25519/v1"
_MAX_ATTEMPTS: Final = 256  # each attempt succeeds with probability ~1/2

_COUNTERS: Final = tuple(i.to_bytes(4, "big") for i in range(_MAX_ATTEMPTS))
_LOW_255_BITS: Final = (1 << 255) - 1
_P = gmpy2.mpz(CURVE25519_P)
_SHA256: Final = hashes.SHA256()
_TAG_PREFIXED: Final = len(HASH_TO_CURVE_TAG).to_bytes(4, "big") + HASH_TO_CURVE_TAG
_A = gmpy2.mpz(CURVE25519_A)

# u-coordinates of the points of small order (1, 2, 4, 8) on Curve25519 and its twist, as
# libsodium's and the X25519 papers' blocklists give them; non-canonical encodings
# (u ≥ p) are refused before this list is consulted. Multiplying such a point by any
# clamped scalar gives the identity, so a token like this would blind to the same value
# under every key.
SMALL_ORDER_U: Final[frozenset[int]] = frozenset(
    {
        0,
        1,
        CURVE25519_P - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data``."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def is_on_curve(u: int) -> bool:
    """Whether ``u`` (0 ≤ u < p) is the u-coordinate of a point of Curve25519 (not its twist)."""
    x = gmpy2.mpz(u)
    rhs = (x * (x * (x + _A) + 1)) % _P  # u³ + A·u² + u
    return bool(gmpy2.jacobi(rhs, _P) >= 0)


def _length_prefixed(part: bytes) -> bytes:
    return len(part).to_bytes(4, "big") + part


def hash_to_curve(kind: str, value: str) -> bytes:
    """The Curve25519 u-coordinate (32 bytes, little-endian) of identifier ``(kind, value)``.

    ``value`` must already be normalized (the node's ``normalize_*`` functions).
    For counter = 0, 1, 2, …: ``h = SHA-256(len‖tag ‖ len‖kind ‖ len‖value ‖ counter)``
    with 4-byte big-endian lengths and counter; read ``h`` as a little-endian integer and
    clear bit 255; the result is the first such ``u`` that :func:`validate_token` accepts.
    """
    # Import hashes every identifier: the tag's prefix and the algorithm object are built
    # once, and the curve test is inlined (a sixth of the time per call).
    kind_bytes = kind.encode("utf-8")
    value_bytes = value.encode("utf-8")
    prefix = hashes.Hash(_SHA256)
    prefix.update(
        b"".join(
            (
                _TAG_PREFIXED,
                len(kind_bytes).to_bytes(4, "big"),
                kind_bytes,
                len(value_bytes).to_bytes(4, "big"),
                value_bytes,
            )
        )
    )
    for counter in _COUNTERS:
        attempt = prefix.copy()
        attempt.update(counter)
        u = int.from_bytes(attempt.finalize(), "little") & _LOW_255_BITS
        if u < CURVE25519_P and u not in SMALL_ORDER_U:
            x = gmpy2.mpz(u)
            if gmpy2.jacobi(x * (x * (x + _A) + 1) % _P, _P) >= 0:  # is_on_curve(u)
                return u.to_bytes(TOKEN_SIZE, "little")
    # 2**-256: unreachable in practice, but never loop forever or return a twist point.
    raise CryptoError("hash-to-curve found no point on the curve")


def validate_token(token: bytes) -> int:
    """Check a token received from outside; return its u-coordinate or raise ``InvalidPoint``.

    The message says which rule failed and never echoes the token.
    """
    if not isinstance(token, bytes | bytearray) or len(token) != TOKEN_SIZE:
        raise InvalidPoint(f"a token must be {TOKEN_SIZE} bytes")
    if token[31] & 0x80:
        raise InvalidPoint("a token must have its top bit clear")
    u = int.from_bytes(token, "little")
    if u >= CURVE25519_P:
        raise InvalidPoint("a token must be a canonical u-coordinate (u < 2^255 - 19)")
    if u in SMALL_ORDER_U:
        raise InvalidPoint("a token must not be a point of small order")
    if not is_on_curve(u):
        raise InvalidPoint("a token must be a point on Curve25519, not its twist")
    return u


def random_bytes(size: int) -> bytes:
    """``size`` bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(size)


def random_on_curve_token() -> bytes:
    """A uniformly random valid token: padding that is indistinguishable from real ones.

    Random bytes through hash-to-curve's own acceptance rule, so dummies and real points
    share one distribution (both pass ``validate_token``; neither reveals its origin).
    """
    while True:
        u = int.from_bytes(random_bytes(TOKEN_SIZE), "little") & _LOW_255_BITS
        if u < CURVE25519_P and u not in SMALL_ORDER_U and is_on_curve(u):
            return u.to_bytes(TOKEN_SIZE, "little")


# --- key derivation and blinding -------------------------------------------------------


def hkdf_sha256(secret: bytes, *, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def _length_prefixed_parts(*parts: str | bytes) -> bytes:
    return b"".join(
        _length_prefixed(part.encode("utf-8") if isinstance(part, str) else part) for part in parts
    )


class BlindingKey:
    """An X25519 scalar that blinds tokens: ``blind(P) = [k]P``; ``[a][b]P = [b][a]P``.

    Every token is validated before it is multiplied. The secret never appears in
    ``repr`` and cannot be read back.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) != KEY_SIZE:
            raise CryptoError(f"a blinding key is {KEY_SIZE} bytes")
        self._key = X25519PrivateKey.from_private_bytes(secret)

    def __repr__(self) -> str:
        return "BlindingKey(<secret>)"

    def blind(self, token: bytes) -> bytes:
        """``[k]·token`` after ``validate_token``; raises ``InvalidPoint``."""
        validate_token(token)
        return self._key.exchange(X25519PublicKey.from_public_bytes(token))

    def blind_many(self, tokens: Sequence[bytes], *, trusted: bool = False) -> list[bytes]:
        """``blind`` over a list (one method lookup per list, not per token).

        ``trusted`` skips ``validate_token`` for points the node made itself (its own
        hash-to-curve points and dummies); everything received from outside is validated.
        """
        exchange = self._key.exchange
        from_bytes = X25519PublicKey.from_public_bytes
        if trusted:
            return [exchange(from_bytes(token)) for token in tokens]
        out = []
        for token in tokens:
            validate_token(token)
            out.append(exchange(from_bytes(token)))
        return out


class PositionCipher:
    """Handles for the rows of one set that map back to their positions without a table.

    Handle ``i`` is AES-128 of the block ``base ‖ i`` (64-bit halves, big-endian) under a
    key and ``base`` drawn fresh for each set: the CTR keystream, computed in one call.
    AES is a permutation, so handles are distinct, and without the key they look like
    random 16-byte values to the broker and the partner. ``positions`` decrypts returned
    handles (AES as the block permutation itself, one block each: ECB) and refuses any
    whose upper half is not ``base`` or whose position is past the set — forging one
    takes a 2^-64 guess. The key stays in this object, in the node's memory.
    """

    __slots__ = ("_key", "_base", "count")

    BLOCK: Final = 16

    def __init__(self, count: int) -> None:
        if not 0 <= count < 1 << 64:
            raise CryptoError("a set has at most 2^64 rows")
        self._key = secrets.token_bytes(self.BLOCK)
        self._base = secrets.randbits(64)
        self.count = count

    def __repr__(self) -> str:
        return f"PositionCipher(<secret>, count={self.count})"

    def handles(self) -> list[bytes]:
        """The handle of every position, in position order."""
        nonce = self._base.to_bytes(8, "big") + bytes(8)
        encryptor = Cipher(algorithms.AES(self._key), modes.CTR(nonce)).encryptor()
        stream = encryptor.update(bytes(self.BLOCK * self.count)) + encryptor.finalize()
        size = self.BLOCK
        return [stream[i : i + size] for i in range(0, len(stream), size)]

    def positions(self, handles: Sequence[bytes]) -> list[int]:
        """The position of each handle; ``UnknownHandle`` if any was not issued here."""
        blob = b"".join(handles)
        if len(blob) != self.BLOCK * len(handles):
            raise UnknownHandle(f"a handle is {self.BLOCK} bytes")
        if not handles:
            return []
        decryptor = Cipher(algorithms.AES(self._key), modes.ECB()).decryptor()
        words = struct.unpack(f">{2 * len(handles)}Q", decryptor.update(blob))
        positions = list(words[1::2])
        if words[0::2].count(self._base) != len(handles) or max(positions) >= self.count:
            raise UnknownHandle("a handle was not issued for this set")
        return positions


BLINDING_SALT: Final = b"accord/blinding-key/v1"


def blinding_secret(master: bytes, *, scope: str, segment: str, epoch: int) -> bytes:
    """The 32-byte blinding secret for one (agreement or flow scope, segment, epoch).

    Secrets of different scopes, segments or epochs are independent (HKDF with the three,
    length-prefixed, in ``info``), so tokens cannot be linked across them.
    """
    if len(master) != KEY_SIZE:
        raise CryptoError(f"a master secret is {KEY_SIZE} bytes")
    info = _length_prefixed_parts(scope, segment, str(epoch))
    return hkdf_sha256(master, salt=BLINDING_SALT, info=info)


def derive_blinding_key(master: bytes, *, scope: str, segment: str, epoch: int) -> BlindingKey:
    """``BlindingKey(blinding_secret(...))``."""
    return BlindingKey(blinding_secret(master, scope=scope, segment=segment, epoch=epoch))


# --- canonical encodings and signatures ------------------------------------------------


def _json_fast_path_ok(value: Any, depth: int = 0) -> bool:
    """Whether stdlib json writes ``value`` exactly as RFC 8785 does.

    True for str, bool, None, ints within ±2^53, and lists and dicts of them with ASCII
    keys (exact types: subclasses such as enums take the rfc8785 path); floats (ES number
    formatting), big ints and other types go through rfc8785. Written as loops over
    exact types because it runs once per audit-log record.
    """
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        return bool(-_SAFE_INT < value < _SAFE_INT)
    if depth > 32:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            if type(item) is str or item is None:
                continue
            if not _json_fast_path_ok(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if type(item) is str:
                continue
            if not _json_fast_path_ok(item, depth + 1):
                return False
        return True
    return False


_SAFE_INT: Final = 2**53


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) encoding of ``value``.

    The ``rfc8785`` package defines the output. For the plain values our records hold
    (strings, small ints, booleans, null, lists, objects with ASCII keys) the stdlib
    encoder writes the same bytes four times faster, so those take that path; a property
    test checks the two agree on every such value. Strings that are not valid Unicode
    (lone surrogates) are refused either way.
    """
    if _json_fast_path_ok(value):
        try:
            return json.dumps(
                value, ensure_ascii=False, sort_keys=True, separators=(",", ":")
            ).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CryptoError("canonical JSON needs valid Unicode strings") from exc
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise CryptoError(f"no canonical JSON for this value: {exc}") from exc


SIGNED_KINDS: Final = frozenset(
    {
        "agreement",
        "agreement-revocation",
        "overlap-count",
        "release-batch",
        "revocation",
        "revocation-ack",
        "subject-proof",
        "tree-head",
        "witness-cosignature",
    }
)


def signed_message(kind: str, fields: Mapping[str, Any]) -> bytes:
    """What is signed for an object of ``kind``: a per-kind prefix and its RFC 8785 form."""
    if kind not in SIGNED_KINDS:
        raise CryptoError(f"unknown kind of signed object {kind!r}")
    return b"accord/" + kind.encode("ascii") + b"/v1\n" + rfc8785.dumps(dict(fields))


def key_id(public_key: bytes) -> str:
    """Lower-case hex SHA-256 of a raw public key: how heads and agreements name keys."""
    return sha256(public_key).hex()


class SigningKey:
    """An Ed25519 signing key. The private half never appears in ``repr``."""

    __slots__ = ("_key", "public_key", "key_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id: str = key_id(self.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key whose 32-byte private seed is ``seed`` (for known-answer vectors)."""
        if len(seed) != KEY_SIZE:
            raise CryptoError(f"an Ed25519 seed is {KEY_SIZE} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise CryptoError("the signing key file is not a PEM Ed25519 private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise CryptoError("the signing key file does not hold an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id[:16]}…)"

    def sign(self, kind: str, fields: Mapping[str, Any]) -> bytes:
        """Ed25519 signature over ``signed_message(kind, fields)``."""
        return self._key.sign(signed_message(kind, fields))


def verify_signature(
    public_key: bytes, kind: str, fields: Mapping[str, Any], signature: bytes
) -> None:
    """Check an Ed25519 signature over ``signed_message(kind, fields)``.

    Raises ``SignatureInvalid`` for a malformed key, a malformed signature or a mismatch
    alike: a peer learns nothing from which.
    """
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, signed_message(kind, fields))
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise SignatureInvalid(f"the {kind} signature does not verify") from exc


# --- commitments -------------------------------------------------------------------------

COMMITMENT_PREFIX: Final = b"accord/commitment/v1\n"
SALT_SIZE: Final = 32


def commitment(salt: bytes, record: bytes) -> bytes:
    """HMAC-SHA256 under ``salt`` of a canonical record: hides the record, binds to it.

    Without the salt the commitment says nothing about the record (a dictionary of
    e-mails does not help); with record and salt anyone can recompute it. Deleting the
    salt (erasure) leaves the commitment, and every proof over it, valid.
    """
    if len(salt) != SALT_SIZE:
        raise CryptoError(f"a commitment salt is {SALT_SIZE} bytes")
    mac = hmac.HMAC(salt, hashes.SHA256())
    mac.update(COMMITMENT_PREFIX + record)
    return mac.finalize()


# --- HPKE --------------------------------------------------------------------------------

_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)


class HpkeKeyPair:
    """A node's HPKE (X25519) key pair for released payloads."""

    __slots__ = ("_key", "public_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_SIZE:
            raise CryptoError(f"an HPKE private key is {KEY_SIZE} bytes")
        self._key = X25519PrivateKey.from_private_bytes(secret)
        self.public_key: bytes = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def __repr__(self) -> str:
        return f"HpkeKeyPair(public={self.public_key.hex()[:16]}…)"

    def open(self, sealed: bytes, *, context: bytes) -> bytes:
        """Decrypt what ``seal`` produced for this key under the same ``context``."""
        try:
            return _HPKE.decrypt(sealed, self._key, info=context)
        except (InvalidTag, ValueError) as exc:
            raise DecryptionFailed("the sealed payload does not open with this key") from exc


def seal(plaintext: bytes, *, recipient_public_key: bytes, context: bytes) -> bytes:
    """HPKE base-mode encryption (enc ‖ ciphertext) to ``recipient_public_key``.

    ``context`` (the HPKE ``info``) binds agreement, flow and recipient: a batch sealed
    for one flow does not open under another's context.
    """
    try:
        public = X25519PublicKey.from_public_bytes(recipient_public_key)
    except ValueError as exc:
        raise CryptoError("the recipient's HPKE key is not an X25519 public key") from exc
    return _HPKE.encrypt(plaintext, public, info=context)


def open_sealed(pair: HpkeKeyPair, sealed: bytes, *, context: bytes) -> bytes:
    """``pair.open``, as a function."""
    return pair.open(sealed, context=context)


# --- the floor of matching -------------------------------------------------------------


def x25519_throughput(seconds: float) -> tuple[int, float]:
    """Raw ``exchange(from_public_bytes(u))`` in a tight loop for ``seconds`` (after a
    warm-up): ``(operations, elapsed)``. The benchmark's floor, one process per core."""
    key = X25519PrivateKey.generate()
    points = [hash_to_curve("email", f"floor{i}@example.com") for i in range(256)]
    from_bytes = X25519PublicKey.from_public_bytes
    for point in points[:64]:
        key.exchange(from_bytes(point))
    operations = 0
    started = time.perf_counter()
    while True:
        for point in points:
            key.exchange(from_bytes(point))
        operations += len(points)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return operations, elapsed
