"""node.blinding: size buckets, dummies, handles and shuffling, epoch caches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.crypto import hash_to_curve, random_bytes, validate_token
from node._pool import BlindingPool
from node.blinding import (
    HANDLE_SIZE,
    EpochCache,
    KeyScope,
    dummy_points,
    per_customer_handles,
    random_order,
    regrouped,
    secure_shuffle,
    shuffled_set,
    size_bucket,
)


@given(st.integers(min_value=0, max_value=10**9))
def test_buckets_pad_by_at_most_a_sixteenth(count: int) -> None:
    bucket = size_bucket(count)
    assert bucket >= count
    if count <= 32:
        assert bucket == 32
    else:
        assert (bucket - count) * 16 < count  # under 6.25 % padding
    assert size_bucket(bucket) == bucket  # a bucket is its own bucket


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=0, max_value=10**7))
def test_buckets_are_monotonic(a: int, b: int) -> None:
    if a <= b:
        assert size_bucket(a) <= size_bucket(b)


def test_buckets_hide_the_exact_size() -> None:
    # Many sizes share one bucket: an observer learns only about four bits.
    assert len({size_bucket(n) for n in range(98_305, 102_401)}) == 1


def test_dummies_are_valid_stable_and_scoped() -> None:
    master = random_bytes(32)
    scope = KeyScope("agr", "seg", epoch=3)
    first = dummy_points(master, scope, 0, 50)
    for point in first:
        validate_token(point)
    assert len(set(first)) == 50
    assert dummy_points(master, scope, 0, 50) == first  # recur across flows of the epoch
    assert dummy_points(master, scope, 20, 10) == first[20:30]
    for other in (
        KeyScope("agr", "seg", epoch=4),
        KeyScope("agr", "seg", epoch=3, rotation=1),
        KeyScope("agr2", "seg", epoch=3),
        KeyScope("agr", "seg2", epoch=3),
    ):
        assert not set(dummy_points(master, other, 0, 50)) & set(first)
    assert not set(dummy_points(random_bytes(32), scope, 0, 50)) & set(first)


def test_shuffled_sets_have_fresh_handles_and_a_fresh_order() -> None:
    real = [(i, hash_to_curve("email", f"c{i}@example.com")) for i in range(500)]
    dummies = [hash_to_curve("dummy", f"d{i}") for i in range(20)]
    one = shuffled_set(real, dummies)
    two = shuffled_set(real, dummies)
    assert sorted(one.inputs) == sorted(two.inputs) == sorted([p for _, p in real] + dummies)
    assert one.inputs != two.inputs  # 520! orders: equal only by (impossible) chance
    assert one.inputs != [p for _, p in real] + dummies  # not the store order
    assert all(len(h) == HANDLE_SIZE for h in one.handles)
    assert len(set(one.handles)) == 520 and not set(one.handles) & set(two.handles)
    for point, owner in zip(one.inputs, one.owners.of(one.handles), strict=True):
        assert (owner is None) == (point in dummies)
        if owner is not None:
            assert real[owner][1] == point


def test_epoch_cache_drops_older_epochs_of_the_same_agreement() -> None:
    cache = EpochCache()
    old = KeyScope("a1", "s", epoch=1)
    other = KeyScope("a2", "s", epoch=1)
    cache.map_for(old)[b"x"] = b"y"
    cache.map_for(other)[b"x"] = b"z"
    new = KeyScope("a1", "s", epoch=2)
    assert cache.map_for(new) == {}
    assert set(cache.scopes()) == {other, new}  # a1's epoch 1 is gone, a2 untouched
    rotated = KeyScope("a1", "s", epoch=2, rotation=1)
    cache.map_for(rotated)
    assert new not in cache.scopes()
    cache.drop("a2")
    assert cache.scopes() == [rotated]


def _shuffled(items: list[int]) -> list[int]:
    secure_shuffle(items)
    return items


def _pooled_order(items: list[int]) -> list[int]:
    pool = BlindingPool(2)  # two real worker processes
    try:
        return [items[i] for i in pool.random_order(len(items)).result()]
    finally:
        pool.close()


@pytest.mark.parametrize(
    "shuffle",
    [_shuffled, lambda items: [items[i] for i in random_order(len(items))]],
    ids=["secure_shuffle", "random_order"],
)
def test_secure_shuffle_is_uniform_and_a_permutation(
    shuffle: Callable[[list[int]], list[int]],
) -> None:
    counts: Counter[tuple[int, ...]] = Counter()
    for _ in range(6000):
        counts[tuple(shuffle([0, 1, 2]))] += 1
    assert len(counts) == 6  # every order of three appears …
    assert all(800 < c < 1200 for c in counts.values()), counts  # … about equally often
    for size in (0, 1, 2, 10_000):
        big = shuffle(list(range(size)))
        assert sorted(big) == list(range(size))
    assert big != list(range(10_000))


def test_the_pool_draws_an_order_in_a_worker() -> None:
    """A node asks its pool for the order of a set it is still receiving: a permutation,
    fresh each time."""
    first, second = _pooled_order(list(range(5_000))), _pooled_order(list(range(5_000)))
    assert sorted(first) == sorted(second) == list(range(5_000))
    assert first != second


@given(
    identifiers=st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=20),
    padding=st.integers(min_value=0, max_value=5),
)
def test_per_customer_handles_give_each_customer_one_handle(
    identifiers: list[int], padding: int
) -> None:
    real = [
        (customer, random_bytes(32))
        for customer, count in enumerate(identifiers)
        for _ in range(count)
    ]
    shuffled = shuffled_set(real, [random_bytes(32) for _ in range(padding)])
    handles = per_customer_handles(shuffled)
    assert len(handles) == shuffled.size
    owners = shuffled.owners.of(shuffled.handles)
    by_customer: dict[int, set[bytes]] = {}
    for handle, owner in zip(handles, owners, strict=True):
        if owner is not None:
            by_customer.setdefault(owner, set()).add(handle)
    assert all(len(h) == 1 for h in by_customer.values())
    assert len({next(iter(h)) for h in by_customer.values()}) == len(identifiers)
    padding_handles = [h for h, o in zip(handles, owners, strict=True) if o is None]
    assert len(set(padding_handles)) == padding
    assert not set(padding_handles) & {next(iter(h)) for h in by_customer.values()}


@given(groups=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=25))
def test_regrouping_keeps_the_groups_and_nothing_else(groups: list[int]) -> None:
    handles_in = [bytes([g]) * HANDLE_SIZE for g, size in enumerate(groups) for _ in range(size)]
    tokens_in = [random_bytes(32) for _ in handles_in]
    tokens_out, handles_out = regrouped(tokens_in, handles_in)
    assert sorted(tokens_out) == sorted(tokens_in)
    group_in = dict(zip(tokens_in, handles_in, strict=True))
    group_out = dict(zip(tokens_out, handles_out, strict=True))
    # Two tokens share an output handle exactly when they shared an input handle.
    for a in tokens_in:
        for b in tokens_in:
            assert (group_in[a] == group_in[b]) == (group_out[a] == group_out[b])
    assert not set(handles_out) & set(handles_in)
    assert all(len(h) == HANDLE_SIZE for h in handles_out)
