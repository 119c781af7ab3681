"""broker.matching: what the broker computes from two doubly-blinded sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.matching import intersect_handles, intersection_size

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
