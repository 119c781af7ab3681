"""What a node does to a set before it leaves: padding, dummies, handles, shuffling, caches.

Plain Python over the kernel's recipes; no database, no transport (docs/matching.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from kernel.crypto import hash_to_curve, hkdf_sha256

__all__ = [
    "HANDLE_SIZE",
    "BlindedSet",
    "EpochCache",
    "KeyScope",
    "dummy_points",
    "shuffled_set",
    "size_bucket",
]

HANDLE_SIZE: Final = 16
_DUMMY_SALT: Final = b"accord/padding-dummies/v1"


def size_bucket(count: int) -> int:
    """The padded size of a set of ``count`` tokens: the next multiple of 2^(bits − 4).

    Sixteen buckets per doubling: at most 1/16 (6.25 %) padding, and the size tells an
    observer about four bits.
    """
    if count <= 16:
        return 16
    step = 1 << (count.bit_length() - 4)
    return -(-count // step) * step


@dataclass(frozen=True, slots=True)
class KeyScope:
    """Everything a node's blinding key (and its caches) depends on."""

    agreement_id: str
    segment_id: str  # the owner's segment of the flow: both nodes use the same one
    epoch: int
    rotation: int = 0

    @property
    def hkdf_scope(self) -> str:
        return self.agreement_id if self.rotation == 0 else f"{self.agreement_id}#r{self.rotation}"


def dummy_points(master: bytes, scope: KeyScope, start: int, count: int) -> list[bytes]:
    """Dummies ``start .. start+count-1`` of this scope: on-curve points, stable in the epoch.

    They come from hash-to-curve over a secret seed, so they are distributed exactly like
    real points, and blinded with the node's key like them. Stable within an epoch, they
    recur across the epoch's flows as real tokens do: random dummies, new in every flow,
    could be told apart by anyone comparing two flows.
    """
    seed = hkdf_sha256(
        master,
        salt=_DUMMY_SALT,
        info=f"{scope.hkdf_scope}\x1f{scope.segment_id}\x1f{scope.epoch}".encode(),
    ).hex()
    return [hash_to_curve("dummy", f"{seed}:{i}") for i in range(start, start + count)]


@dataclass(slots=True)
class BlindedSet:
    """A set ready to leave the node: shuffled tokens, their handles, and the handle map."""

    tokens: list[bytes]
    handles: list[bytes]
    # handle -> customer id (None for padding); kept by the node, never sent.
    owners: dict[bytes, int | None] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.tokens)


def shuffled_set(real: Sequence[tuple[int, bytes]], dummies: Iterable[bytes]) -> BlindedSet:
    """Attach fresh random handles and shuffle the whole set (store order never leaks)."""
    rows: list[tuple[bytes, int | None]] = [(token, customer) for customer, token in real]
    rows.extend((token, None) for token in dummies)
    secrets.SystemRandom().shuffle(rows)
    tokens: list[bytes] = []
    handles: list[bytes] = []
    owners: dict[bytes, int | None] = {}
    for token, customer in rows:
        handle = secrets.token_bytes(HANDLE_SIZE)
        while handle in owners:  # 2^-128 per pair, but a clash would merge two rows
            handle = secrets.token_bytes(HANDLE_SIZE)
        tokens.append(token)
        handles.append(handle)
        owners[handle] = customer
    return BlindedSet(tokens, handles, owners)


def shuffle_pairs(tokens: list[bytes]) -> list[bytes]:
    """A fresh random order of ``tokens`` (for a re-blinded set sent without handles)."""
    out = list(tokens)
    secrets.SystemRandom().shuffle(out)
    return out


class EpochCache:
    """Blinded tokens of the current epochs, so repeated flows cost only what changed.

    Maps input token → blinded token per ``KeyScope``. Holding a scope of a newer epoch
    (or rotation) for an agreement drops that agreement's older scopes: old keys' results
    must not outlive their epoch.
    """

    def __init__(self) -> None:
        self._maps: dict[KeyScope, dict[bytes, bytes]] = {}

    def map_for(self, scope: KeyScope) -> dict[bytes, bytes]:
        found = self._maps.get(scope)
        if found is None:
            for old in [s for s in self._maps if s.agreement_id == scope.agreement_id]:
                if (old.epoch, old.rotation) < (scope.epoch, scope.rotation):
                    del self._maps[old]
            found = self._maps[scope] = {}
        return found

    def scopes(self) -> list[KeyScope]:
        return list(self._maps)

    def drop(self, agreement_id: str) -> None:
        for scope in [s for s in self._maps if s.agreement_id == agreement_id]:
            del self._maps[scope]
