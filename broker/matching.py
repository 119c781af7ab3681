"""Intersecting doubly-blinded sets: what the broker computes, and nothing more.

Plain Python. The broker holds both doubly-blinded sets only for the flow's lifetime.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["intersect_handles", "intersection_size", "overlap_size"]


def intersection_size(owner_tokens: Iterable[bytes], recipient_tokens: Iterable[bytes]) -> int:
    """How many distinct tokens the two sets share."""
    return len(set(owner_tokens) & set(recipient_tokens))


def overlap_size(
    owner_tokens: set[bytes] | frozenset[bytes],
    recipient_tokens: Sequence[bytes],
    recipient_handles: Sequence[bytes],
) -> int:
    """How many of the recipient's customers are in the owner's set (overlap mode).

    In an overlap flow the recipient gives every token of one customer the same handle,
    so a customer matched on both e-mail and phone counts once. Padding dummies are
    random points under two keys, so they never collide."""
    return len(set(intersect_handles(owner_tokens, recipient_tokens, recipient_handles)))


def intersect_handles(
    owner_tokens: Iterable[bytes],
    recipient_tokens: Sequence[bytes],
    recipient_handles: Sequence[bytes],
) -> list[bytes]:
    """The recipient's handles whose doubly-blinded token is also in the owner's set."""
    if len(recipient_tokens) != len(recipient_handles):
        raise ValueError("each recipient token needs its handle")
    owner = owner_tokens if isinstance(owner_tokens, set | frozenset) else set(owner_tokens)
    return [h for t, h in zip(recipient_tokens, recipient_handles, strict=True) if t in owner]
