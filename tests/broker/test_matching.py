"""broker.matching: what the broker computes from two doubly-blinded sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.matching import intersect_handles, intersection_size, overlap_size

tokens = st.binary(min_size=32, max_size=32)


@given(
    owner=st.lists(tokens, max_size=60),
    recipient=st.lists(st.tuples(tokens, st.binary(min_size=16, max_size=16)), max_size=60),
    shared=st.lists(st.tuples(tokens, st.binary(min_size=16, max_size=16)), max_size=20),
)
def test_matched_handles_are_exactly_those_of_shared_tokens(
    owner: list[bytes], recipient: list[tuple[bytes, bytes]], shared: list[tuple[bytes, bytes]]
) -> None:
    owner_set = owner + [t for t, _ in shared]
    rows = recipient + shared
    matched = intersect_handles(set(owner_set), [t for t, _ in rows], [h for _, h in rows])
    assert matched == [h for t, h in rows if t in set(owner_set)]
    assert intersection_size(owner_set, [t for t, _ in rows]) == len(
        set(owner_set) & {t for t, _ in rows}
    )


def test_handles_must_pair_with_tokens() -> None:
    with pytest.raises(ValueError):
        intersect_handles({b"a" * 32}, [b"a" * 32], [])


@given(
    customers=st.dictionaries(
        st.binary(min_size=16, max_size=16),  # a customer's handle
        st.lists(st.tuples(tokens, st.booleans()), min_size=1, max_size=4),  # (token, shared)
        max_size=30,
    ),
)
def test_an_overlap_counts_customers_not_identifiers(
    customers: dict[bytes, list[tuple[bytes, bool]]],
) -> None:
    rows = [(token, handle) for handle, ids in customers.items() for token, _ in ids]
    owner = {token for ids in customers.values() for token, shared in ids if shared}
    expected = sum(1 for handle, ids in customers.items() if any(t in owner for t, _ in ids))
    assert overlap_size(owner, [t for t, _ in rows], [h for _, h in rows]) == expected


def test_an_overlap_needs_a_handle_per_token() -> None:
    with pytest.raises(ValueError):
        overlap_size({b"a" * 32}, [b"a" * 32], [])
