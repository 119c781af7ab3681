"""Witnessing nodes' signed tree heads: the decision, as plain Python.

A node sends its latest signed tree head, with an RFC 9162 consistency proof from the
last head the broker witnessed for that log. The broker accepts the head only if

* it names the caller's own log (``accord/node/<caller>``) and verifies under the signing
  key the caller registered;
* it does not shrink the log (a smaller size than the last witnessed head);
* at the same size it has the same root (then it is a repeat, witnessed already);
* at a larger size the proof takes the last witnessed (size, root) to the new one.

So a node that rewrote or truncated its history and re-signed it cannot get a new head
witnessed: it cannot prove consistency with the head it published before. No transport,
no SQL: the service and store are adapters around ``check_head`` and ``decide``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from broker.errors import LogInconsistent, LogShrank, NotAuthorized, TreeHeadInvalid
from consent.errors import LedgerTampered, ProofError
from consent.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from consent.records import SignedTreeHead, parse_time
from consent.signed import WitnessCosignature
from kernel.crypto import key_id

__all__ = [
    "ConsistencyClaim",
    "Decision",
    "WitnessedHead",
    "check_head",
    "decide",
    "node_log_origin",
]


def node_log_origin(node_name: str) -> str:
    """The name of a node's audit log (``kernel.keys.PartyIdentity.origin`` of a node)."""
    return f"accord/node/{node_name}"


@dataclass(frozen=True, slots=True)
class ConsistencyClaim:
    """An RFC 9162 consistency proof as a node sends it (``accord.common.v1.ConsistencyProof``)."""

    origin: str
    first_tree_size: int
    second_tree_size: int
    path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class WitnessedHead:
    """A node's head as the broker witnessed it, with the broker's cosignature.

    ``previous_tree_size`` is the size of the head it was checked against (-1 for the
    first head of a log): at most one head may extend any given head, so two heads sent
    at once cannot both be checked against the same predecessor (a fork).
    """

    head: SignedTreeHead
    cosignature: WitnessCosignature
    previous_tree_size: int

    @property
    def witnessed_at(self) -> datetime:
        return self.cosignature.witnessed_at


class Decision(StrEnum):
    FIRST = "first"  # the first head of this log: nothing to be consistent with
    REPEAT = "repeat"  # same size and root as the last witnessed head: already witnessed
    EXTENDS = "extends"  # larger, and proven to extend the last witnessed head


def check_head(head: SignedTreeHead, *, caller: str, signing_public_key: bytes) -> None:
    """The head is the caller's own log, well formed and signed by the caller's key."""
    if head.origin != node_log_origin(caller):
        raise NotAuthorized(
            f"a node sends the broker heads of its own log ({node_log_origin(caller)}) only"
        )
    if head.tree_size < 0 or len(head.root_hash) != HASH_SIZE:
        raise TreeHeadInvalid("the tree head is malformed (a size and a 32-byte root)")
    try:
        parse_time(head.timestamp)
    except ValueError:
        raise TreeHeadInvalid("the tree head's timestamp is not RFC 3339") from None
    if head.tree_size == 0 and head.root_hash != EMPTY_ROOT:
        raise TreeHeadInvalid("a tree head of size 0 must carry the empty tree's root")
    if head.key_id != key_id(signing_public_key):
        raise TreeHeadInvalid("the tree head names a key other than the one the node registered")
    try:
        head.verify(signing_public_key)
    except LedgerTampered:
        raise TreeHeadInvalid(
            "the tree head's signature does not verify under the key the node registered"
        ) from None


def decide(
    head: SignedTreeHead, *, latest: SignedTreeHead | None, proof: ConsistencyClaim | None
) -> Decision:
    """Whether ``head`` may be witnessed after ``latest`` (the last head witnessed for its
    log); raise ``LogShrank`` or ``LogInconsistent`` naming what failed."""
    if latest is None:
        return Decision.FIRST
    if head.tree_size < latest.tree_size:
        raise LogShrank(
            f"the log shrank: the broker witnessed {latest.tree_size} entries, this head "
            f"has {head.tree_size}"
        )
    if head.tree_size == latest.tree_size:
        if head.root_hash != latest.root_hash:
            raise LogInconsistent(
                f"the log was rewritten: the head of size {head.tree_size} has another root "
                "than the head of that size the broker witnessed"
            )
        return Decision.REPEAT
    if latest.tree_size == 0:
        return Decision.EXTENDS  # every tree extends the empty one
    if proof is None:
        raise LogInconsistent(
            f"a consistency proof from size {latest.tree_size} (the last witnessed head) to "
            f"{head.tree_size} is needed"
        )
    if proof.origin and proof.origin != head.origin:
        raise LogInconsistent("the consistency proof is for another log")
    if proof.first_tree_size != latest.tree_size:
        raise LogInconsistent(
            f"the consistency proof starts at size {proof.first_tree_size}, but the last "
            f"witnessed head has size {latest.tree_size}"
        )
    if proof.second_tree_size != head.tree_size:
        raise LogInconsistent(
            f"the consistency proof ends at size {proof.second_tree_size}, but the head has "
            f"size {head.tree_size}"
        )
    try:
        verify_consistency(
            latest.tree_size, head.tree_size, list(proof.path), latest.root_hash, head.root_hash
        )
    except ProofError as exc:
        raise LogInconsistent(
            f"the log does not extend the witnessed head of size {latest.tree_size}: the "
            f"consistency proof fails ({exc})"
        ) from None
    return Decision.EXTENDS
