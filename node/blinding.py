"""What a node does to a set before it leaves: padding, dummies, handles, shuffling, caches.

Plain Python over the kernel's recipes; no database, no transport (docs/matching.md).
"""

from __future__ import annotations

import secrets
from array import array
from collections.abc import Iterable, MutableSequence, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter, mod
from typing import Any, Final

from kernel.crypto import PositionCipher, hash_to_curve, hkdf_sha256

__all__ = [
    "HANDLE_SIZE",
    "HandleOwners",
    "ShuffledSet",
    "EpochCache",
    "KeyScope",
    "dummy_points",
    "random_order",
    "shuffled_set",
    "size_bucket",
]

HANDLE_SIZE: Final = PositionCipher.BLOCK  # every handle, derived or fresh, is one AES block
_DUMMY_SALT: Final = b"accord/padding-dummies/v1"


def size_bucket(count: int) -> int:
    """The padded size of a set of ``count`` tokens: the next multiple of 2^(bits − 5).

    Thirty-two buckets per doubling: padding is under 1/16 (6.25 %) of the set, and the
    published size tells an observer about five bits of it.
    """
    if count <= 32:
        return 32
    step = 1 << (count.bit_length() - 5)
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


@dataclass(frozen=True, slots=True)
class HandleOwners:
    """Who is behind each handle of a set: ``cipher`` (kernel.crypto.PositionCipher) maps
    a handle to its position, ``owner_at`` holds the customer id at each position (None
    for padding). Kept by a recipient, never sent."""

    cipher: PositionCipher
    owner_at: list[int | None]

    def of(self, handles: Sequence[bytes]) -> list[int | None]:
        """The customer behind each handle; ``UnknownHandle`` if one is not this set's."""
        return list(map(self.owner_at.__getitem__, self.cipher.positions(handles)))


@dataclass(slots=True)
class ShuffledSet:
    """A set in the order it will leave the node: its inputs, their handles, their owners.

    The inputs (hash-to-curve points and dummies) are shuffled *before* blinding, so
    tokens can be blinded and streamed in this order as they come out of the pool.
    """

    inputs: list[bytes]
    handles: list[bytes]
    owners: HandleOwners

    @property
    def size(self) -> int:
        return len(self.inputs)


def shuffled_set(
    real: Sequence[tuple[int, bytes]], dummies: Iterable[bytes], *, keep_owners: bool = True
) -> ShuffledSet:
    """Attach fresh handles and shuffle the whole set (store order never leaks).

    ``keep_owners`` keeps the customer at each position (a recipient needs it to read its
    results; an owner never learns per-row results, so it needs none).
    """
    # One shuffled order of positions, applied column by column in C: a million
    # (point, customer) tuples shuffled and unpacked in Python, and a handle → customer
    # dict, cost seconds of every flow.
    points = list(map(itemgetter(1), real))
    points.extend(dummies)
    count = len(points)
    order = random_order(count)
    cipher = PositionCipher(count)
    owner_at: list[int | None] = []
    if keep_owners:
        customers: list[int | None] = list(map(itemgetter(0), real))
        customers.extend(repeat(None, count - len(customers)))
        owner_at = list(map(customers.__getitem__, order))
    return ShuffledSet(
        list(map(points.__getitem__, order)), cipher.handles(), HandleOwners(cipher, owner_at)
    )


def per_customer_handles(shuffled: ShuffledSet) -> list[bytes]:
    """The set's handles with every token of one customer carrying the same one (its
    first), so the broker's overlap count is of customers, not identifiers. Needs the
    owners (``keep_owners``); padding keeps its own handles."""
    first: dict[int, bytes] = {}
    return [
        handle if customer is None else first.setdefault(customer, handle)
        for handle, customer in zip(shuffled.handles, shuffled.owners.owner_at, strict=True)
    ]


def secure_shuffle(items: MutableSequence[Any]) -> None:
    """Fisher–Yates with randomness from the OS's CSPRNG, drawn in one call.

    ``secrets.SystemRandom().shuffle`` asks the OS once per element, which at a million
    elements costs seconds of every flow. 64 random bits per step make the modulo bias
    negligible (below 2^-40 for any set a flow can carry).
    """
    count = len(items)
    if count < 2:
        return
    draws = array("Q", secrets.token_bytes(8 * count))  # 64-bit draws, no int objects yet
    # Step i swaps i with draws[i] mod (i + 1), for i from the top down; the moduli are
    # taken in C, leaving only the swaps to Python.
    picks = map(mod, reversed(draws), range(count, 1, -1))
    for i, j in zip(range(count - 1, 0, -1), picks, strict=True):
        items[i], items[j] = items[j], items[i]


def random_order(count: int) -> array[int]:
    """A uniformly random permutation of ``range(count)`` (``secure_shuffle``'s), as a
    packed array: 8 bytes a position instead of an int object each (a million positions
    cross from a pool worker in one 8 MB buffer), and a quarter faster to shuffle."""
    order = array("Q", range(count))
    secure_shuffle(order)
    return order


def regrouped(tokens: Sequence[bytes], handles: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """``tokens`` in a fresh random order, each with a fresh random handle that is shared
    exactly where the input handles were shared (overlap mode).

    The broker can still count distinct groups — customers — but neither it nor a
    partner colluding with it can tie a group to the handles the partner sent, so the
    count stays a count and never becomes a match."""
    if len(tokens) != len(handles):
        raise ValueError("each token needs its handle")
    fresh: dict[bytes, bytes] = {}
    pairs = [
        (token, fresh.setdefault(handle, secrets.token_bytes(HANDLE_SIZE)))
        for token, handle in zip(tokens, handles, strict=True)
    ]
    if len(set(fresh.values())) < len(fresh):  # 2^-128 per pair; a clash would merge groups
        return regrouped(tokens, handles)
    secure_shuffle(pairs)
    return [t for t, _ in pairs], [h for _, h in pairs]


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
