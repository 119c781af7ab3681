"""Revocations: the checks (broker.revocations), retry timing, and the store."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from broker import BrokerStore
from broker._store import PENDING, RevocationRecord
from broker.errors import (
    AcknowledgementInvalid,
    NotAuthorized,
    RevocationConflict,
    RevocationInvalid,
    UnknownRevocation,
)
from broker.revocations import (
    MAX_RETRY_DELAY,
    check_ack,
    check_agreement_revocation,
    check_revocation,
    next_attempt_at,
)
from consent.agreements import Agreement
from consent.serde import revocation_to_proto
from consent.signed import AgreementRevocation, Revocation, RevocationAck
from kernel.crypto import random_bytes

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def revocation(parties: Any, agreement: Agreement, **changes: Any) -> Revocation:
    unsigned = Revocation(
        revocation_id=str(uuid.uuid4()),
        agreement_id=agreement.agreement_id,
        owner_node=agreement.owner.name,
        recipient_node=agreement.recipient.name,
        reason="consent_withdrawn",
        release_ids=(random_bytes(16), random_bytes(16)),
        all_releases=False,
        issued_at=NOW,
    )
    return dataclasses.replace(unsigned, **changes).signed(parties.owner.key)


def ack_of(parties: Any, revoked: Revocation, **changes: Any) -> RevocationAck:
    unsigned = RevocationAck(
        revocation_id=revoked.revocation_id,
        agreement_id=revoked.agreement_id,
        recipient_node=revoked.recipient_node,
        deleted_records=2,
        acknowledged_at=NOW,
    )
    return dataclasses.replace(unsigned, **changes).signed(parties.recipient.key)


# --- revocations of releases ----------------------------------------------------------------


def test_the_owners_signed_revocation_passes(parties: Any) -> None:
    agreement = parties.agreement()
    check_revocation(revocation(parties, agreement), agreement, caller=parties.owner.name)
    everything = revocation(
        parties, agreement, reason="agreement_revoked", release_ids=(), all_releases=True
    )
    check_revocation(everything, agreement, caller=parties.owner.name)


def test_only_the_owner_relays_its_own_revocations(parties: Any) -> None:
    agreement = parties.agreement()
    revoked = revocation(parties, agreement)
    with pytest.raises(NotAuthorized, match="issued itself"):
        check_revocation(revoked, agreement, caller=parties.recipient.name)
    # The recipient cannot pose as owner either: the agreement names who owns it.
    posed = revocation(parties, agreement, owner_node=parties.recipient.name)
    with pytest.raises(NotAuthorized, match="owner"):
        check_revocation(posed, agreement, caller=parties.recipient.name)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"revocation_id": "not-a-uuid"}, "canonical form"),
        ({"agreement_id": str(uuid.uuid4())}, "another agreement"),
        ({"recipient_node": "harbour-insurance"}, "addressed to the agreement's recipient"),
        ({"reason": "unspecified"}, "no known reason"),
        ({"all_releases": True}, "only a revoked agreement"),
        ({"release_ids": ()}, "names no release"),
        ({"release_ids": (b"short",)}, "16 random bytes"),
        ({"release_ids": (b"r" * 16, b"r" * 16)}, "twice"),
        (
            {"reason": "agreement_revoked", "all_releases": True},
            "lists no release ids",
        ),
    ],
)
def test_a_malformed_revocation_is_refused(
    parties: Any, changes: dict[str, Any], message: str
) -> None:
    agreement = parties.agreement()
    with pytest.raises(RevocationInvalid, match=message):
        check_revocation(
            revocation(parties, agreement, **changes), agreement, caller="solent-boats"
        )


def test_a_revocation_not_signed_by_the_owner_key_is_refused(parties: Any) -> None:
    agreement = parties.agreement()
    signed = revocation(parties, agreement)
    forged = dataclasses.replace(signed, owner_signature=b"").signed(parties.stranger.key)
    with pytest.raises(RevocationInvalid, match="owner key of the agreement"):
        check_revocation(forged, agreement, caller=parties.owner.name)
    altered = dataclasses.replace(signed, release_ids=signed.release_ids[:1])
    with pytest.raises(RevocationInvalid, match="does not verify"):
        check_revocation(altered, agreement, caller=parties.owner.name)


def test_the_recipients_ack_must_fit_and_verify(parties: Any) -> None:
    agreement = parties.agreement()
    revoked = revocation(parties, agreement)
    check_ack(ack_of(parties, revoked), revoked, agreement)
    with pytest.raises(AcknowledgementInvalid, match="another revocation"):
        check_ack(ack_of(parties, revoked, revocation_id=str(uuid.uuid4())), revoked, agreement)
    with pytest.raises(AcknowledgementInvalid, match="another revocation"):
        check_ack(ack_of(parties, revoked, recipient_node="harbour-insurance"), revoked, agreement)
    by_owner = dataclasses.replace(ack_of(parties, revoked), recipient_signature=b"").signed(
        parties.owner.key
    )
    with pytest.raises(AcknowledgementInvalid, match="recipient key"):
        check_ack(by_owner, revoked, agreement)
    inflated = dataclasses.replace(ack_of(parties, revoked), deleted_records=99)
    with pytest.raises(AcknowledgementInvalid):
        check_ack(inflated, revoked, agreement)


# --- revocations of agreements --------------------------------------------------------------


def agreement_revocation(party: Any, agreement: Agreement, **changes: Any) -> AgreementRevocation:
    unsigned = AgreementRevocation(agreement.agreement_id, party.name, "contract ended", NOW)
    return dataclasses.replace(unsigned, **changes).signed(party.key)


def test_either_party_revokes_an_agreement_in_its_own_name(parties: Any) -> None:
    agreement = parties.agreement()
    for party in (parties.owner, parties.recipient):
        check_agreement_revocation(
            agreement_revocation(party, agreement), agreement, caller=party.name
        )
    with pytest.raises(NotAuthorized, match="its own name"):
        check_agreement_revocation(
            agreement_revocation(parties.owner, agreement), agreement, caller=parties.recipient.name
        )


def test_a_stranger_or_a_forged_signature_cannot_revoke(parties: Any) -> None:
    agreement = parties.agreement()
    with pytest.raises(RevocationInvalid, match="only a party"):
        check_agreement_revocation(
            agreement_revocation(parties.stranger, agreement), agreement, caller="harbour-insurance"
        )
    forged = agreement_revocation(parties.stranger, agreement, node_name=parties.owner.name)
    with pytest.raises(RevocationInvalid, match="owner key"):
        check_agreement_revocation(forged, agreement, caller=parties.owner.name)
    other = agreement_revocation(parties.owner, agreement, agreement_id=str(uuid.uuid4()))
    with pytest.raises(RevocationInvalid, match="another agreement"):
        check_agreement_revocation(other, agreement, caller=parties.owner.name)


# --- retrying -------------------------------------------------------------------------------


def test_retries_back_off_from_two_seconds_to_a_minute() -> None:
    assert next_attempt_at(0, None) is None  # never tried: due at once
    delays = [next_attempt_at(n, NOW) for n in (1, 2, 3, 4, 5, 6, 7, 50)]
    assert [(d - NOW).total_seconds() for d in delays if d is not None] == [
        2,
        4,
        8,
        16,
        32,
        60,
        60,
        60,
    ]
    assert MAX_RETRY_DELAY == timedelta(minutes=1)


# --- the store ------------------------------------------------------------------------------


def record_of(revoked: Revocation, **changes: Any) -> RevocationRecord:
    values: dict[str, Any] = {
        "revocation_id": revoked.revocation_id,
        "agreement_id": revoked.agreement_id,
        "owner": revoked.owner_node,
        "recipient": revoked.recipient_node,
        "message": revocation_to_proto(revoked).SerializeToString(deterministic=True),
        "relayed_at": NOW,
        "ack": None,
        "delivery_attempts": 0,
        "last_attempt_at": None,
        "state": PENDING,
    }
    values.update(changes)
    return RevocationRecord(**values)


def test_the_store_keeps_revocations_until_acknowledged(engine: Engine, parties: Any) -> None:
    store = BrokerStore(engine)
    agreement = parties.agreement()
    first = revocation(parties, agreement)
    second = revocation(parties, agreement)
    stored, created = store.add_revocation(record_of(first))
    assert created and stored.pending
    again, created = store.add_revocation(record_of(first, relayed_at=NOW + timedelta(hours=1)))
    assert not created and again == stored  # idempotent on id and bytes
    changed = revocation(parties, agreement, revocation_id=first.revocation_id)
    with pytest.raises(RevocationConflict, match="other content"):
        store.add_revocation(record_of(changed))
    store.add_revocation(record_of(second, relayed_at=NOW + timedelta(seconds=1)))

    tried = store.record_attempt(first.revocation_id, now=NOW + timedelta(seconds=5))
    assert tried.delivery_attempts == 1 and tried.last_attempt_at == NOW + timedelta(seconds=5)
    pending = store.pending_revocations(recipient=agreement.recipient.name)
    assert [r.revocation_id for r in pending] == [first.revocation_id, second.revocation_id]
    assert store.pending_revocations(recipient=agreement.owner.name) == []
    assert len(store.pending_revocations(limit=1, offset=1)) == 1

    acked, stored_now = store.acknowledge(first.revocation_id, ack=b"ack-1")
    assert stored_now and acked.state == "acknowledged" and acked.ack == b"ack-1"
    kept, stored_now = store.acknowledge(first.revocation_id, ack=b"ack-2")
    assert not stored_now and kept.ack == b"ack-1"  # the first ack stays
    assert [r.revocation_id for r in store.pending_revocations()] == [second.revocation_id]
    with pytest.raises(UnknownRevocation):
        store.revocation(str(uuid.uuid4()))


def test_a_revoked_agreement_keeps_its_first_revocation(engine: Engine, parties: Any) -> None:
    store = BrokerStore(engine)
    agreement = parties.agreement()
    store.save_agreement(
        parties.signed(agreement),
        owner=agreement.owner.name,
        recipient=agreement.recipient.name,
        now=NOW,
        active=True,
    )
    record, revoked = store.revoke_agreement(
        agreement.agreement_id, revocation=b"first", now=NOW + timedelta(minutes=1)
    )
    assert revoked and record.revoked_at == NOW + timedelta(minutes=1)
    assert record.revocation == b"first"
    record, revoked = store.revoke_agreement(
        agreement.agreement_id, revocation=b"second", now=NOW + timedelta(minutes=2)
    )
    assert not revoked and record.revocation == b"first"
    assert record.revoked_at == NOW + timedelta(minutes=1)
