"""Witnessing tree heads: the decision (broker.witness), the cosignature, and the store."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from broker import BrokerStore
from broker.errors import LogInconsistent, LogShrank, NotAuthorized, TreeHeadInvalid, WitnessRace
from broker.witness import (
    ConsistencyClaim,
    Decision,
    WitnessedHead,
    check_head,
    decide,
    node_log_origin,
)
from consent.errors import InvalidAgreement
from consent.merkle import EMPTY_ROOT, consistency_proof, leaf_hash, root_hash
from consent.records import SignedTreeHead, format_time
from consent.serde import witnessed_head_from_proto, witnessed_head_to_proto
from consent.signed import WitnessCosignature
from kernel.crypto import SigningKey

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OWNER, RECIPIENT = "solent-boats", "bluewater-travel"
ORIGIN = node_log_origin(OWNER)


class Log:
    """A node's log as leaf hashes, with the heads and proofs the node would send."""

    def __init__(self, key: SigningKey, entries: int, *, tag: bytes = b"entry") -> None:
        self.key = key
        self.leaves = [leaf_hash(b"%s %d" % (tag, i)) for i in range(entries)]

    def head(self, size: int, *, minutes: int = 0, origin: str = ORIGIN) -> SignedTreeHead:
        return SignedTreeHead.sign(
            self.key,
            origin=origin,
            tree_size=size,
            root_hash=root_hash(self.leaves[:size]),
            timestamp=format_time(NOW + timedelta(minutes=minutes)),
        )

    def proof(self, old: int, new: int) -> ConsistencyClaim:
        return ConsistencyClaim(ORIGIN, old, new, tuple(consistency_proof(self.leaves[:new], old)))


@pytest.fixture
def node_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def log(node_key: SigningKey) -> Log:
    return Log(node_key, 40)


# --- the decision ---------------------------------------------------------------------------


def test_a_consistent_growing_log_is_accepted(log: Log) -> None:
    first = log.head(3)
    assert decide(first, latest=None, proof=None) is Decision.FIRST
    grown = log.head(7, minutes=1)
    assert decide(grown, latest=first, proof=log.proof(3, 7)) is Decision.EXTENDS
    assert decide(log.head(7, minutes=2), latest=grown, proof=None) is Decision.REPEAT
    assert decide(log.head(32), latest=grown, proof=log.proof(7, 32)) is Decision.EXTENDS


def test_a_log_may_grow_from_its_empty_head_without_a_proof(log: Log) -> None:
    empty = log.head(0)
    assert empty.root_hash == EMPTY_ROOT
    assert decide(log.head(5), latest=empty, proof=None) is Decision.EXTENDS


def test_a_shrunk_log_is_refused(log: Log) -> None:
    with pytest.raises(LogShrank, match="the log shrank: the broker witnessed 7 entries"):
        decide(log.head(5), latest=log.head(7), proof=None)


def test_a_rewritten_history_of_the_same_size_is_refused(log: Log, node_key: SigningKey) -> None:
    rewritten = Log(node_key, 40, tag=b"forged")
    with pytest.raises(LogInconsistent, match="another root"):
        decide(rewritten.head(7), latest=log.head(7), proof=None)


def test_a_rewritten_history_cannot_prove_consistency(log: Log, node_key: SigningKey) -> None:
    rewritten = Log(node_key, 40)
    rewritten.leaves[2] = leaf_hash(b"altered")
    with pytest.raises(LogInconsistent, match="consistency proof fails"):
        decide(rewritten.head(12), latest=log.head(7), proof=rewritten.proof(7, 12))


def test_a_tampered_proof_is_refused(log: Log) -> None:
    good = log.proof(7, 12)
    bad = dataclasses.replace(good, path=(bytes(32),) + good.path[1:])
    with pytest.raises(LogInconsistent, match="consistency proof fails"):
        decide(log.head(12), latest=log.head(7), proof=bad)


@pytest.mark.parametrize(
    ("proof", "message"),
    [
        (None, "a consistency proof from size 7"),
        (ConsistencyClaim(ORIGIN, 6, 12, ()), "starts at size 6"),
        (ConsistencyClaim(ORIGIN, 7, 11, ()), "ends at size 11"),
        (ConsistencyClaim(node_log_origin(RECIPIENT), 7, 12, ()), "another log"),
    ],
)
def test_a_growing_log_needs_a_proof_from_the_witnessed_size(
    log: Log, proof: ConsistencyClaim | None, message: str
) -> None:
    with pytest.raises(LogInconsistent, match=message):
        decide(log.head(12), latest=log.head(7), proof=proof)


# --- the head itself --------------------------------------------------------------------------


def test_the_callers_own_head_passes(log: Log, node_key: SigningKey) -> None:
    check_head(log.head(7), caller=OWNER, signing_public_key=node_key.public_key)


def test_a_head_signed_by_another_key_is_refused(node_key: SigningKey) -> None:
    impostor = Log(SigningKey.generate(), 10)
    with pytest.raises(TreeHeadInvalid, match="names a key other than"):
        check_head(impostor.head(7), caller=OWNER, signing_public_key=node_key.public_key)
    # Claiming the right key id does not help: the signature is over it.
    head = impostor.head(7)
    forged = dataclasses.replace(head, key_id=node_key.key_id)
    with pytest.raises(TreeHeadInvalid, match="signature does not verify"):
        check_head(forged, caller=OWNER, signing_public_key=node_key.public_key)


def test_another_nodes_log_is_refused(log: Log, node_key: SigningKey) -> None:
    with pytest.raises(NotAuthorized, match="its own log"):
        check_head(
            log.head(7, origin=node_log_origin(RECIPIENT)),
            caller=OWNER,
            signing_public_key=node_key.public_key,
        )
    with pytest.raises(NotAuthorized):  # nor may a node pass its log off as the broker's
        check_head(
            log.head(7, origin="accord/broker/broker"),
            caller=OWNER,
            signing_public_key=node_key.public_key,
        )


def test_a_malformed_head_is_refused(log: Log, node_key: SigningKey) -> None:
    head = log.head(7)
    with pytest.raises(TreeHeadInvalid, match="malformed"):
        check_head(
            dataclasses.replace(head, root_hash=b"short"),
            caller=OWNER,
            signing_public_key=node_key.public_key,
        )
    with pytest.raises(TreeHeadInvalid, match="empty tree"):
        check_head(
            SignedTreeHead.sign(
                node_key,
                origin=ORIGIN,
                tree_size=0,
                root_hash=bytes(32),
                timestamp=format_time(NOW),
            ),
            caller=OWNER,
            signing_public_key=node_key.public_key,
        )


# --- the cosignature ------------------------------------------------------------------------


def test_the_cosignature_verifies_and_fails_when_altered(log: Log) -> None:
    broker_key = SigningKey.generate()
    head = log.head(7)
    cosignature = WitnessCosignature.cosign(head, broker_key, witnessed_at=NOW)
    cosignature.verify(broker_key.public_key)
    assert cosignature.covers(head) and not cosignature.covers(log.head(8))
    altered = [
        dataclasses.replace(cosignature, tree_size=8),
        dataclasses.replace(cosignature, root_hash=bytes(32)),
        dataclasses.replace(cosignature, head_timestamp=format_time(NOW + timedelta(seconds=1))),
        dataclasses.replace(cosignature, witnessed_at=NOW + timedelta(microseconds=1)),
        dataclasses.replace(cosignature, origin=node_log_origin(RECIPIENT)),
    ]
    for forged in altered:
        with pytest.raises(InvalidAgreement):
            forged.verify(broker_key.public_key)
    with pytest.raises(InvalidAgreement):
        cosignature.verify(SigningKey.generate().public_key)


def test_a_witnessed_head_round_trips_through_the_wire(log: Log) -> None:
    broker_key = SigningKey.generate()
    head = log.head(7)
    cosignature = WitnessCosignature.cosign(head, broker_key, witnessed_at=NOW)
    back_head, back_cosignature = witnessed_head_from_proto(
        witnessed_head_to_proto(head, cosignature)
    )
    assert (back_head, back_cosignature) == (head, cosignature)
    back_cosignature.verify(broker_key.public_key)


# --- the store ------------------------------------------------------------------------------


def _witnessed(head: SignedTreeHead, previous: int, broker_key: SigningKey) -> WitnessedHead:
    return WitnessedHead(
        head, WitnessCosignature.cosign(head, broker_key, witnessed_at=NOW), previous
    )


def test_the_store_keeps_a_chain_of_heads_per_log(engine: Engine, log: Log) -> None:
    store = BrokerStore(engine)
    broker_key = SigningKey.generate()
    assert store.latest_witnessed(ORIGIN) is None
    chain = [(-1, 3), (3, 7), (7, 20)]
    for previous, size in chain:
        stored, created = store.save_witnessed(_witnessed(log.head(size), previous, broker_key))
        assert created and stored.head.tree_size == size
    latest = store.latest_witnessed(ORIGIN)
    assert latest is not None and latest.head == log.head(20)
    latest.cosignature.verify(broker_key.public_key)
    assert latest.witnessed_at == NOW
    assert [w.head.tree_size for w in store.witnessed_heads(ORIGIN, limit=10)] == [3, 7, 20]
    assert [w.head.tree_size for w in store.witnessed_heads(ORIGIN, limit=1, offset=1)] == [7]
    assert store.witnessed_count(ORIGIN) == 3
    assert store.witnessed_heads(node_log_origin(RECIPIENT), limit=10) == []


def test_two_heads_checked_against_the_same_predecessor_cannot_both_be_stored(
    engine: Engine, log: Log, node_key: SigningKey
) -> None:
    store = BrokerStore(engine)
    broker_key = SigningKey.generate()
    store.save_witnessed(_witnessed(log.head(7), -1, broker_key))
    store.save_witnessed(_witnessed(log.head(12), 7, broker_key))
    fork = Log(node_key, 40, tag=b"fork")
    with pytest.raises(WitnessRace):
        store.save_witnessed(_witnessed(fork.head(15), 7, broker_key))
    # The same head sent twice at once: the second call gets the first one's.
    again, created = store.save_witnessed(_witnessed(log.head(12), 7, broker_key))
    assert not created and again.head == log.head(12)
