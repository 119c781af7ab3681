"""The consent ledger against real databases: recording, idempotency, erasure, signed heads.

Most tests take ``db_url`` and so run on SQLite and PostgreSQL. The property test at the
end checks, on SQLite, that ``Ledger.valid_subjects`` (SQL picks each subject's latest
candidate event) answers exactly what ``consent.model.decide`` answers over each
subject's full history (``Ledger.events_of``); a fixed scenario checks the same parity
on both backends.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

import consent.model
from consent import (
    ANY_RECIPIENT,
    PURPOSES,
    Channel,
    CollectionMethod,
    ConsentEvent,
    ConsentStatus,
    EventType,
    Ledger,
    NewConsentEvent,
    Notice,
    decide,
    migrate_ledger,
    states_of,
    verify_log,
)
from consent.errors import (
    ConsentError,
    EventConflict,
    InvalidConsentEvent,
    LedgerTampered,
    SubjectNotFound,
)
from consent.merkle import root_hash
from kernel.crypto import SigningKey
from kernel.db import create_db_engine, database_url

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ORIGIN = "accord/node/solent-boats"
CROSS_SELL = "marketing.cross_sell"
DIRECT = "marketing.direct"
BLUEWATER = "bluewater-travel"
SOLENT = "solent-boats"
RECIPIENTS = (BLUEWATER, SOLENT, ANY_RECIPIENT)
NOTICE = Notice("https://solent-boats.example/privacy/offers", "3", "ab" * 32, "en-GB")
MICROSECOND = timedelta(microseconds=1)
GRANTS = (EventType.GIVEN, EventType.RENEWED)


class Clock:
    """The ledger's injected clock: a fixed time that a test can move."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def consent_event(
    event_type: EventType = EventType.GIVEN,
    *,
    recipient: str = BLUEWATER,
    at: datetime = T0 - timedelta(days=1),
    channels: tuple[Channel, ...] = (Channel.EMAIL,),
    expires_at: datetime | None = None,
    purpose_id: str = CROSS_SELL,
) -> NewConsentEvent:
    """A well-formed event; only grants and requests carry channels and a notice."""
    offered = event_type in GRANTS or event_type is EventType.REQUESTED
    return NewConsentEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        purpose=purpose_id,
        recipient=recipient,
        collected_at=at,
        collection_method=CollectionMethod.WEB_FORM,
        actor="crm-sync",
        channels=channels if offered else (),
        notice=NOTICE if offered else None,
        expires_at=expires_at,
    )


def withdrawal(**changes: Any) -> NewConsentEvent:
    return consent_event(EventType.WITHDRAWN, **changes)


def open_ledger(
    engine: Engine, key: SigningKey | None, clock: Clock, *, origin: str = ORIGIN
) -> Ledger:
    return Ledger(engine, origin=origin, controller="solent-boats", signing_key=key, now=clock)


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    migrate_ledger(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def ledger(engine: Engine, key: SigningKey, clock: Clock) -> Ledger:
    return open_ledger(engine, key, clock)


def check_latest_head(ledger: Ledger, key: SigningKey) -> None:
    """The log ends in a head for its whole size, signed by the key, over its leaves."""
    head = ledger.latest_head()
    assert head is not None
    head.verify(key.public_key)
    assert head.tree_size == ledger.size()
    assert head.root_hash == root_hash(ledger.leaf_hashes())
    assert head.origin == ORIGIN
    assert head.key_id == key.key_id
    report = verify_log(ledger.engine, public_key=key.public_key)
    assert report.entries == ledger.size()
    assert report.latest_head == head


def count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(sql), params).scalar_one())


def expected_valid(
    ledger: Ledger,
    externals: list[str],
    *,
    purpose_id: str,
    recipient: str,
    now: datetime,
    need_channel: bool,
) -> dict[str, tuple[Channel, ...]]:
    """What ``valid_subjects`` must answer: the domain rule over each full history."""
    valid = {}
    for external_id in externals:
        try:
            pseudonym = ledger.pseudonym_for(external_id)
        except SubjectNotFound:
            continue
        state = decide(
            ledger.events_of(pseudonym), purpose=purpose_id, recipient=recipient, now=now
        )
        if state.valid and (state.channels or not need_channel):
            valid[external_id] = state.channels
    return valid


def check_parity(ledger: Ledger, externals: list[str], moments: list[datetime]) -> None:
    """``valid_subjects`` answers what ``decide`` does at every moment, and the horizon
    ``valid_subjects_until`` gives holds: no moment before it has another answer."""
    answers: dict[tuple[Any, ...], list[tuple[datetime, Any, datetime | None]]] = {}
    for now in moments:
        for purpose_id in (CROSS_SELL, DIRECT):
            for recipient in RECIPIENTS:
                for need_channel in (False, True):
                    found, until = ledger.valid_subjects_until(
                        purpose=purpose_id, recipient=recipient, now=now, need_channel=need_channel
                    )
                    assert until is None or until > now
                    answers.setdefault((purpose_id, recipient, need_channel), []).append(
                        (now, found, until)
                    )
                    wanted = expected_valid(
                        ledger,
                        externals,
                        purpose_id=purpose_id,
                        recipient=recipient,
                        now=now,
                        need_channel=need_channel,
                    )
                    assert found == wanted, (now, purpose_id, recipient, need_channel)
                    # Deciding a few subjects answers as the whole does for them, and their
                    # horizon is never earlier than the whole's.
                    for few in (externals[::2], externals[-1:]):
                        part, part_until = ledger.valid_subjects_until(
                            purpose=purpose_id,
                            recipient=recipient,
                            now=now,
                            need_channel=need_channel,
                            subjects=few,
                        )
                        assert part == {k: v for k, v in found.items() if k in few}
                        assert part_until is None or (until is not None and part_until >= until)
                        answers.setdefault((purpose_id, recipient, need_channel, *few), []).append(
                            (now, part, part_until)
                        )
    for question, seen in answers.items():
        for asked_at, found, until in seen:
            for other_at, other, _ in seen:
                if asked_at <= other_at and (until is None or other_at < until):
                    assert other == found, (question, asked_at, other_at, until)


# --- recording ---------------------------------------------------------------------------


def test_an_empty_ledger(ledger: Ledger) -> None:
    assert ledger.size() == 0
    assert ledger.latest_head() is None
    assert ledger.valid_subjects(purpose=CROSS_SELL, recipient=BLUEWATER, now=T0) == {}
    with pytest.raises(SubjectNotFound):
        ledger.pseudonym_for("crm-0001")


def test_recorded_events_come_back_with_leaf_indices_and_pseudonyms(
    ledger: Ledger, key: SigningKey
) -> None:
    grant = consent_event(
        channels=(Channel.SMS, Channel.EMAIL),
        at=datetime(2026, 2, 28, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        expires_at=T0 + timedelta(days=365),
    )
    other = consent_event(recipient=ANY_RECIPIENT, purpose_id=DIRECT)
    third = withdrawal(at=T0 - timedelta(hours=1))
    recorded = ledger.record([("crm-0001", grant), ("crm-0002", other), ("crm-0001", third)])
    assert [e.leaf_index for e in recorded] == [0, 1, 2]
    assert [e.event_id for e in recorded] == [grant.event_id, other.event_id, third.event_id]
    first = recorded[0]
    assert first.subject == recorded[2].subject == ledger.pseudonym_for("crm-0001")
    assert recorded[1].subject == ledger.pseudonym_for("crm-0002") != first.subject
    assert first.event_type is EventType.GIVEN
    assert first.purpose == CROSS_SELL
    assert first.purpose_version == PURPOSES[CROSS_SELL].version
    assert first.recipient == BLUEWATER
    assert first.channels == (Channel.EMAIL, Channel.SMS)  # one order, whatever was sent
    assert first.collected_at == datetime(2026, 2, 28, 12, 0, tzinfo=UTC)
    assert first.collected_at.utcoffset() == timedelta(0)
    assert first.expires_at == T0 + timedelta(days=365)
    assert first.recorded_at == T0
    assert first.notice == NOTICE
    assert first.collection_method is CollectionMethod.WEB_FORM
    assert first.actor == "crm-sync"
    check_latest_head(ledger, key)
    # A later batch continues the log.
    (fourth,) = ledger.record([("crm-0003", consent_event())])
    assert fourth.leaf_index == 3
    assert ledger.size() == 4
    check_latest_head(ledger, key)


HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "blake2b", "blake2s")


def test_pseudonyms_are_random_hex_not_derived_from_the_external_id(
    ledger: Ledger, engine: Engine, tmp_path: Path, key: SigningKey
) -> None:
    external_id = "CRM-0001-alice"
    (recorded,) = ledger.record([(external_id, consent_event())])
    pseudonym = recorded.subject
    assert re.fullmatch(r"[0-9a-f]{32}", pseudonym)
    for candidate in {external_id, external_id.lower(), external_id.upper()}:
        assert candidate.lower() not in pseudonym
        for name in HASHES:
            digest = hashlib.new(name, candidate.encode()).hexdigest()
            assert pseudonym not in digest, name  # not the hash, nor a truncation of it
    # No record in the log names the external id; they name the pseudonym.
    with engine.connect() as connection:
        records = [
            bytes(r) for (r,) in connection.execute(text("SELECT record FROM audit_records"))
        ]
    assert records
    assert all(external_id.encode() not in record for record in records)
    assert all(pseudonym.encode() in record for record in records)
    # Random, so another node (another database) gives the same customer another one.
    elsewhere = create_db_engine(database_url(str(tmp_path / "other.db")))
    try:
        migrate_ledger(elsewhere)
        other = open_ledger(elsewhere, key, Clock(T0))
        (there,) = other.record([(external_id, consent_event())])
        assert re.fullmatch(r"[0-9a-f]{32}", there.subject)
        assert there.subject != pseudonym
    finally:
        elsewhere.dispose()


def test_recording_needs_the_signing_key(engine: Engine, clock: Clock) -> None:
    reader = open_ledger(engine, None, clock)
    with pytest.raises(ConsentError, match="signing key"):
        reader.record([("crm-0001", consent_event())])
    assert reader.size() == 0
    with pytest.raises(SubjectNotFound):
        reader.pseudonym_for("crm-0001")


def test_a_log_of_another_origin_is_refused(ledger: Ledger, key: SigningKey) -> None:
    ledger.record([("crm-0001", consent_event())])
    stranger = Ledger(
        ledger.engine,
        origin="accord/node/other",
        controller="other",
        signing_key=key,
        now=Clock(T0),
    )
    with pytest.raises(ConsentError, match="audit log is"):
        stranger.record([("crm-0002", consent_event())])
    assert ledger.size() == 1


def test_an_invalid_event_writes_nothing(ledger: Ledger) -> None:
    good = consent_event()
    future = consent_event(at=T0 + timedelta(hours=1))  # the ledger's clock says T0
    with pytest.raises(InvalidConsentEvent, match="in the future"):
        ledger.record([("crm-0001", good), ("crm-0002", future)])
    assert ledger.size() == 0
    with pytest.raises(SubjectNotFound):
        ledger.pseudonym_for("crm-0001")


# --- idempotency -------------------------------------------------------------------------


def test_the_same_event_twice_is_recorded_once(ledger: Ledger, key: SigningKey) -> None:
    grant = consent_event(expires_at=T0 + timedelta(days=30))
    (first,) = ledger.record([("crm-0001", grant)])
    head = ledger.latest_head()
    (again,) = ledger.record([("crm-0001", grant)])
    assert again == first
    # The same instant written in another zone is the same content.
    plus_two = timezone(timedelta(hours=2))
    same_instant = replace(grant, collected_at=grant.collected_at.astimezone(plus_two))
    assert ledger.record([("crm-0001", same_instant)]) == [first]
    assert ledger.size() == 1
    assert ledger.latest_head() == head
    assert ledger.events_of(first.subject) == [first]
    check_latest_head(ledger, key)


@pytest.mark.parametrize(
    "changes",
    [
        {"recipient": SOLENT},
        {"channels": (Channel.POST,)},
        {"collected_at": T0 - timedelta(days=1, microseconds=1)},
        {"expires_at": T0 + timedelta(days=31)},
        {"event_type": EventType.RENEWED},
        {"actor": "someone-else"},
        {"notice": replace(NOTICE, version="4")},
    ],
    ids=["recipient", "channels", "collected_at", "expires_at", "type", "actor", "notice"],
)
def test_the_same_event_id_with_other_content_conflicts(
    ledger: Ledger, changes: dict[str, Any]
) -> None:
    grant = consent_event(expires_at=T0 + timedelta(days=30))
    (first,) = ledger.record([("crm-0001", grant)])
    with pytest.raises(EventConflict):
        ledger.record([("crm-0001", replace(grant, **changes))])
    assert ledger.size() == 1
    assert ledger.events_of(first.subject) == [first]


def test_the_same_event_id_for_another_subject_conflicts(ledger: Ledger) -> None:
    grant = consent_event()
    ledger.record([("crm-0001", grant)])
    with pytest.raises(EventConflict):
        ledger.record([("crm-0002", grant)])
    assert ledger.size() == 1
    with pytest.raises(SubjectNotFound):  # the batch rolled back, subject and all
        ledger.pseudonym_for("crm-0002")


def test_a_duplicate_inside_one_batch_is_recorded_once(ledger: Ledger, key: SigningKey) -> None:
    grant = consent_event()
    other = consent_event(recipient=SOLENT)
    recorded = ledger.record([("crm-0001", grant), ("crm-0001", other), ("crm-0001", grant)])
    assert len(recorded) == 3
    assert recorded[0] == recorded[2]
    assert [e.leaf_index for e in recorded] == [0, 1, 0]
    assert ledger.size() == 2
    check_latest_head(ledger, key)


def test_a_conflict_inside_one_batch_writes_nothing(ledger: Ledger) -> None:
    grant = consent_event()
    with pytest.raises(EventConflict):
        ledger.record([("crm-0001", grant), ("crm-0001", replace(grant, recipient=SOLENT))])
    assert ledger.size() == 0
    with pytest.raises(SubjectNotFound):
        ledger.pseudonym_for("crm-0001")


def test_a_conflict_with_the_log_rolls_back_the_whole_batch(ledger: Ledger) -> None:
    grant = consent_event()
    ledger.record([("crm-0001", grant)])
    head = ledger.latest_head()
    fresh = consent_event(recipient=SOLENT)
    with pytest.raises(EventConflict):
        ledger.record([("crm-0002", fresh), ("crm-0001", replace(grant, channels=()))])
    assert ledger.size() == 1
    assert ledger.latest_head() == head
    with pytest.raises(SubjectNotFound):
        ledger.pseudonym_for("crm-0002")


_ID = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")


@pytest.mark.parametrize(
    "spelling",
    [str(_ID).upper(), "{" + str(_ID) + "}", _ID.urn, _ID.hex],
    ids=["upper-case", "braces", "urn", "no-hyphens"],
)
def test_one_uuid_in_another_spelling_is_not_a_second_event(ledger: Ledger, spelling: str) -> None:
    # Event ids are idempotency keys. Either the spelling is refused, or it is the same
    # event; never a second event (nor a database error for a longer spelling).
    grant = replace(consent_event(), event_id=str(_ID))
    (first,) = ledger.record([("crm-0001", grant)])
    try:
        again = ledger.record([("crm-0001", replace(grant, event_id=spelling))])
    except ConsentError:
        pass
    else:
        assert again == [first]
    assert ledger.size() == 1


# --- reading a subject's events and states ----------------------------------------------


def test_events_of_and_states(ledger: Ledger, clock: Clock) -> None:
    expires_at = T0 + timedelta(days=1)
    ledger.record(
        [
            ("crm-0001", consent_event(at=T0 - timedelta(days=3), expires_at=expires_at)),
            ("crm-0002", consent_event()),
            ("crm-0001", consent_event(recipient=SOLENT, at=T0 - timedelta(days=3))),
        ]
    )
    # Collected earlier but recorded later: log order, not collection order.
    ledger.record(
        [
            ("crm-0001", withdrawal(recipient=SOLENT, at=T0 - timedelta(days=2))),
            ("crm-0001", consent_event(purpose_id=DIRECT, at=T0 - timedelta(days=4))),
        ]
    )
    pseudonym = ledger.pseudonym_for("crm-0001")
    events = ledger.events_of(pseudonym)
    assert [e.leaf_index for e in events] == [0, 2, 3, 4]
    assert {e.subject for e in events} == {pseudonym}
    assert [(s.purpose, s.recipient, s.status) for s in ledger.states(pseudonym)] == [
        (CROSS_SELL, BLUEWATER, ConsentStatus.VALID),
        (CROSS_SELL, SOLENT, ConsentStatus.WITHDRAWN),
        (DIRECT, BLUEWATER, ConsentStatus.VALID),
    ]
    assert ledger.states(pseudonym) == states_of(events, now=T0)
    later = expires_at + timedelta(hours=1)
    assert ledger.states(pseudonym, now=later) == states_of(events, now=later)
    clock.now = later  # without ``now`` the ledger's clock decides
    assert ledger.states(pseudonym)[0].status is ConsentStatus.EXPIRED
    assert ledger.events_of("0" * 32) == []


# --- erasure -----------------------------------------------------------------------------


def test_erasure_shreds_the_subject_and_logs_it(
    ledger: Ledger, engine: Engine, key: SigningKey
) -> None:
    external_id = "crm-0001-alice"
    recorded = ledger.record(
        [
            (external_id, consent_event()),
            ("crm-0002-bob", consent_event()),
            (external_id, consent_event(recipient=SOLENT)),
        ]
    )
    pseudonym = recorded[0].subject
    with engine.connect() as connection:
        salts = {
            bytes(s)
            for (s,) in connection.execute(
                text("SELECT salt FROM audit_records WHERE subject = :s"), {"s": pseudonym}
            )
        }
    assert len(salts) == 2

    result = ledger.erase(external_id, actor="dpo@solent-boats", reason="GDPR 17 request")

    assert result.subject == pseudonym
    assert result.erased_entries == 2
    result.tree_head.verify(key.public_key)
    assert result.tree_head.tree_size == ledger.size() == 4
    assert result.tree_head == ledger.latest_head()
    check_latest_head(ledger, key)
    # Records and salts gone, consent_events rows gone, the external id cleared.
    by_subject = {"s": pseudonym}
    assert count(engine, "SELECT count(*) FROM audit_records WHERE subject = :s", **by_subject) == 0
    assert (
        count(engine, "SELECT count(*) FROM consent_events WHERE subject = :s", **by_subject) == 0
    )
    with engine.connect() as connection:
        remaining_salts = {
            bytes(s) for (s,) in connection.execute(text("SELECT salt FROM audit_records"))
        }
        subject = connection.execute(
            text("SELECT external_id, erased_at FROM consent_subjects WHERE pseudonym = :s"),
            by_subject,
        ).one()
        entry = connection.execute(
            text(
                "SELECT e.kind, r.subject, r.record FROM audit_entries e "
                "JOIN audit_records r ON r.leaf_index = e.leaf_index WHERE e.leaf_index = 3"
            )
        ).one()
    assert not salts & remaining_salts
    assert subject.external_id is None
    assert subject.erased_at is not None
    # The log keeps every entry and gains one that says what happened, without identifiers.
    assert count(engine, "SELECT count(*) FROM audit_entries") == 4
    assert entry.kind == "erasure"
    assert entry.subject is None
    erasure = json.loads(bytes(entry.record))
    assert erasure["subject"] == pseudonym
    assert erasure["erased_entries"] == 2
    assert erasure["actor"] == "dpo@solent-boats"
    assert erasure["reason"] == "GDPR 17 request"
    assert external_id.encode() not in bytes(entry.record)
    report = verify_log(engine, public_key=key.public_key)
    assert report.erased_entries == 2
    # Nothing of the subject can be found any more; the other subject is untouched.
    with pytest.raises(SubjectNotFound):
        ledger.pseudonym_for(external_id)
    assert ledger.events_of(pseudonym) == []
    assert ledger.states(pseudonym) == []
    assert ledger.events_of(recorded[1].subject) == [recorded[1]]
    valid = ledger.valid_subjects(purpose=CROSS_SELL, recipient=BLUEWATER, now=T0)
    assert valid == {"crm-0002-bob": (Channel.EMAIL,)}
    with pytest.raises(SubjectNotFound):
        ledger.erase(external_id, actor="dpo", reason="again")
    with pytest.raises(SubjectNotFound):
        ledger.erase("crm-9999", actor="dpo", reason="never seen")
    assert ledger.size() == 4


def test_a_new_consent_after_erasure_gets_a_new_pseudonym(ledger: Ledger, key: SigningKey) -> None:
    external_id = "crm-0001-alice"
    (old,) = ledger.record([(external_id, consent_event())])
    ledger.erase(external_id, actor="dpo", reason="request")
    (new,) = ledger.record([(external_id, consent_event(recipient=SOLENT))])
    assert new.subject != old.subject
    assert re.fullmatch(r"[0-9a-f]{32}", new.subject)
    assert ledger.pseudonym_for(external_id) == new.subject
    assert ledger.events_of(new.subject) == [new]
    assert ledger.events_of(old.subject) == []
    assert ledger.valid_subjects(purpose=CROSS_SELL, recipient=BLUEWATER, now=T0) == {}
    assert ledger.valid_subjects(purpose=CROSS_SELL, recipient=SOLENT, now=T0) == {
        external_id: (Channel.EMAIL,)
    }
    check_latest_head(ledger, key)


# --- signed tree heads -------------------------------------------------------------------


def test_every_append_ends_in_a_signed_head_for_the_whole_log(
    ledger: Ledger, key: SigningKey, clock: Clock
) -> None:
    sizes = []
    ledger.record([("crm-0001", consent_event())])
    check_latest_head(ledger, key)
    sizes.append(ledger.size())
    clock.now = T0 + timedelta(minutes=1)
    ledger.record([("crm-0002", consent_event()), ("crm-0003", consent_event())])
    check_latest_head(ledger, key)
    sizes.append(ledger.size())
    clock.now = T0 + timedelta(minutes=2)
    ledger.erase("crm-0002", actor="dpo", reason="request")
    check_latest_head(ledger, key)
    sizes.append(ledger.size())
    assert sizes == [1, 3, 4]
    heads = list(ledger.iter_heads())
    assert [h.tree_size for h in heads] == sizes
    leaves = ledger.leaf_hashes()
    for head, when in zip(
        heads, (T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)), strict=True
    ):
        head.verify(key.public_key)
        assert head.root_hash == root_hash(leaves[: head.tree_size])
        assert head.timestamp == when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert ledger.head_at(head.tree_size) == head
    latest = heads[-1]
    with pytest.raises(LedgerTampered):
        latest.verify(SigningKey.generate().public_key)
    with pytest.raises(LedgerTampered):
        replace(latest, tree_size=latest.tree_size - 1).verify(key.public_key)
    with pytest.raises(LedgerTampered):
        replace(latest, root_hash=bytes(32)).verify(key.public_key)


# --- valid_subjects: a fixed scenario, on both backends ----------------------------------

PLUS_TWO = timezone(timedelta(hours=2))


def record_scenario(ledger: Ledger, clock: Clock) -> None:
    """One history per external id; ``test_valid_subjects_in_a_fixed_scenario`` explains."""
    days = timedelta(days=1)
    ledger.record(
        [
            ("c01", consent_event(channels=(Channel.EMAIL, Channel.SMS), at=T0 - 10 * days)),
            (
                "c02",
                consent_event(recipient=ANY_RECIPIENT, channels=(Channel.POST,), at=T0 - 10 * days),
            ),
            ("c03", consent_event(at=T0 - 10 * days)),
            ("c03", consent_event(recipient=SOLENT, at=T0 - 10 * days)),
            ("c04", consent_event(channels=())),
            ("c05", consent_event(at=T0 - 10 * days, expires_at=T0)),
            # c06 and c07: the same collection time, so the log position decides.
            ("c06", consent_event(at=T0 - timedelta(hours=1))),
            ("c06", withdrawal(at=T0 - timedelta(hours=1))),
            ("c07", withdrawal(at=T0 - timedelta(hours=1))),
            ("c07", consent_event(at=T0 - timedelta(hours=1))),
            ("c08", consent_event(at=T0 + timedelta(minutes=1))),  # within the clock skew
            ("c09", consent_event()),
            ("c10", consent_event()),
            ("c11", consent_event(recipient=ANY_RECIPIENT, purpose_id=DIRECT)),
            # 11:30+02:00 is 09:30Z, before the grant at 10:00Z: the grant decides.
            ("c12", consent_event(at=T0 - timedelta(hours=2))),
            ("c12", withdrawal(at=datetime(2026, 3, 1, 11, 30, tzinfo=PLUS_TWO))),
            ("c13", consent_event(at=T0 - 10 * days, expires_at=T0 + 30 * days)),
            ("c13", consent_event(EventType.REQUESTED, at=T0 - 3 * days)),
        ]
    )
    ledger.record(
        [
            ("c02", consent_event(EventType.REFUSED, at=T0 - 5 * days)),
            ("c03", withdrawal(recipient=ANY_RECIPIENT, at=T0 - days)),
        ]
    )
    ledger.erase("c09", actor="dpo", reason="request")
    ledger.erase("c10", actor="dpo", reason="request")
    ledger.record([("c10", consent_event(recipient=SOLENT, channels=(Channel.PHONE,)))])


SCENARIO = [f"c{i:02}" for i in range(1, 14)]


def test_valid_subjects_in_a_fixed_scenario(ledger: Ledger, clock: Clock) -> None:
    record_scenario(ledger, clock)
    email, sms, post, phone = Channel.EMAIL, Channel.SMS, Channel.POST, Channel.PHONE

    def valid(recipient: str, *, now: datetime = T0, need_channel: bool = False) -> dict[str, Any]:
        return ledger.valid_subjects(
            purpose=CROSS_SELL, recipient=recipient, now=now, need_channel=need_channel
        )

    # c01 granted; c02's grant to any partner is overridden for Bluewater by a refusal;
    # c03 withdrew from everyone; c04 accepts no channel; c05 expired at T0; c06 withdrew
    # at the same instant, after; c07 granted at the same instant, after; c08 is in the
    # future; c09 erased; c10 erased, then consented to Solent only; c11 gave another
    # purpose; c12's withdrawal came before its grant; c13 was shown a notice again.
    assert valid(BLUEWATER) == {"c01": (email, sms), "c04": (), "c07": (email,), "c12": (email,)}
    assert valid(BLUEWATER, need_channel=True) == {
        "c01": (email, sms),
        "c07": (email,),
        "c12": (email,),
    }
    assert valid(SOLENT) == {"c02": (post,), "c10": (phone,)}
    assert valid(ANY_RECIPIENT) == {"c02": (post,)}
    assert valid(BLUEWATER, now=T0 - MICROSECOND)["c05"] == (email,)
    assert "c08" in valid(BLUEWATER, now=T0 + timedelta(minutes=1))
    earlier = T0 - timedelta(days=2)
    assert set(valid(BLUEWATER, now=earlier)) == {"c01", "c03", "c05"}
    assert set(valid(SOLENT, now=earlier)) == {"c02", "c03"}
    assert ledger.valid_subjects(purpose=DIRECT, recipient=SOLENT, now=T0) == {"c11": (email,)}
    # A ``now`` in another zone is the same instant.
    assert valid(BLUEWATER, now=T0.astimezone(PLUS_TWO)) == valid(BLUEWATER)


def test_valid_subjects_agrees_with_decide_in_a_fixed_scenario(
    ledger: Ledger, clock: Clock
) -> None:
    record_scenario(ledger, clock)
    moments = [
        T0 - timedelta(days=11),
        T0 - timedelta(days=2),
        T0 - timedelta(hours=1) - MICROSECOND,
        T0 - timedelta(hours=1),
        T0 - MICROSECOND,
        T0,
        T0 + timedelta(minutes=1),
        T0 + timedelta(days=60),
    ]
    check_parity(ledger, SCENARIO, moments)


def test_a_new_purpose_version_invalidates_earlier_consents(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    (grant,) = ledger.record([("crm-0001", consent_event())])
    assert ledger.valid_subjects(purpose=CROSS_SELL, recipient=BLUEWATER, now=T0) == {
        "crm-0001": (Channel.EMAIL,)
    }
    bumped = replace(PURPOSES[CROSS_SELL], version=PURPOSES[CROSS_SELL].version + 1)
    monkeypatch.setattr(consent.model, "PURPOSES", MappingProxyType({CROSS_SELL: bumped}))
    assert ledger.valid_subjects(purpose=CROSS_SELL, recipient=BLUEWATER, now=T0) == {}
    (state,) = ledger.states(grant.subject)
    assert state.status is ConsentStatus.INVALIDATED


# --- valid_subjects: the property, on SQLite ---------------------------------------------

EXTERNALS = ["crm-a", "crm-b", "crm-c"]
ZONES = [UTC, PLUS_TWO, timezone(timedelta(hours=-5, minutes=-30))]
CLOCK = T0 + timedelta(minutes=30)  # the ledger's clock: every event is in its past


@st.composite
def moments(draw: st.DrawFn) -> datetime:
    """A time on a coarse grid (so ties and expiries at ``now`` happen), in some zone."""
    moment = T0 + timedelta(minutes=draw(st.integers(0, 12)))
    moment += draw(st.sampled_from([timedelta(0), timedelta(0), MICROSECOND, -MICROSECOND]))
    return moment.astimezone(draw(st.sampled_from(ZONES)))


@st.composite
def collection_times(draw: st.DrawFn) -> datetime:
    """A coarser grid than ``moments``: two events of a subject often share an instant."""
    moment = T0 + timedelta(minutes=draw(st.integers(0, 5)))
    moment += draw(st.sampled_from([timedelta(0), timedelta(0), timedelta(0), MICROSECOND]))
    return moment.astimezone(draw(st.sampled_from(ZONES)))


@st.composite
def submissions(draw: st.DrawFn) -> tuple[str, NewConsentEvent]:
    event_type = draw(st.sampled_from(EventType))
    collected_at = draw(collection_times())
    expires_at = None
    if draw(st.booleans()):
        expires_at = collected_at + timedelta(minutes=draw(st.integers(1, 8)))
    new = consent_event(
        event_type,
        recipient=draw(st.sampled_from(RECIPIENTS)),
        at=collected_at,
        channels=tuple(draw(st.sets(st.sampled_from(Channel)))),
        expires_at=expires_at,
        purpose_id=draw(st.sampled_from([CROSS_SELL, DIRECT])),
    )
    return draw(st.sampled_from(EXTERNALS)), new


operations = st.lists(
    st.one_of(
        st.lists(submissions(), min_size=1, max_size=5),
        st.tuples(st.just("erase"), st.sampled_from(EXTERNALS)),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=operations, data=st.data())
def test_valid_subjects_agrees_with_decide_over_each_history(
    ops: list[Any], data: st.DataObject
) -> None:
    key = SigningKey.generate()
    with tempfile.TemporaryDirectory() as directory:
        engine = create_db_engine(database_url(str(Path(directory) / "ledger.db")))
        try:
            migrate_ledger(engine)
            ledger = open_ledger(engine, key, Clock(CLOCK))
            # What each live subject recorded since it was last erased (an independent model).
            live: dict[str, list[ConsentEvent]] = {}
            versions = [ledger.consent_version()]  # after each op that changed the events
            for op in ops:
                if ledger.consent_version() != versions[-1]:
                    versions.append(ledger.consent_version())
                before = ledger.consent_position()
                if isinstance(op, tuple):
                    _, external_id = op
                    if external_id in live:
                        erased = ledger.erase(external_id, actor="dpo", reason="request")
                        assert erased.erased_entries == len(live.pop(external_id))
                        # Whom the erasure touched, the log no longer says.
                        assert ledger.subjects_changed_since(before.log_size) is None
                    else:
                        with pytest.raises(SubjectNotFound):
                            ledger.erase(external_id, actor="dpo", reason="request")
                    continue
                recorded = ledger.record(op)
                # The subjects whose events this record appended, and no others.
                assert ledger.subjects_changed_since(before.log_size) == {
                    external_id
                    for (external_id, _), event in zip(op, recorded, strict=True)
                    if event.leaf_index >= before.log_size
                }
                assert [e.event_id for e in recorded] == [e.event_id for _, e in op]
                for (external_id, _), event in zip(op, recorded, strict=True):
                    live.setdefault(external_id, []).append(event)
            # Every change of the events (a record, an erasure) gave a version never seen.
            if versions[-1] != ledger.consent_version():
                versions.append(ledger.consent_version())
            assert len(set(versions)) == len(versions), versions
            for external_id in EXTERNALS:
                if external_id in live:
                    pseudonym = ledger.pseudonym_for(external_id)
                    assert ledger.events_of(pseudonym) == live[external_id]
                else:
                    with pytest.raises(SubjectNotFound):
                        ledger.pseudonym_for(external_id)
            if ledger.size():
                check_latest_head(ledger, key)
            else:
                assert ledger.latest_head() is None
            # Ask at a random time and at times the history has (a microsecond either side).
            edges = [e.collected_at for events in live.values() for e in events]
            edges += [e.expires_at for events in live.values() for e in events if e.expires_at]
            asked = [data.draw(moments(), label="now")]
            for _ in range(5 if edges else 0):
                edge = data.draw(st.sampled_from(edges), label="edge")
                asked.append(
                    edge + data.draw(st.sampled_from([-MICROSECOND, timedelta(0), MICROSECOND]))
                )
            check_parity(ledger, EXTERNALS, asked)
        finally:
            engine.dispose()
