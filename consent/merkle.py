"""Merkle tree maths of the audit log, as RFC 9162 (Certificate Transparency v2) defines it.

Pure functions over 32-byte SHA-256 hashes; no storage, no transport. The names follow the
RFC so that auditors can check our proofs with any other RFC 9162 / RFC 6962
implementation (transparency-dev/merkle, Trillian, sigsum, ...):

* ``leaf_hash(d) = SHA-256(0x00 || d)``, ``node_hash(l, r) = SHA-256(0x01 || l || r)``,
  ``EMPTY_ROOT = SHA-256("")`` (§2.1.1);
* ``root_hash`` is MTH (§2.1.1), ``inclusion_proof`` is PATH (§2.1.3.1),
  ``consistency_proof`` is PROOF / SUBPROOF (§2.1.4.1);
* ``verify_inclusion`` and ``verify_consistency`` are the §2.1.3.2 and §2.1.4.2
  algorithms. They return ``None`` and raise :class:`~consent.errors.ProofError` on any
  failure, including malformed arguments; they never return a bool.

Consistency from the empty tree (``old_size == 0``) is refused on both sides:
``consistency_proof`` raises ``ValueError`` and ``verify_consistency`` raises
``ProofError``. RFC 9162 defines PROOF only for ``0 < m``, and implementations disagree
about size 0 (transparency-dev/merkle accepts an empty proof whatever the roots, others
only when ``old_root == EMPTY_ROOT``). An empty tree commits to nothing, so an auditor
with no previous checkpoint simply starts from the first one it sees. For
``0 < old_size == new_size`` the proof is empty and the roots must be equal.

A proof does not commit to the tree size (trees of sizes 3 and 4 give leaf 0 the same
path): ``tree_size`` and ``root`` must come from one verified signed checkpoint.

Tree sizes are bounded by ``MAX_TREE_SIZE = 2**64 - 1`` (the RFC's ``uint64``).

Costs (n leaves, one SHA-256 per hash; with ``cryptography`` about 1 µs each):

* ``root_hash``: n - 1 node hashes, computed level by level (no recursion, no list
  slicing); about 1 s for 1,000,000 leaves.
* ``inclusion_proof`` and ``consistency_proof``: O(n) hashes, because the sibling
  subtrees they need cover almost every leaf and this module stores no interior
  nodes. Fine for occasional proofs; a server answering many proofs over a big log
  should keep interior nodes (or per-level hashes) and compose proofs from them.
* the verifiers: O(log n) hashes and a length check before any hashing.
* :class:`MerkleFrontier`: appending k leaves costs O(k) amortized hashes plus
  O(log n) for the new root, without rehashing the tree.

Generation functions raise ``TypeError``/``ValueError`` for bad arguments (a bug in the
caller, not a failed proof).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final

from consent.errors import ProofError
from kernel.crypto import sha256

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "MerkleFrontier",
    "consistency_proof",
    "consistency_proof_extending",
    "inclusion_proof",
    "inclusion_proofs",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
"""Length in bytes of every leaf, node and root hash (SHA-256)."""

MAX_TREE_SIZE: Final = 2**64 - 1
"""Largest tree size (RFC 9162 sizes and indices are ``uint64``)."""

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
_BYTES_LIKE: Final = (bytes, bytearray, memoryview, str)

EMPTY_ROOT: Final[bytes] = sha256(b"")
"""MTH({}) = SHA-256 of the empty string: the root of the tree with no leaves."""


# --- hashing ---------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """The RFC 9162 leaf hash ``SHA-256(0x00 || data)``."""
    if not isinstance(data, bytes):
        raise TypeError(f"leaf data must be bytes, not {type(data).__name__}")
    return sha256(_LEAF_PREFIX + data)


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 9162 interior node hash ``SHA-256(0x01 || left || right)``.

    Defined for any byte strings, as in the RFC; the tree functions only ever pass
    32-byte hashes.
    """
    if not isinstance(left, bytes) or not isinstance(right, bytes):
        raise TypeError("node_hash takes two bytes values")
    return sha256(_NODE_PREFIX + left + right)


# --- tree maths ------------------------------------------------------------------------


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH (RFC 9162 §2.1.1) of a list of leaf hashes; ``EMPTY_ROOT`` for no leaves.

    ``leaf_hashes`` are already ``leaf_hash(data)`` values, 32 bytes each. Computed level
    by level: pairing neighbours from the left and carrying an odd last node up unchanged
    gives exactly the RFC's split at the largest power of two smaller than the size.
    """
    _check_leaf_hashes(leaf_hashes)
    if not leaf_hashes:
        return EMPTY_ROOT
    return _subtree_root(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 §2.1.3.1: the audit path for one leaf, leaf-side first.

    Costs O(n) hashes (the sibling subtrees are recomputed from the leaves).
    """
    _check_leaf_hashes(leaf_hashes)
    _check_int("index", index)
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise ValueError(f"index {index} is out of range for a tree of size {size}")
    # PATH(m, D[lo:hi]) = PATH(m, D[lo:lo+k]) : MTH(D[lo+k:hi])   if m < lo + k
    #                   = PATH(m, D[lo+k:hi]) : MTH(D[lo:lo+k])   otherwise
    # Walk down instead of recursing; the hashes found first go last in the path.
    suffix: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            suffix.append(_subtree_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            suffix.append(_subtree_root(leaf_hashes, lo, lo + k))
            lo += k
    suffix.reverse()
    return suffix


def inclusion_proofs(
    leaf_hashes: Sequence[bytes], indices: Iterable[int]
) -> dict[int, list[bytes]]:
    """``inclusion_proof`` for many leaves of one tree, in O(n + k log n) hashes.

    Builds the tree's levels once (pairing from the left and carrying an odd last node
    up, which is exactly RFC 9162's shape) and reads each path off them: at every level
    the sibling, when there is one. Memory: about 2n hashes.
    """
    _check_leaf_hashes(leaf_hashes)
    size = len(leaf_hashes)
    wanted = list(indices)
    for index in wanted:
        _check_int("index", index)
        if not 0 <= index < size:
            raise ValueError(f"index {index} is out of range for a tree of size {size}")
    levels: list[list[bytes]] = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    proofs: dict[int, list[bytes]] = {}
    for index in wanted:
        path: list[bytes] = []
        position = index
        for level in levels[:-1]:
            sibling = position ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            position //= 2
        proofs[index] = path
    return proofs


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) of RFC 9162 §2.1.4.1, n = ``len(leaf_hashes)``.

    Empty when ``old_size == n``. Raises ``ValueError`` for ``old_size == 0`` (see the
    module docstring) and for ``old_size > n``. Costs O(n) hashes.
    """
    _check_leaf_hashes(leaf_hashes)
    _check_int("old_size", old_size)
    size = len(leaf_hashes)
    if old_size == 0:
        raise ValueError("no consistency proof from the empty tree (old_size 0)")
    if not 0 < old_size <= size:
        raise ValueError(f"old_size {old_size} is out of range for a tree of size {size}")
    return _consistency_walk(old_size, size, lambda lo, hi: _subtree_root(leaf_hashes, lo, hi))


def _consistency_walk(
    old_size: int, size: int, subtree: Callable[[int, int], bytes]
) -> list[bytes]:
    """PROOF(old_size, D[size]) given MTH of any subtree the proof names (0 < old_size ≤
    size). Every subtree it names either ends at or before ``old_size`` — then it is one
    of the perfect subtrees the old size's binary digits describe — or starts at or after
    it, among the new leaves."""
    # SUBPROOF(m, D[lo:hi], b): at m == hi - lo it is {} if b else {MTH(D[lo:hi])};
    # otherwise with k the split, it is SUBPROOF(m, D[lo:lo+k], b) : MTH(D[lo+k:hi]) if
    # m <= k, else SUBPROOF(m - k, D[lo+k:hi], false) : MTH(D[lo:lo+k]).
    suffix: list[bytes] = []
    lo, hi = 0, size
    whole_old_tree = True  # the RFC's b: the current subtree is still the whole old tree
    while hi != old_size:  # the old tree D[0:old_size] ends inside D[lo:hi]
        k = _split(hi - lo)
        if old_size <= lo + k:
            suffix.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            suffix.append(subtree(lo, lo + k))
            lo += k
            whole_old_tree = False
    if not whole_old_tree:
        suffix.append(subtree(lo, hi))
    suffix.reverse()
    return suffix


def consistency_proof_extending(
    old: MerkleFrontier, new_leaf_hashes: Sequence[bytes]
) -> list[bytes]:
    """``consistency_proof`` from the old tree's frontier and only the leaves added since.

    The frontier holds the roots of the old subtrees the proof names
    (``_consistency_walk``), so the cost is O(new leaves + log n) instead of O(n): a
    witness can be sent a proof every few seconds without re-reading the whole log.
    """
    _check_leaf_hashes(new_leaf_hashes)
    old_size = old.size
    size = old_size + len(new_leaf_hashes)
    if old_size == 0:
        raise ValueError("no consistency proof from the empty tree (old_size 0)")
    known: dict[tuple[int, int], bytes] = {}
    start = 0
    for bit, root in zip(
        (b for b in range(old_size.bit_length() - 1, -1, -1) if old_size >> b & 1),
        old.to_hashes(),
        strict=True,
    ):
        known[(start, start + (1 << bit))] = root
        start += 1 << bit

    def subtree(lo: int, hi: int) -> bytes:
        if lo >= old_size:
            return _subtree_root(new_leaf_hashes, lo - old_size, hi - old_size)
        return known[(lo, hi)]  # a frontier subtree: the proof names no other old one

    return _consistency_walk(old_size, size, subtree)


# --- verification ----------------------------------------------------------------------


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    RFC 9162 §2.1.3.2, preceded by an exact proof-length check. Raises ``ProofError``.
    """
    _verify_size("tree_size", tree_size)
    _verify_size("index", index)
    if index >= tree_size:
        raise ProofError(f"index {index} is out of range for tree size {tree_size}")
    _verify_hash("leaf hash", leaf_hash)
    _verify_hash("root", root)
    want = _inclusion_length(index, tree_size)
    path = _verify_proof(proof, want, f"index {index} in tree size {tree_size}")

    fn, sn, r = index, tree_size - 1, leaf_hash
    for p in path:
        if sn == 0:
            raise ProofError("wrong proof length: the path climbs past the root")
        if fn & 1 or fn == sn:
            r = sha256(_NODE_PREFIX + p + r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = sha256(_NODE_PREFIX + r + p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("wrong proof length: the path stops below the root")
    if r != root:
        raise ProofError(
            f"root mismatch: the inclusion proof for index {index} in tree size {tree_size} "
            f"yields {r.hex()}, not {root.hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (new_size, new_root) extends the tree (old_size, old_root).

    RFC 9162 §2.1.4.2, preceded by an exact proof-length check. ``old_size == new_size``
    needs an empty proof and equal roots; ``old_size == 0`` is refused (see the module
    docstring). Raises ``ProofError``.
    """
    _verify_size("old_size", old_size)
    _verify_size("new_size", new_size)
    if old_size == 0:
        raise ProofError("consistency from the empty tree (old_size 0) is not accepted")
    if old_size > new_size:
        raise ProofError(f"sizes out of order: old_size {old_size} > new_size {new_size}")
    _verify_hash("old root", old_root)
    _verify_hash("new root", new_root)
    where = f"sizes {old_size} -> {new_size}"
    if old_size == new_size:
        _verify_proof(proof, 0, where)
        if old_root != new_root:
            raise ProofError(f"root mismatch: equal sizes {old_size} but different roots")
        return
    path = _verify_proof(proof, _consistency_length(old_size, new_size), where)
    if not path:  # RFC step 1; the length check above already guarantees this
        raise ProofError(f"wrong proof length: empty proof for {where}")

    if old_size & (old_size - 1) == 0:  # a power of two: the old tree is a node of the new
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("wrong proof length: the path climbs past the new root")
        if fn & 1 or fn == sn:
            fr = sha256(_NODE_PREFIX + c + fr)
            sr = sha256(_NODE_PREFIX + c + sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = sha256(_NODE_PREFIX + sr + c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("wrong proof length: the path stops below the new root")
    if fr != old_root:
        raise ProofError(f"root mismatch: the proof for {where} yields old root {fr.hex()}")
    if sr != new_root:
        raise ProofError(f"root mismatch: the proof for {where} yields new root {sr.hex()}")


# --- appending -------------------------------------------------------------------------


class MerkleFrontier:
    """The right edge of a growing RFC 9162 tree: enough state to append and get the root.

    It holds, left to right, the roots of the perfect subtrees that the binary digits of
    ``size`` describe (one hash per 1 bit, so at most 64), like the ``compact.Range`` of
    transparency-dev/merkle started at leaf 0. ``append`` costs one leaf plus one node
    hash per trailing 1 bit of the old size (amortized under 2 hashes); ``root`` costs
    at most 63 node hashes. Persist it with ``size`` and ``to_hashes()`` and rebuild it
    with ``from_hashes``; it never needs the leaves again.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> MerkleFrontier:
        """Rebuild a frontier saved as ``(frontier.size, frontier.to_hashes())``."""
        _check_int("size", size)
        if not 0 <= size <= MAX_TREE_SIZE:
            raise ValueError(f"size {size} is out of range")
        _check_leaf_hashes(hashes, what="frontier hash")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a frontier of size {size} has {size.bit_count()} hashes, not {len(hashes)}"
            )
        frontier = cls()
        frontier._size = size
        frontier._hashes = list(hashes)
        return frontier

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MerkleFrontier:
        """A frontier over the given leaf hashes, appended in order."""
        frontier = cls()
        frontier.extend(leaf_hashes)
        return frontier

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def to_hashes(self) -> list[bytes]:
        """The subtree roots, left (largest) to right; a copy."""
        return list(self._hashes)

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash (a ``leaf_hash(data)`` value, 32 bytes)."""
        if not isinstance(leaf_hash, bytes):
            raise TypeError(f"leaf hash must be bytes, not {type(leaf_hash).__name__}")
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, not {len(leaf_hash)}")
        if self._size == MAX_TREE_SIZE:
            raise ValueError("the tree is full")
        hashes, h, s = self._hashes, leaf_hash, self._size
        while s & 1:  # every trailing 1 bit is a perfect subtree the new leaf completes
            h = sha256(_NODE_PREFIX + hashes.pop() + h)
            s >>= 1
        hashes.append(h)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append leaf hashes in order."""
        if isinstance(leaf_hashes, _BYTES_LIKE):
            raise TypeError("extend takes an iterable of leaf hashes, not a single bytes value")
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """MTH of the leaves appended so far (``EMPTY_ROOT`` when there are none)."""
        if not self._hashes:
            return EMPTY_ROOT
        r = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            r = sha256(_NODE_PREFIX + h + r)
        return r

    def copy(self) -> MerkleFrontier:
        """An independent frontier with the same state."""
        return MerkleFrontier.from_hashes(self._size, self._hashes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MerkleFrontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"MerkleFrontier(size={self._size}, root={self.root().hex()})"


# --- helpers ---------------------------------------------------------------------------


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree_root(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) for lo < hi, level by level, without copying the input."""
    if hi - lo == 1:
        return hashes[lo]
    prefix = _NODE_PREFIX
    level = [sha256(prefix + hashes[i] + hashes[i + 1]) for i in range(lo, hi - 1, 2)]
    if (hi - lo) & 1:
        level.append(hashes[hi - 1])
    while len(level) > 1:
        n = len(level)
        upper = [sha256(prefix + level[i] + level[i + 1]) for i in range(0, n - 1, 2)]
        if n & 1:
            upper.append(level[-1])
        level = upper
    return level[0]


def _inclusion_length(index: int, size: int) -> int:
    """Length of PATH(index, D[size]): levels below the split from the right edge, plus
    the perfect subtrees skipped along the right edge above it."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_length(old_size: int, new_size: int) -> int:
    """Length of PROOF(old_size, D[new_size]) for 0 < old_size < new_size."""
    inner = ((old_size - 1) ^ (new_size - 1)).bit_length()
    border = ((old_size - 1) >> inner).bit_count()
    shift = (old_size & -old_size).bit_length() - 1  # trailing zero bits of old_size
    seed = 0 if old_size == 1 << shift else 1  # a power of two is its own seed
    return seed + inner - shift + border


def _check_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")


def _check_leaf_hashes(hashes: Sequence[bytes], *, what: str = "leaf hash") -> None:
    if isinstance(hashes, _BYTES_LIKE) or not isinstance(hashes, Sequence):
        raise TypeError(f"expected a sequence of {what}es, not {type(hashes).__name__}")
    for i, h in enumerate(hashes):
        if h.__class__ is not bytes or len(h) != HASH_SIZE:
            if not isinstance(h, bytes):
                raise TypeError(f"{what} {i} must be bytes, not {type(h).__name__}")
            if len(h) != HASH_SIZE:
                raise ValueError(f"{what} {i} must be {HASH_SIZE} bytes, not {len(h)}")


def _verify_size(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProofError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_TREE_SIZE:
        raise ProofError(f"{name} {value} is out of range [0, 2**64 - 1]")


def _verify_hash(name: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise ProofError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ProofError(f"hash length: {name} is {len(value)} bytes, not {HASH_SIZE}")


def _verify_proof(proof: object, want: int, where: str) -> list[bytes]:
    """The proof as a fresh list, after checking its type, length and element lengths."""
    if isinstance(proof, _BYTES_LIKE) or not isinstance(proof, Sequence):
        raise ProofError(f"proof must be a sequence of hashes, not {type(proof).__name__}")
    if len(proof) != want:
        raise ProofError(f"wrong proof length: {len(proof)} hashes, want {want} for {where}")
    path = list(proof)
    for i, h in enumerate(path):
        _verify_hash(f"proof[{i}]", h)
    return path
