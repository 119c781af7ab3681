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

Why "on the curve, not the twist": X25519 accepts any u, and about half of all 32-byte
strings are u-coordinates of the quadratic twist. If hash outputs were used as they come,
whether a token lies on the curve or the twist would survive blinding (X25519 keeps a
point on its own curve), so every token would leak one key-independent bit of its
identifier. Retrying with a counter until the value is on the curve removes that bit.
The test is Euler's criterion through gmpy2's Jacobi symbol: u is on Curve25519 iff
``u³ + A·u² + u`` is a square mod p (or zero).
"""

from __future__ import annotations

from typing import Final

import gmpy2
from cryptography.hazmat.primitives import hashes

from kernel.errors import CryptoError, InvalidPoint

__all__ = [
    "CURVE25519_A",
    "CURVE25519_P",
    "HASH_TO_CURVE_TAG",
    "TOKEN_SIZE",
    "hash_to_curve",
    "is_on_curve",
    "sha256",
    "validate_token",
]

CURVE25519_P: Final = 2**255 - 19
CURVE25519_A: Final = 486662
TOKEN_SIZE: Final = 32
HASH_TO_CURVE_TAG: Final = b"accord/hash-to-curve/curve25519/v1"
_MAX_ATTEMPTS: Final = 256  # each attempt succeeds with probability ~1/2

_COUNTERS: Final = tuple(i.to_bytes(4, "big") for i in range(_MAX_ATTEMPTS))
_LOW_255_BITS: Final = (1 << 255) - 1
_P = gmpy2.mpz(CURVE25519_P)
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
    prefix = hashes.Hash(hashes.SHA256())
    prefix.update(
        _length_prefixed(HASH_TO_CURVE_TAG)
        + _length_prefixed(kind.encode("utf-8"))
        + _length_prefixed(value.encode("utf-8"))
    )
    for counter in _COUNTERS:
        attempt = prefix.copy()
        attempt.update(counter)
        u = int.from_bytes(attempt.finalize(), "little") & _LOW_255_BITS
        if u < CURVE25519_P and u not in SMALL_ORDER_U and is_on_curve(u):
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
