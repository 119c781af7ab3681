"""consent.merkle against RFC 9162: published vectors, a from-the-text reference, tampering.

The reference below transcribes the RFC's recursive definitions (MTH, PATH, SUBPROOF)
with slices, as plainly as possible, and is memoized over one fixed list of leaves; the
module under test must agree with it for every tree size up to ``MAX_SIZE``.
"""

from __future__ import annotations

import base64
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.errors import ConsentError, ProofError
from consent.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MAX_TREE_SIZE,
    MerkleFrontier,
    consistency_proof,
    consistency_proof_extending,
    inclusion_proof,
    inclusion_proofs,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from kernel.crypto import sha256

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "merkle.json").read_text(encoding="utf-8")
)

MAX_SIZE = 300  # every size 1..MAX_SIZE is checked against the reference
EXHAUSTIVE = 48  # every index / every old size is checked up to this tree size
BIT_FLIPS = 12  # every bit of every proof element is flipped up to this tree size

LEAVES: list[bytes] = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_SIZE)]
OTHER_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

# --- the reference, straight from RFC 9162 §2.1 ------------------------------------------


def ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) over LEAVES (already leaf hashes)."""
    if hi == lo:
        return sha256(b"")
    if hi - lo == 1:
        return LEAVES[lo]
    k = ref_split(hi - lo)
    return sha256(b"\x01" + ref_mth(lo, lo + k) + ref_mth(lo + k, hi))


def ref_path(m: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi]), m relative to lo."""
    if hi - lo == 1:
        return []
    k = ref_split(hi - lo)
    if m < k:
        return ref_path(m, lo, lo + k) + [ref_mth(lo + k, hi)]
    return ref_path(m - k, lo + k, hi) + [ref_mth(lo, lo + k)]


def ref_subproof(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b), m relative to lo."""
    if m == hi - lo:
        return [] if b else [ref_mth(lo, hi)]
    k = ref_split(hi - lo)
    if m <= k:
        return ref_subproof(m, lo, lo + k, b) + [ref_mth(lo + k, hi)]
    return ref_subproof(m - k, lo + k, hi, False) + [ref_mth(lo, lo + k)]


def root(n: int) -> bytes:
    return ref_mth(0, n)


def flip(value: bytes, bit: int) -> bytes:
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


# --- hashing and published vectors -------------------------------------------------------


def test_empty_root_is_sha256_of_the_empty_string() -> None:
    assert EMPTY_ROOT == sha256(b"")
    assert root_hash([]) == EMPTY_ROOT
    assert MerkleFrontier().root() == EMPTY_ROOT


@pytest.mark.parametrize("case", VECTORS["hasher"], ids=lambda case: case["desc"])
def test_hasher_matches_the_published_vectors(case: dict[str, str]) -> None:
    if case["kind"] == "empty_root":
        got = EMPTY_ROOT
    elif case["kind"] == "leaf":
        got = leaf_hash(bytes.fromhex(case["data"]))
    else:
        got = node_hash(bytes.fromhex(case["left"]), bytes.fromhex(case["right"]))
    assert got.hex() == case["want"]


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    left, right = leaf_hash(b"Hello"), leaf_hash(b"World")
    assert node_hash(left, right) != leaf_hash(left + right)
    assert node_hash(left, right) != node_hash(right, left)


PUBLISHED_LEAVES = [leaf_hash(bytes.fromhex(data)) for data in VECTORS["leaves"]]
PUBLISHED_ROOTS = {case["size"]: bytes.fromhex(case["root"]) for case in VECTORS["roots"]}


@pytest.mark.parametrize("size", sorted(PUBLISHED_ROOTS))
def test_roots_match_the_published_vectors(size: int) -> None:
    assert root_hash(PUBLISHED_LEAVES[:size]) == PUBLISHED_ROOTS[size]
    assert MerkleFrontier.from_leaf_hashes(PUBLISHED_LEAVES[:size]).root() == PUBLISHED_ROOTS[size]


@pytest.mark.parametrize(
    "case", VECTORS["inclusion"], ids=lambda case: f"{case['index']}-of-{case['size']}"
)
def test_inclusion_proofs_match_the_published_vectors(case: dict[str, Any]) -> None:
    index, size = case["index"], case["size"]
    want = [bytes.fromhex(h) for h in case["proof"]]
    assert index == case["leaf_number"] - 1
    assert inclusion_proof(PUBLISHED_LEAVES[:size], index) == want
    leaf, tree_root = PUBLISHED_LEAVES[index], PUBLISHED_ROOTS[size]
    verify_inclusion(leaf, index, size, want, tree_root)
    # The probes transparency-dev/merkle's verifierCheck applies to these vectors.
    probes = [
        (leaf, index - 1, size, want, tree_root),
        (leaf, index + 1, size, want, tree_root),
        (leaf, index ^ 2, size, want, tree_root),
        (leaf, index, size * 2, want, tree_root),
        (leaf, index, size // 2, want, tree_root),
        (b"WrongLeaf", index, size, want, tree_root),
        (leaf, index, size, want, EMPTY_ROOT),
        (leaf, index, size, want, OTHER_HASH),
        (leaf, index, size, [*want, b""], tree_root),
        (leaf, index, size, [*want, tree_root], tree_root),
        (leaf, index, size, [b"", *want], tree_root),
        (leaf, index, size, [tree_root, *want], tree_root),
    ]
    for i in range(len(want)):
        probes.append((leaf, index, size, [*want[:i], flip(want[i], 3), *want[i + 1 :]], tree_root))
    if want:
        probes.append((leaf, index, size, want[:-1], tree_root))
    if len(want) > 1:
        probes.append((leaf, index, size, [want[0], OTHER_HASH, *want[1:]], tree_root))
    for probe in probes:
        with pytest.raises(ProofError):
            verify_inclusion(*probe)


@pytest.mark.parametrize(
    "case", VECTORS["consistency"], ids=lambda case: f"{case['size1']}-to-{case['size2']}"
)
def test_consistency_proofs_match_the_published_vectors(case: dict[str, Any]) -> None:
    size1, size2 = case["size1"], case["size2"]
    want = [bytes.fromhex(h) for h in case["proof"]]
    assert consistency_proof(PUBLISHED_LEAVES[:size2], size1) == want
    root1, root2 = PUBLISHED_ROOTS[size1], PUBLISHED_ROOTS[size2]
    verify_consistency(size1, size2, want, root1, root2)
    if not want:
        return
    # The probes transparency-dev/merkle's verifierConsistencyCheck applies.
    probes = [
        (size1 - 1, size2, want, root1, root2),
        (size1 + 1, size2, want, root1, root2),
        (size1 ^ 2, size2, want, root1, root2),
        (size1, size2 * 2, want, root1, root2),
        (size1, size2 // 2, want, root1, root2),
        (size1, size2, want, b"WrongRoot", root2),
        (size1, size2, want, root1, b"WrongRoot"),
        (size1, size2, want, root2, root1),
        (size1, size2, [], root1, root2),
        (size1, size2, [*want, b""], root1, root2),
        (size1, size2, [*want, root1], root1, root2),
        (size1, size2, [*want, root2], root1, root2),
        (size1, size2, [b"", *want], root1, root2),
        (size1, size2, [root1, *want], root1, root2),
        (size1, size2, [root2, *want], root1, root2),
        (size1, size2, [want[0], *want], root1, root2),
        (size1, size2, want[:-1], root1, root2),
    ]
    for i in range(len(want)):
        probes.append((size1, size2, [*want[:i], flip(want[i], 4), *want[i + 1 :]], root1, root2))
    for probe in probes:
        with pytest.raises(ProofError):
            verify_consistency(*probe)


@pytest.mark.parametrize(
    "entry", VECTORS["testdata"]["inclusion"], ids=lambda entry: entry["file"].split("testdata/")[1]
)
def test_published_inclusion_testdata(entry: dict[str, Any]) -> None:
    case = entry["case"]
    args = (
        b64(case["leafHash"]),
        case["leafIdx"],
        case["treeSize"],
        [b64(h) for h in case["proof"] or []],
        b64(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize(
    "entry",
    VECTORS["testdata"]["consistency"],
    ids=lambda entry: entry["file"].split("testdata/")[1],
)
def test_published_consistency_testdata(entry: dict[str, Any]) -> None:
    case = entry["case"]
    args = (
        case["size1"],
        case["size2"],
        [b64(h) for h in case["proof"] or []],
        b64(case["root1"]),
        b64(case["root2"]),
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# --- agreement with the reference --------------------------------------------------------


def test_root_hash_matches_the_reference_for_every_size() -> None:
    for n in range(1, MAX_SIZE + 1):
        assert root_hash(LEAVES[:n]) == root(n), n


@pytest.mark.parametrize("n", [1023, 1024, 1025, 2047, 2049, 4095, 4096, 4097])
def test_root_hash_around_powers_of_two(n: int) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    k = ref_split(n)
    assert root_hash(leaves) == node_hash(root_hash(leaves[:k]), root_hash(leaves[k:]))
    assert root_hash(leaves) == MerkleFrontier.from_leaf_hashes(leaves).root()


def test_every_inclusion_proof_of_small_trees_matches_and_verifies() -> None:
    for n in range(1, EXHAUSTIVE + 1):
        for index in range(n):
            proof = inclusion_proof(LEAVES[:n], index)
            assert proof == ref_path(index, 0, n), (index, n)
            verify_inclusion(LEAVES[index], index, n, proof, root(n))


def test_every_consistency_proof_of_small_trees_matches_and_verifies() -> None:
    for n in range(1, EXHAUSTIVE + 1):
        for m in range(1, n + 1):
            proof = consistency_proof(LEAVES[:n], m)
            assert proof == ref_subproof(m, 0, n, True), (m, n)
            verify_consistency(m, n, proof, root(m), root(n))


@st.composite
def size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX_SIZE))
    return size, draw(st.integers(0, size - 1))


@st.composite
def old_and_new_size(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(1, MAX_SIZE))
    return draw(st.integers(1, new)), new


@settings(max_examples=300, deadline=None)
@given(size_and_index())
def test_inclusion_proofs_match_the_reference(case: tuple[int, int]) -> None:
    size, index = case
    proof = inclusion_proof(LEAVES[:size], index)
    assert proof == ref_path(index, 0, size)
    verify_inclusion(LEAVES[index], index, size, proof, root(size))


@settings(max_examples=300, deadline=None)
@given(old_and_new_size())
def test_consistency_proofs_match_the_reference(case: tuple[int, int]) -> None:
    old, new = case
    proof = consistency_proof(LEAVES[:new], old)
    assert proof == ref_subproof(old, 0, new, True)
    verify_consistency(old, new, proof, root(old), root(new))


# --- tampering ---------------------------------------------------------------------------


def test_every_bit_flip_in_small_inclusion_proofs_is_rejected() -> None:
    for n in range(1, BIT_FLIPS + 1):
        for index in range(n):
            proof = inclusion_proof(LEAVES[:n], index)
            for i, element in enumerate(proof):
                for bit in range(HASH_SIZE * 8):
                    bad = [*proof[:i], flip(element, bit), *proof[i + 1 :]]
                    with pytest.raises(ProofError, match="root mismatch"):
                        verify_inclusion(LEAVES[index], index, n, bad, root(n))


def test_every_bit_flip_in_small_consistency_proofs_is_rejected() -> None:
    for n in range(2, BIT_FLIPS + 1):
        for m in range(1, n):
            proof = consistency_proof(LEAVES[:n], m)
            for i, element in enumerate(proof):
                for bit in range(HASH_SIZE * 8):
                    bad = [*proof[:i], flip(element, bit), *proof[i + 1 :]]
                    with pytest.raises(ProofError, match="root mismatch"):
                        verify_consistency(m, n, bad, root(m), root(n))


@settings(max_examples=300, deadline=None)
@given(size_and_index(), st.data())
def test_a_flipped_bit_anywhere_breaks_an_inclusion_proof(
    case: tuple[int, int], data: st.DataObject
) -> None:
    size, index = case
    proof = inclusion_proof(LEAVES[:size], index)
    leaf, tree_root = LEAVES[index], root(size)
    target = data.draw(st.integers(-2, len(proof) - 1), label="element (-2 leaf, -1 root)")
    bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="bit")
    if target == -2:
        leaf = flip(leaf, bit)
    elif target == -1:
        tree_root = flip(tree_root, bit)
    else:
        proof[target] = flip(proof[target], bit)
    with pytest.raises(ProofError, match="root mismatch"):
        verify_inclusion(leaf, index, size, proof, tree_root)


@settings(max_examples=300, deadline=None)
@given(old_and_new_size(), st.data())
def test_a_flipped_bit_anywhere_breaks_a_consistency_proof(
    case: tuple[int, int], data: st.DataObject
) -> None:
    old, new = case
    proof = consistency_proof(LEAVES[:new], old)
    roots = [root(old), root(new)]
    target = data.draw(st.integers(-2, len(proof) - 1), label="element (-2 old, -1 new root)")
    bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="bit")
    if target < 0:
        roots[target] = flip(roots[target], bit)
    else:
        proof[target] = flip(proof[target], bit)
    with pytest.raises(ProofError, match="root mismatch"):
        verify_consistency(old, new, proof, *roots)


@settings(max_examples=300, deadline=None)
@given(size_and_index(), st.data())
def test_an_added_or_missing_element_breaks_an_inclusion_proof(
    case: tuple[int, int], data: st.DataObject
) -> None:
    size, index = case
    proof = inclusion_proof(LEAVES[:size], index)
    remove = data.draw(st.booleans(), label="remove")
    if proof and remove:
        del proof[data.draw(st.integers(0, len(proof) - 1), label="removed")]
    else:
        extra = data.draw(st.sampled_from([OTHER_HASH, root(size), LEAVES[index], *proof]))
        proof.insert(data.draw(st.integers(0, len(proof)), label="inserted at"), extra)
    with pytest.raises(ProofError, match="wrong proof length"):
        verify_inclusion(LEAVES[index], index, size, proof, root(size))


@settings(max_examples=300, deadline=None)
@given(old_and_new_size(), st.data())
def test_an_added_or_missing_element_breaks_a_consistency_proof(
    case: tuple[int, int], data: st.DataObject
) -> None:
    old, new = case
    proof = consistency_proof(LEAVES[:new], old)
    remove = data.draw(st.booleans(), label="remove")
    if proof and remove:
        del proof[data.draw(st.integers(0, len(proof) - 1), label="removed")]
    else:
        extra = data.draw(st.sampled_from([OTHER_HASH, root(old), root(new), *proof]))
        proof.insert(data.draw(st.integers(0, len(proof)), label="inserted at"), extra)
    with pytest.raises(ProofError, match="wrong proof length"):
        verify_consistency(old, new, proof, root(old), root(new))


def test_a_proof_for_one_index_never_verifies_another() -> None:
    for n in range(2, EXHAUSTIVE + 1):
        tree_root = root(n)
        for index in range(n):
            proof = inclusion_proof(LEAVES[:n], index)
            for other in range(n):
                if other != index:
                    with pytest.raises(ProofError):
                        verify_inclusion(LEAVES[index], other, n, proof, tree_root)
                    with pytest.raises(ProofError):
                        verify_inclusion(LEAVES[other], other, n, proof, tree_root)


def test_a_proof_for_one_size_verifies_another_only_if_it_is_that_proof() -> None:
    # Claiming another size, with that size's real root, succeeds only where both trees
    # give the same path (the leaf's subtree is unchanged by the growth).
    for n in range(1, EXHAUSTIVE + 1):
        for index in range(n):
            proof = inclusion_proof(LEAVES[:n], index)
            for size in range(index + 1, 2 * EXHAUSTIVE + 1):
                if size != n and ref_path(index, 0, size) != proof:
                    with pytest.raises(ProofError):
                        verify_inclusion(LEAVES[index], index, size, proof, root(size))


def test_the_tree_size_is_authenticated_by_the_checkpoint_not_the_proof() -> None:
    # RFC 9162 proofs do not commit to the tree size: a path only fixes the shape of the
    # tree above the leaf, and trees of sizes 3 and 4 have the same shape above leaf 0.
    # The (size, root) pair must come from one signed checkpoint (docs/audit-log.md).
    proof = inclusion_proof(LEAVES[:3], 0)
    verify_inclusion(LEAVES[0], 0, 3, proof, root(3))
    verify_inclusion(LEAVES[0], 0, 4, proof, root(3))
    verify_consistency(1, 4, consistency_proof(LEAVES[:3], 1), root(1), root(3))


def test_consistency_for_other_sizes_verifies_only_if_it_is_that_proof() -> None:
    for n in range(2, EXHAUSTIVE + 1):
        for m in range(1, n):
            proof = consistency_proof(LEAVES[:n], m)
            with pytest.raises(ProofError, match="root mismatch"):
                verify_consistency(m, n, proof, root(n), root(m))  # swapped roots
            for old in range(1, n + 1):
                if old != m and ref_subproof(old, 0, n, True) != proof:
                    with pytest.raises(ProofError):
                        verify_consistency(old, n, proof, root(old), root(n))
            for new in range(m, 2 * EXHAUSTIVE + 1):
                if new != n and ref_subproof(m, 0, new, True) != proof:
                    with pytest.raises(ProofError):
                        verify_consistency(m, new, proof, root(m), root(new))


# --- edge cases and argument checking ----------------------------------------------------


def test_consistency_between_equal_sizes_is_the_empty_proof() -> None:
    for n in (1, 2, 3, 8, 300):
        assert consistency_proof(LEAVES[:n], n) == []
        verify_consistency(n, n, [], root(n), root(n))
        with pytest.raises(ProofError, match="wrong proof length"):
            verify_consistency(n, n, [root(n)], root(n), root(n))
        with pytest.raises(ProofError, match="root mismatch"):
            verify_consistency(n, n, [], root(n), OTHER_HASH)


def test_consistency_from_the_empty_tree_is_refused_on_both_sides() -> None:
    with pytest.raises(ValueError, match="empty tree"):
        consistency_proof(LEAVES[:5], 0)
    with pytest.raises(ValueError, match="empty tree"):
        consistency_proof([], 0)
    for new in (0, 1, 5):
        # transparency-dev/merkle accepts these; we do not (docs/audit-log.md).
        with pytest.raises(ProofError, match="empty tree"):
            verify_consistency(0, new, [], EMPTY_ROOT, root(new))


def test_verifiers_name_what_failed() -> None:
    proof = inclusion_proof(LEAVES[:5], 2)
    with pytest.raises(ProofError, match="index 5 is out of range"):
        verify_inclusion(LEAVES[2], 5, 5, proof, root(5))
    with pytest.raises(ProofError, match="index -1 is out of range"):
        verify_inclusion(LEAVES[2], -1, 5, proof, root(5))
    with pytest.raises(ProofError, match="tree_size 0 is out of range|index 0 is out of range"):
        verify_inclusion(LEAVES[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="hash length: leaf hash is 31 bytes"):
        verify_inclusion(LEAVES[2][:31], 2, 5, proof, root(5))
    with pytest.raises(ProofError, match=r"hash length: proof\[1\] is 33 bytes"):
        verify_inclusion(LEAVES[2], 2, 5, [proof[0], proof[1] + b"\x00", proof[2]], root(5))
    with pytest.raises(ProofError, match="hash length: root is 0 bytes"):
        verify_inclusion(LEAVES[2], 2, 5, proof, b"")
    with pytest.raises(ProofError, match="sizes out of order"):
        verify_consistency(6, 5, [], root(5), root(5))
    with pytest.raises(ProofError, match="new_size -1 is out of range"):
        verify_consistency(1, -1, [], root(1), root(1))
    with pytest.raises(ProofError, match="out of range"):
        verify_consistency(1, MAX_TREE_SIZE + 1, [], root(1), root(1))
    with pytest.raises(ProofError, match="wrong proof length: 0 hashes, want 2"):
        verify_consistency(2, 5, [], root(2), root(5))


hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40).filter(lambda value: len(value) != HASH_SIZE),
    st.lists(st.binary(max_size=40), max_size=70),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=500, deadline=None)
@given(hostile, hostile, hostile, hostile, hostile)
def test_verify_inclusion_only_ever_raises_proof_error(
    a: Any, b: Any, c: Any, d: Any, e: Any
) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(a, b, c, d, e)


@settings(max_examples=500, deadline=None)
@given(hostile, hostile, hostile, hostile, hostile)
def test_verify_consistency_only_ever_raises_proof_error(
    a: Any, b: Any, c: Any, d: Any, e: Any
) -> None:
    with pytest.raises(ProofError):
        verify_consistency(a, b, c, d, e)


@settings(max_examples=200, deadline=None)
@given(size_and_index(), st.sampled_from([True, 1.0, "0", None]))
def test_non_int_indices_are_refused_even_when_equal_to_a_valid_one(
    case: tuple[int, int], bad: Any
) -> None:
    size = case[0]
    proof = inclusion_proof(LEAVES[:size], 0)
    with pytest.raises(ProofError, match="must be an int"):
        verify_inclusion(LEAVES[0], bad, size, proof, root(size))
    with pytest.raises(ProofError, match="must be an int"):
        verify_consistency(bad, size, consistency_proof(LEAVES[:size], 1), root(1), root(size))


def test_proof_error_is_a_consent_error() -> None:
    assert issubclass(ProofError, ConsentError)


def test_generators_refuse_bad_arguments() -> None:
    with pytest.raises(TypeError):
        leaf_hash("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        node_hash(b"", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        root_hash(b"\x00" * 32)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        root_hash([LEAVES[0], "x" * 32])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="leaf hash 1 must be 32 bytes"):
        root_hash([LEAVES[0], b"short"])
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof(LEAVES[:3], 3)
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof(LEAVES[:3], -1)
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof([], 0)
    with pytest.raises(TypeError):
        inclusion_proof(LEAVES[:3], True)
    with pytest.raises(ValueError, match="out of range"):
        consistency_proof(LEAVES[:3], 4)
    with pytest.raises(TypeError):
        consistency_proof(LEAVES[:3], 1.0)  # type: ignore[arg-type]


# --- the frontier ------------------------------------------------------------------------


def test_frontier_root_equals_root_hash_for_every_prefix() -> None:
    frontier = MerkleFrontier()
    for n, leaf in enumerate(LEAVES, start=1):
        frontier.append(leaf)
        assert frontier.size == n
        assert frontier.root() == root(n), n
        assert len(frontier.to_hashes()) == n.bit_count()
        saved = MerkleFrontier.from_hashes(frontier.size, frontier.to_hashes())
        assert saved == frontier
        assert saved.root() == root(n)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=12))
def test_frontier_appends_in_batches_across_save_and_restore(batches: list[int]) -> None:
    frontier, done = MerkleFrontier(), 0
    for batch in batches:
        batch = min(batch, MAX_SIZE - done)
        restored = MerkleFrontier.from_hashes(frontier.size, frontier.to_hashes())
        restored.extend(LEAVES[done : done + batch])
        done += batch
        frontier = restored
        assert frontier.root() == root(done)
        assert frontier.root() == root_hash(LEAVES[:done])


def test_frontier_checks_its_inputs() -> None:
    frontier = MerkleFrontier.from_leaf_hashes(LEAVES[:5])
    with pytest.raises(ValueError, match="has 2 hashes, not 1"):
        MerkleFrontier.from_hashes(5, frontier.to_hashes()[:1])
    with pytest.raises(ValueError, match="out of range"):
        MerkleFrontier.from_hashes(-1, [])
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleFrontier.from_hashes(1, [b"short"])
    with pytest.raises(ValueError, match="32 bytes"):
        frontier.append(b"short")
    with pytest.raises(TypeError):
        frontier.append("x" * 32)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        frontier.extend(LEAVES[0])  # type: ignore[arg-type]
    full = MerkleFrontier.from_hashes(MAX_TREE_SIZE, [OTHER_HASH] * 64)
    with pytest.raises(ValueError, match="full"):
        full.append(LEAVES[0])
    assert frontier.size == 5 and frontier.root() == root(5)


def test_frontier_copy_is_independent_and_repr_shows_size_and_root() -> None:
    frontier = MerkleFrontier.from_leaf_hashes(LEAVES[:3])
    copy = frontier.copy()
    copy.append(LEAVES[3])
    assert frontier.size == 3 and copy.size == 4
    assert frontier != copy
    assert repr(frontier) == f"MerkleFrontier(size=3, root={root(3).hex()})"
    assert frontier.to_hashes() is not frontier.to_hashes()


# --- scale -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_million_leaves_hash_verify_and_append_well_within_budget() -> None:
    n = 1_000_000
    leaves = [sha256(i.to_bytes(8, "big")) for i in range(n)]
    start = time.perf_counter()
    tree_root = root_hash(leaves)
    proof = inclusion_proof(leaves, n - 1)
    verify_inclusion(leaves[-1], n - 1, n, proof, tree_root)
    frontier = MerkleFrontier.from_leaf_hashes(leaves[: n - 1000])
    frontier.extend(leaves[n - 1000 :])
    assert frontier.root() == tree_root
    proof = consistency_proof(leaves, n - 1000)
    verify_consistency(n - 1000, n, proof, root_hash(leaves[: n - 1000]), tree_root)
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 9, 31, 64, 65, 100, 257])
def test_inclusion_proofs_in_bulk_equal_one_by_one(size: int) -> None:
    leaves = LEAVES[:size]
    bulk = inclusion_proofs(leaves, range(size))
    root = root_hash(leaves)
    for index in range(size):
        assert bulk[index] == inclusion_proof(leaves, index)
        verify_inclusion(leaves[index], index, size, bulk[index], root)
    with pytest.raises(ValueError):
        inclusion_proofs(leaves, [size])


@settings(max_examples=300)
@given(data=st.data())
def test_a_proof_from_the_old_frontier_is_the_proof_from_all_leaves(data: st.DataObject) -> None:
    size = data.draw(st.integers(min_value=1, max_value=len(LEAVES)))
    old_size = data.draw(st.integers(min_value=1, max_value=size))
    old = MerkleFrontier.from_leaf_hashes(LEAVES[:old_size])
    proof = consistency_proof_extending(old, LEAVES[old_size:size])
    assert proof == consistency_proof(LEAVES[:size], old_size)
    verify_consistency(old_size, size, proof, old.root(), root_hash(LEAVES[:size]))


def test_no_proof_extends_the_empty_tree() -> None:
    with pytest.raises(ValueError):
        consistency_proof_extending(MerkleFrontier(), LEAVES[:3])
