"""verify_log against a real audit log, tampered with directly in the database.

Every test builds the same log with ``Ledger``: consent events for three subjects
(``Ledger.record``) and generic ``note`` entries (``Ledger.append``) in eight append
transactions, so 40 entries under eight signed heads (sizes in ``HEAD_SIZES``). It then
changes rows with SQL, as anyone with write access to the database could, and checks
that ``verify_log`` raises ``LedgerTampered`` (or ``TrustedHeadMismatch``) naming the
first bad entry or head. Each tampering is made as quiet as the attacker can make it
(matching commitments forged, the append state fixed up, heads re-signed where the test
is about someone holding the key), so only the check under test can catch it; messages
are matched from their start, so another check catching it instead fails the test.
Every test runs on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import gc
import json
import re
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

from consent import (
    ANY_RECIPIENT,
    Channel,
    CollectionMethod,
    EventType,
    Ledger,
    NewConsentEvent,
    NewEntry,
    Notice,
    SignedTreeHead,
    VerifyReport,
    check_subject_proof,
    migrate_ledger,
    verify_log,
)
from consent.errors import LedgerTampered, TrustedHeadMismatch
from consent.merkle import MerkleFrontier, leaf_hash
from consent.records import leaf_data, record_commitment
from kernel.crypto import SigningKey, canonical_json, sha256
from kernel.db import create_db_engine

ORIGIN = "accord/node/solent-boats"
CONTROLLER = "solent-boats"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SUBJECTS = ("C1", "C2", "C3")
NOTE = "note"
CONSENT = "consent"
# One append transaction each: consent events through Ledger.record, notes through
# Ledger.append. Leaf index i holds serial i (see consent_event and note_record).
BATCHES = (
    (CONSENT, 4),
    (NOTE, 6),
    (CONSENT, 5),
    (NOTE, 7),
    (CONSENT, 4),
    (NOTE, 6),
    (CONSENT, 3),
    (NOTE, 5),
)
HEAD_SIZES = tuple(accumulate(count for _, count in BATCHES))  # 4 10 15 22 26 32 35 40
SIZE = HEAD_SIZES[-1]
KINDS = [kind for kind, count in BATCHES for _ in range(count)]
EVENT_TYPES = (
    EventType.GIVEN,
    EventType.WITHDRAWN,
    EventType.RENEWED,
    EventType.REFUSED,
    EventType.REQUESTED,
)
NOTICE = Notice("https://solent-boats.example/privacy", "3", "ab" * 32, "en-GB")
FORGED_SALT = bytes(range(32))


# --- building the log ------------------------------------------------------------------


class Clock:
    """A clock that moves one second per reading, so every head has its own timestamp."""

    def __init__(self) -> None:
        self.moment = NOW

    def __call__(self) -> datetime:
        self.moment += timedelta(seconds=1)
        return self.moment


def consent_event(serial: int) -> NewConsentEvent:
    event_type = EVENT_TYPES[serial % len(EVENT_TYPES)]
    grant = event_type in (EventType.GIVEN, EventType.RENEWED)
    collected = NOW - timedelta(days=30) + timedelta(minutes=serial)
    return NewConsentEvent(
        event_id=str(uuid.UUID(int=serial + 1)),
        event_type=event_type,
        purpose="marketing.cross_sell",
        recipient="bluewater-travel" if serial % 2 else ANY_RECIPIENT,
        collected_at=collected,
        collection_method=CollectionMethod.WEB_FORM,
        actor="crm-sync",
        channels=(Channel.EMAIL,) if grant else (),
        notice=NOTICE if grant else None,
        expires_at=collected + timedelta(days=365) if grant else None,
    )


def note_record(serial: int) -> bytes:
    return canonical_json({"schema": "accord.test-note/1", "serial": serial})


@dataclass
class Log:
    engine: Engine
    ledger: Ledger
    key: SigningKey
    heads: list[SignedTreeHead] = field(default_factory=list)  # one per append, in order
    consent: dict[str, list[int]] = field(default_factory=dict)  # external id -> indices

    def verify(self, trusted_head: SignedTreeHead | None = None) -> VerifyReport:
        return verify_log(self.engine, public_key=self.key.public_key, trusted_head=trusted_head)

    def head(self, tree_size: int) -> SignedTreeHead:
        return next(h for h in self.heads if h.tree_size == tree_size)


def build_log(engine: Engine) -> Log:
    key = SigningKey.generate()
    ledger = Ledger(engine, origin=ORIGIN, controller=CONTROLLER, signing_key=key, now=Clock())
    log = Log(engine, ledger, key, consent={s: [] for s in SUBJECTS})
    serial = 0
    for kind, count in BATCHES:
        batch = range(serial, serial + count)
        serial += count
        if kind == CONSENT:
            submissions = [(SUBJECTS[s % len(SUBJECTS)], consent_event(s)) for s in batch]
            recorded = ledger.record(submissions)
            for (external_id, _), event in zip(submissions, recorded, strict=True):
                log.consent[external_id].append(event.leaf_index)
        else:
            indices, _ = ledger.append([NewEntry(NOTE, note_record(s)) for s in batch])
            assert indices == list(batch)
        head = ledger.latest_head()
        assert head is not None
        log.heads.append(head)
    assert [h.tree_size for h in log.heads] == list(HEAD_SIZES)
    assert sorted(i for indices in log.consent.values() for i in indices) == [
        i for i, kind in enumerate(KINDS) if kind == CONSENT
    ]
    return log


@pytest.fixture
def log(db_url: URL) -> Iterator[Log]:
    engine = create_db_engine(db_url)
    try:
        migrate_ledger(engine)
        yield build_log(engine)
    finally:
        engine.dispose()


# --- tampering, as SQL -----------------------------------------------------------------


def run(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as connection:
        connection.execute(text(statement), params)


def entry(engine: Engine, index: int) -> Any:
    """An entry with its record: leaf_index, kind, data, record, salt, subject."""
    with engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT e.leaf_index, e.kind, e.data, r.record, r.salt, r.subject "
                "FROM audit_entries e LEFT JOIN audit_records r ON r.leaf_index = e.leaf_index "
                "WHERE e.leaf_index = :index"
            ),
            {"index": index},
        ).one()


def forge(index: int, kind: str, record: bytes, salt: bytes = FORGED_SALT) -> bytes:
    """The leaf data of a well-formed entry for ``record`` at ``index``: anyone can compute it."""
    return leaf_data(kind, record_commitment(salt, index, record))


def altered(record: bytes) -> bytes:
    """``record`` with its meaning changed: a withdrawal made a grant (or back), and so on."""
    fields = json.loads(record)
    if "event_type" in fields:
        fields["event_type"] = "given" if fields["event_type"] != "given" else "withdrawn"
    else:
        fields["serial"] += 1000
    return canonical_json(fields)


def forge_entry(connection: Connection, index: int) -> None:
    """Alter entry ``index``'s record and give the entry a commitment that matches it."""
    row = connection.execute(
        text(
            "SELECT e.kind, r.record FROM audit_entries e "
            "JOIN audit_records r ON r.leaf_index = e.leaf_index WHERE e.leaf_index = :i"
        ),
        {"i": index},
    ).one()
    record = altered(bytes(row.record))
    connection.execute(
        text("UPDATE audit_entries SET data = :data WHERE leaf_index = :i"),
        {"data": forge(index, row.kind, record), "i": index},
    )
    connection.execute(
        text("UPDATE audit_records SET record = :record, salt = :salt WHERE leaf_index = :i"),
        {"record": record, "salt": FORGED_SALT, "i": index},
    )
    fields = json.loads(record)
    if str(fields.get("schema", "")).startswith("accord.consent-event"):
        # A careful attacker also edits the columns flows decide on.
        connection.execute(
            text("UPDATE consent_events SET event_type = :t WHERE leaf_index = :i"),
            {"t": fields["event_type"], "i": index},
        )


def insert_entry(
    connection: Connection, index: int, kind: str, record: bytes, subject: str | None = None
) -> None:
    """Insert an entry with a record and a commitment that matches it at ``index``."""
    connection.execute(
        text("INSERT INTO audit_entries (leaf_index, kind, data) VALUES (:i, :kind, :data)"),
        {"i": index, "kind": kind, "data": forge(index, kind, record)},
    )
    connection.execute(
        text(
            "INSERT INTO audit_records (leaf_index, subject, record, salt) "
            "VALUES (:i, :subject, :record, :salt)"
        ),
        {"i": index, "subject": subject, "record": record, "salt": FORGED_SALT},
    )


def delete_entries(connection: Connection, condition: str, **params: Any) -> None:
    """Delete entries (and what references them) where ``leaf_index`` meets ``condition``."""
    for table in ("consent_events", "audit_records", "audit_entries"):
        connection.execute(text(f"DELETE FROM {table} WHERE leaf_index {condition}"), params)


def move_entry(connection: Connection, old: int, new: int) -> None:
    """Give entry ``old`` (with its record and event row) the free index ``new``."""
    connection.execute(
        text(
            "INSERT INTO audit_entries (leaf_index, kind, data) "
            "SELECT :new, kind, data FROM audit_entries WHERE leaf_index = :old"
        ),
        {"old": old, "new": new},
    )
    for table in ("audit_records", "consent_events"):
        connection.execute(
            text(f"UPDATE {table} SET leaf_index = :new WHERE leaf_index = :old"),
            {"old": old, "new": new},
        )
    connection.execute(text("DELETE FROM audit_entries WHERE leaf_index = :old"), {"old": old})


def recommit(connection: Connection, index: int) -> None:
    """Recompute an entry's commitment from its record and salt at its (new) index."""
    row = connection.execute(
        text(
            "SELECT e.kind, r.record, r.salt FROM audit_entries e "
            "JOIN audit_records r ON r.leaf_index = e.leaf_index WHERE e.leaf_index = :i"
        ),
        {"i": index},
    ).one()
    data = leaf_data(row.kind, record_commitment(bytes(row.salt), index, bytes(row.record)))
    connection.execute(
        text("UPDATE audit_entries SET data = :data WHERE leaf_index = :i"),
        {"data": data, "i": index},
    )


def leaf_hashes(connection: Connection) -> list[bytes]:
    rows = connection.execute(text("SELECT data FROM audit_entries ORDER BY leaf_index"))
    return [leaf_hash(bytes(data)) for (data,) in rows]


def fix_state(connection: Connection) -> None:
    """Make the append state agree with the entries, as a careful attacker would."""
    frontier = MerkleFrontier.from_leaf_hashes(leaf_hashes(connection))
    connection.execute(
        text("UPDATE audit_log_state SET size = :size, frontier = :frontier WHERE id = 1"),
        {"size": frontier.size, "frontier": b"".join(frontier.to_hashes())},
    )


def resign_heads(connection: Connection, key: SigningKey) -> None:
    """Re-sign every stored head over the current entries (someone holding the key)."""
    hashes = leaf_hashes(connection)
    heads = connection.execute(
        text("SELECT tree_size, origin, timestamp FROM audit_tree_heads")
    ).all()
    for row in heads:
        size = int(row.tree_size)
        head = SignedTreeHead.sign(
            key,
            origin=row.origin,
            tree_size=size,
            root_hash=MerkleFrontier.from_leaf_hashes(hashes[:size]).root(),
            timestamp=row.timestamp,
        )
        connection.execute(
            text(
                "UPDATE audit_tree_heads SET root_hash = :root, signature = :signature "
                "WHERE tree_size = :size"
            ),
            {"root": head.root_hash, "signature": head.signature, "size": size},
        )


def insert_head(connection: Connection, head: SignedTreeHead) -> None:
    connection.execute(
        text(
            "INSERT INTO audit_tree_heads "
            "(tree_size, origin, root_hash, timestamp, key_id, signature) "
            "VALUES (:tree_size, :origin, :root_hash, :timestamp, :key_id, :signature)"
        ),
        {**head.signed_fields(), "root_hash": head.root_hash, "signature": head.signature},
    )


def truncate(connection: Connection, size: int) -> None:
    """Drop entries from ``size`` on and the heads over them; fix the append state."""
    delete_entries(connection, ">= :size", size=size)
    connection.execute(text("DELETE FROM audit_tree_heads WHERE tree_size > :size"), {"size": size})
    fix_state(connection)


def flip(value: bytes, position: int = 0) -> bytes:
    """``value`` with one bit of one byte flipped."""
    return value[:position] + bytes([value[position] ^ 0x01]) + value[position + 1 :]


# --- checking ----------------------------------------------------------------------------


def head_range(index: int) -> tuple[int, int]:
    """(previous head size, size of the first head covering entry ``index``)."""
    size = next(s for s in HEAD_SIZES if s > index)
    previous = max((s for s in HEAD_SIZES if s < size), default=0)
    return previous, size


def head_mismatch(index: int) -> str:
    previous, size = head_range(index)
    return (
        f"the signed head of size {size} does not match the entries: "
        f"an entry in {previous}..{size - 1} was altered"
    )


def record_mismatch(index: int) -> str:
    return f"entry {index}: its record does not match its commitment"


def assert_tampered(
    log: Log,
    message_start: str,
    *,
    error: type[LedgerTampered] = LedgerTampered,
    trusted_head: SignedTreeHead | None = None,
) -> None:
    """verify_log raises exactly ``error``, with a message starting ``message_start``."""
    with pytest.raises(error, match="^" + re.escape(message_start)) as caught:
        log.verify(trusted_head)
    assert type(caught.value) is error


def assert_clean(report: VerifyReport, *, entries: int, heads: int, erased: int = 0) -> None:
    assert (report.entries, report.heads) == (entries, heads)
    assert (report.records_checked, report.erased_entries) == (entries - erased, erased)


# --- an untouched log --------------------------------------------------------------------


def test_an_untouched_log_verifies(log: Log) -> None:
    report = log.verify()
    assert_clean(report, entries=SIZE, heads=len(HEAD_SIZES))
    assert report.latest_head == log.heads[-1] == log.ledger.latest_head()
    assert report.trusted_head_size is None


def test_an_empty_log_verifies(db_url: URL) -> None:
    engine = create_db_engine(db_url)
    try:
        migrate_ledger(engine)
        report = verify_log(engine, public_key=SigningKey.generate().public_key)
    finally:
        engine.dispose()
    assert_clean(report, entries=0, heads=0)
    assert report.latest_head is None


@pytest.mark.parametrize("tree_size", [HEAD_SIZES[0], HEAD_SIZES[3], SIZE], ids=str)
def test_a_trusted_head_the_log_contains_verifies(log: Log, tree_size: int) -> None:
    report = log.verify(log.head(tree_size))
    assert_clean(report, entries=SIZE, heads=len(HEAD_SIZES))
    assert report.trusted_head_size == tree_size


def test_a_wrong_public_key_fails(log: Log) -> None:
    with pytest.raises(LedgerTampered, match=r"^the signed tree head of size 4 does not verify"):
        verify_log(log.engine, public_key=SigningKey.generate().public_key)


def test_a_failed_verification_closes_its_cursor(log: Log) -> None:
    # On PostgreSQL the entries stream through a server-side cursor. A verification
    # that stops at a bad entry must close it, not leave it open for the garbage
    # collector (psycopg then warns "was deleted while still open").
    run(
        log.engine,
        "UPDATE audit_records SET record = :record WHERE leaf_index = 11",
        record=altered(bytes(entry(log.engine, 11).record)),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(LedgerTampered, match="^entry 11: "):
            log.verify()
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_erasure_keeps_the_log_verifiable(log: Log) -> None:
    erased = log.consent["C2"]
    result = log.ledger.erase("C2", actor="dpo", reason="GDPR 17 request")
    assert result.erased_entries == len(erased) > 0
    assert all(entry(log.engine, index).record is None for index in erased)
    report = log.verify()
    assert_clean(report, entries=SIZE + 1, heads=len(HEAD_SIZES) + 1, erased=len(erased))
    assert report.latest_head == result.tree_head
    assert log.verify(log.heads[-1]).trusted_head_size == SIZE  # erasure only appended


def test_a_proof_exported_before_erasure_still_checks(log: Log) -> None:
    pseudonym = log.ledger.pseudonym_for("C2")
    bundle = json.loads(json.dumps(log.ledger.subject_proof(pseudonym)))  # as in a file
    log.ledger.erase("C2", actor="dpo", reason="GDPR 17 request")

    head, entries = check_subject_proof(bundle, public_key=log.key.public_key)
    assert head == log.heads[-1]
    assert [e.leaf_index for e in entries] == log.consent["C2"]
    assert {e.record["subject"] for e in entries} == {pseudonym}
    assert [e.record["event_id"] for e in entries] == [
        str(uuid.UUID(int=i + 1)) for i in log.consent["C2"]
    ]
    # and the erased log is still the one that head signed
    assert log.verify(head).trusted_head_size == SIZE


def test_an_erased_entry_altered_is_caught_by_the_next_head(log: Log) -> None:
    log.ledger.erase("C2", actor="dpo", reason="GDPR 17 request")
    index = log.consent["C2"][2]
    assert entry(log.engine, index).record is None
    # With no record left only the tree can tell: a well-formed commitment to anything.
    run(
        log.engine,
        "UPDATE audit_entries SET data = :data WHERE leaf_index = :i",
        data=forge(index, CONSENT, b'{"forged":true}'),
        i=index,
    )
    assert_tampered(log, head_mismatch(index))


# --- entries and records ---------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 11, 17, SIZE - 1], ids=str)
def test_an_altered_record_is_named(log: Log, index: int) -> None:
    run(
        log.engine,
        "UPDATE audit_records SET record = :record WHERE leaf_index = :i",
        record=altered(bytes(entry(log.engine, index).record)),
        i=index,
    )
    assert_tampered(log, record_mismatch(index))


@pytest.mark.parametrize(
    ("alter", "message"),
    [
        pytest.param(lambda salt: flip(salt, 31), record_mismatch(13), id="other-bytes"),
        # A salt of the wrong length cannot even key the HMAC; it must still be reported
        # as tampering that names the entry, not escape as a crypto error.
        pytest.param(lambda salt: salt[:16], "entry 13: ", id="shorter"),
        pytest.param(lambda salt: b"", "entry 13: ", id="empty"),
    ],
)
def test_an_altered_salt_is_named(log: Log, alter: Callable[[bytes], bytes], message: str) -> None:
    salt = bytes(entry(log.engine, 13).salt)
    run(log.engine, "UPDATE audit_records SET salt = :salt WHERE leaf_index = 13", salt=alter(salt))
    assert_tampered(log, message)


# Malformed leaf data may be reported as "is not an entry" or as not matching the
# entry's kind; either way the message must name entry 12's leaf data.
MALFORMED_12 = "entry 12: its leaf data "


def _with_commitment(row: Any, alter: Callable[[bytes], bytes]) -> bytes:
    return leaf_data(row.kind, alter(bytes.fromhex(json.loads(row.data)["commitment"])))


@pytest.mark.parametrize(
    ("alter", "message"),
    [
        pytest.param(
            lambda row: _with_commitment(row, lambda c: flip(c, 5)),
            record_mismatch(12),
            id="other-commitment",
        ),
        pytest.param(lambda row: b"\xff" + bytes(row.data), MALFORMED_12, id="not-json"),
        pytest.param(lambda row: canonical_json({"kind": NOTE}), MALFORMED_12, id="no-commitment"),
        pytest.param(
            lambda row: bytes(row.data).replace(b",", b", "), MALFORMED_12, id="not-canonical"
        ),
        pytest.param(
            lambda row: _with_commitment(row, lambda c: c[:16]), MALFORMED_12, id="short-commitment"
        ),
        pytest.param(
            lambda row: leaf_data(NOTE, bytes.fromhex(json.loads(row.data)["commitment"])),
            "entry 12: its leaf data does not match its kind 'consent'",
            id="other-kind-in-data",
        ),
    ],
)
def test_altered_leaf_data_is_named(log: Log, alter: Callable[[Any], bytes], message: str) -> None:
    row = entry(log.engine, 12)
    run(
        log.engine,
        "UPDATE audit_entries SET data = :data WHERE leaf_index = 12",
        data=alter(row),
    )
    assert_tampered(log, message)


def test_an_altered_kind_is_named(log: Log) -> None:
    run(log.engine, "UPDATE audit_entries SET kind = 'erasure' WHERE leaf_index = 12")
    assert_tampered(log, "entry 12: its leaf data does not match its kind 'erasure'")


@pytest.mark.parametrize("index", [1, 11, 18, SIZE - 1], ids=str)
def test_a_forged_entry_with_a_matching_commitment_is_caught_by_the_next_head(
    log: Log, index: int
) -> None:
    with log.engine.begin() as connection:
        forge_entry(connection, index)
        fix_state(connection)
    assert_tampered(log, head_mismatch(index))


@pytest.mark.parametrize("index", [0, 13, 20], ids=str)
def test_a_removed_entry_is_named(log: Log, index: int) -> None:
    with log.engine.begin() as connection:
        delete_entries(connection, "= :i", i=index)
        fix_state(connection)
    assert_tampered(log, f"entry {index} is missing (the next entry is {index + 1})")


def test_a_removed_last_entry_is_caught_by_the_last_head(log: Log) -> None:
    with log.engine.begin() as connection:
        delete_entries(connection, "= :i", i=SIZE - 1)
        fix_state(connection)
    assert_tampered(
        log,
        f"the signed head of size {SIZE} covers entries that are gone: the log holds "
        f"{SIZE - 1} (entries {SIZE - 1}..{SIZE - 1} were removed)",
    )


def test_a_removed_entry_with_the_rest_renumbered_is_named(log: Log) -> None:
    index = 16
    with log.engine.begin() as connection:
        delete_entries(connection, "= :i", i=index)
        for old in range(index + 1, SIZE):
            move_entry(connection, old, old - 1)
        fix_state(connection)
    assert_tampered(log, record_mismatch(index))


@pytest.mark.parametrize(("first", "second"), [(5, 6), (13, 17), (2, 38)], ids=str)
def test_reordered_entries_are_named(log: Log, first: int, second: int) -> None:
    a, b = entry(log.engine, first), entry(log.engine, second)
    with log.engine.begin() as connection:
        for index, row in ((first, b), (second, a)):
            connection.execute(
                text("UPDATE audit_entries SET kind = :kind, data = :data WHERE leaf_index = :i"),
                {"kind": row.kind, "data": row.data, "i": index},
            )
            connection.execute(
                text(
                    "UPDATE audit_records SET record = :record, salt = :salt, subject = :subject "
                    "WHERE leaf_index = :i"
                ),
                {"record": row.record, "salt": row.salt, "subject": row.subject, "i": index},
            )
        fix_state(connection)  # no change: the same leaves, in another order
    assert_tampered(log, record_mismatch(first))


def _insert_in_the_middle(log: Log, index: int) -> None:
    """Shift entries ``index``.. up by one and put a well-formed forged entry at ``index``."""
    with log.engine.begin() as connection:
        for old in reversed(range(index, SIZE)):
            move_entry(connection, old, old + 1)
        insert_entry(connection, index, NOTE, note_record(9999))


def test_an_entry_inserted_in_the_middle_is_named(log: Log) -> None:
    _insert_in_the_middle(log, 20)
    # The inserted entry is well formed; the first entry it pushed along is not.
    assert_tampered(log, record_mismatch(21))


def test_an_inserted_entry_with_every_commitment_recomputed_is_caught_by_the_next_head(
    log: Log,
) -> None:
    _insert_in_the_middle(log, 20)
    with log.engine.begin() as connection:
        for index in range(21, SIZE + 1):
            recommit(connection, index)
        fix_state(connection)
    assert_tampered(log, head_mismatch(20))


def test_an_entry_appended_without_a_head_is_named(log: Log) -> None:
    with log.engine.begin() as connection:
        insert_entry(connection, SIZE, NOTE, note_record(SIZE))
        fix_state(connection)
    assert_tampered(
        log, f"entries {SIZE}..{SIZE} lie beyond the last signed head (inserted after it"
    )


# --- signed heads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "alter"),
    [
        ("root_hash", lambda head: flip(head.root_hash, 7)),
        ("signature", lambda head: flip(head.signature, 40)),
        ("signature", lambda head: head.signature[:32]),
        ("timestamp", lambda head: head.timestamp.replace("12:00", "11:00")),
        ("origin", lambda head: "accord/node/elsewhere"),
        ("key_id", lambda head: SigningKey.generate().key_id),
    ],
    ids=["root", "signature", "short-signature", "timestamp", "origin", "key-id"],
)
def test_an_altered_head_is_named(
    log: Log, column: str, alter: Callable[[SignedTreeHead], Any]
) -> None:
    head = log.head(22)
    run(
        log.engine,
        f"UPDATE audit_tree_heads SET {column} = :value WHERE tree_size = 22",
        value=alter(head),
    )
    assert_tampered(log, "the signed tree head of size 22 does not verify")


def test_a_head_moved_to_another_size_is_named(log: Log) -> None:
    run(log.engine, "UPDATE audit_tree_heads SET tree_size = 23 WHERE tree_size = 22")
    assert_tampered(log, "the signed tree head of size 23 does not verify")


def test_a_head_resigned_for_another_origin_is_named(log: Log) -> None:
    head = log.head(22)
    other = SignedTreeHead.sign(
        log.key,
        origin="accord/node/elsewhere",
        tree_size=22,
        root_hash=head.root_hash,
        timestamp=head.timestamp,
    )
    run(
        log.engine,
        "UPDATE audit_tree_heads SET origin = :origin, signature = :signature WHERE tree_size = 22",
        origin=other.origin,
        signature=other.signature,
    )
    assert_tampered(log, "the head of size 22 names another log ('accord/node/elsewhere')")


def test_a_head_resigned_over_another_root_is_caught(log: Log) -> None:
    head = log.head(22)
    other = SignedTreeHead.sign(
        log.key, origin=ORIGIN, tree_size=22, root_hash=sha256(b"other"), timestamp=head.timestamp
    )
    run(
        log.engine,
        "UPDATE audit_tree_heads SET root_hash = :root, signature = :signature "
        "WHERE tree_size = 22",
        root=other.root_hash,
        signature=other.signature,
    )
    assert_tampered(log, head_mismatch(15))


@pytest.mark.parametrize("tree_size", [HEAD_SIZES[0], 22, HEAD_SIZES[-2]], ids=str)
def test_a_removed_middle_head_still_verifies(log: Log, tree_size: int) -> None:
    # A stored head is only a checkpoint: the heads left, and any head published
    # earlier (even the removed one), still check against the same entries.
    run(log.engine, "DELETE FROM audit_tree_heads WHERE tree_size = :size", size=tree_size)
    assert_clean(log.verify(), entries=SIZE, heads=len(HEAD_SIZES) - 1)
    assert log.verify(log.head(tree_size)).trusted_head_size == tree_size


def test_a_removed_last_head_is_named(log: Log) -> None:
    run(log.engine, "DELETE FROM audit_tree_heads WHERE tree_size = :size", size=SIZE)
    previous = HEAD_SIZES[-2]
    assert_tampered(log, f"entries {previous}..{SIZE - 1} lie beyond the last signed head")


@pytest.mark.parametrize("forged", [False, True], ids=["heads-only", "and-an-entry-forged"])
def test_removing_every_head_is_caught(log: Log, forged: bool) -> None:
    # Every append ends with a head, so entries under no head were never signed, or
    # their heads were deleted: "no entry lies beyond the last signed head". Without
    # heads nothing checks the tree, so any entry could then be forged without the key.
    with log.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_tree_heads"))
        if forged:
            forge_entry(connection, 11)  # the withdrawal at 11 made a grant
            fix_state(connection)
    with pytest.raises(LedgerTampered, match=rf"\b0\.\.{SIZE - 1}\b"):
        log.verify()


# --- the append state --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "params", "message"),
    [
        ("size = size + 1", {}, f"the append state (size {SIZE + 1}) does not match"),
        ("size = size - 1", {}, f"the append state (size {SIZE - 1}) does not match"),
        ("size = 0, frontier = :empty", {"empty": b""}, "the append state (size 0) does not"),
        ("frontier = :frontier", {"frontier": b"\x00" * 32}, f"the append state (size {SIZE})"),
        (
            "origin = :origin",
            {"origin": "accord/node/elsewhere"},
            f"the head of size {HEAD_SIZES[0]} names another log ({ORIGIN!r})",
        ),
    ],
    ids=["size-up", "size-down", "reset", "frontier", "origin"],
)
def test_an_altered_append_state_is_named(
    log: Log, assignment: str, params: dict[str, Any], message: str
) -> None:
    run(log.engine, f"UPDATE audit_log_state SET {assignment} WHERE id = 1", **params)
    assert_tampered(log, message)


def test_an_altered_frontier_hash_is_named(log: Log) -> None:
    with log.engine.connect() as connection:
        frontier = bytes(
            connection.execute(text("SELECT frontier FROM audit_log_state")).scalar_one()
        )
    assert len(frontier) == 32 * SIZE.bit_count()
    run(log.engine, "UPDATE audit_log_state SET frontier = :f", f=flip(frontier, 33))
    assert_tampered(log, f"the append state (size {SIZE}) does not match the {SIZE} entries")


def test_a_deleted_append_state_is_caught(log: Log) -> None:
    run(log.engine, "DELETE FROM audit_log_state")
    with pytest.raises(LedgerTampered, match="append state"):
        log.verify()


# --- truncation and rewriting: only a trusted head can tell -----------------------------


@pytest.mark.parametrize("resign", [False, True], ids=["at-a-head", "re-signed"])
def test_truncation_passes_locally_but_not_against_a_trusted_head(log: Log, resign: bool) -> None:
    published = log.ledger.latest_head()
    assert published is not None and published.tree_size == SIZE
    # At a head's size the rest is just deleted; anywhere else the key holder signs
    # a new last head.
    size = 30 if resign else 22
    with log.engine.begin() as connection:
        truncate(connection, size)
        if resign:
            insert_head(
                connection,
                SignedTreeHead.sign(
                    log.key,
                    origin=ORIGIN,
                    tree_size=size,
                    root_hash=MerkleFrontier.from_leaf_hashes(leaf_hashes(connection)).root(),
                    timestamp="2026-11-23T12:05:00.000000Z",
                ),
            )

    heads_left = sum(1 for s in HEAD_SIZES if s <= size) + (1 if resign else 0)
    assert_clean(log.verify(), entries=size, heads=heads_left)
    assert_tampered(
        log,
        f"the log was truncated: it holds {size} entries, but a head published earlier "
        f"covers {SIZE}",
        error=TrustedHeadMismatch,
        trusted_head=published,
    )
    # A head published before the cut is still consistent with what is left.
    assert log.verify(log.head(22)).trusted_head_size == 22


def test_history_rewritten_and_resigned_in_place_fails_against_a_trusted_head(
    log: Log,
) -> None:
    published = log.ledger.latest_head()
    assert published is not None
    assert json.loads(entry(log.engine, 11).record)["event_type"] == "withdrawn"
    with log.engine.begin() as connection:
        forge_entry(connection, 11)  # a grant now, under the head of size 15
        resign_heads(connection, log.key)
        fix_state(connection)

    assert_clean(log.verify(), entries=SIZE, heads=len(HEAD_SIZES))
    for tree_size in (15, SIZE):
        assert_tampered(
            log,
            f"the log is not the one the trusted head of size {tree_size} signed: "
            "its history was rewritten",
            error=TrustedHeadMismatch,
            trusted_head=log.head(tree_size),
        )
    # Heads published before the rewritten entry cannot see it.
    assert log.verify(log.head(10)).trusted_head_size == 10


def test_a_log_truncated_and_regrown_with_the_ledger_fails_against_a_trusted_head(
    log: Log,
) -> None:
    published = log.ledger.latest_head()
    assert published is not None
    with log.engine.begin() as connection:
        truncate(connection, 22)
    # The node's own code re-signs the rewritten history, longer than before.
    log.ledger.append([NewEntry(NOTE, note_record(5000 + s)) for s in range(10)])
    log.ledger.append([NewEntry(NOTE, note_record(6000 + s)) for s in range(12)])

    assert_clean(log.verify(), entries=44, heads=HEAD_SIZES.index(22) + 3)
    assert_tampered(
        log,
        f"the log is not the one the trusted head of size {SIZE} signed",
        error=TrustedHeadMismatch,
        trusted_head=published,
    )
    assert log.verify(log.head(22)).trusted_head_size == 22


def test_a_log_rebuilt_with_the_same_key_fails_against_a_trusted_head(log: Log) -> None:
    published = log.ledger.latest_head()
    assert published is not None
    with log.engine.begin() as connection:
        for table in (
            "consent_events",
            "audit_records",
            "audit_entries",
            "audit_tree_heads",
            "consent_subjects",
        ):
            connection.execute(text(f"DELETE FROM {table}"))
        connection.execute(
            text("UPDATE audit_log_state SET origin = NULL, size = 0, frontier = :empty"),
            {"empty": b""},
        )
    # A different history under the same key and origin, as in a fresh database.
    rebuilt = Ledger(
        log.engine, origin=ORIGIN, controller=CONTROLLER, signing_key=log.key, now=Clock()
    )
    for start in range(0, 48, 12):
        rebuilt.append([NewEntry(NOTE, note_record(7000 + s)) for s in range(start, start + 12)])

    assert_clean(log.verify(), entries=48, heads=4)
    for trusted in (log.heads[0], published):
        assert_tampered(
            log,
            f"the log is not the one the trusted head of size {trusted.tree_size} signed",
            error=TrustedHeadMismatch,
            trusted_head=trusted,
        )


def test_a_trusted_head_of_a_forked_log_fails(log: Log) -> None:
    # The node showed someone else another log of the same size, signed with its key.
    fork = SignedTreeHead.sign(
        log.key,
        origin=ORIGIN,
        tree_size=SIZE,
        root_hash=sha256(b"another log"),
        timestamp=log.heads[-1].timestamp,
    )
    assert_tampered(
        log,
        f"the log is not the one the trusted head of size {SIZE} signed",
        error=TrustedHeadMismatch,
        trusted_head=fork,
    )


def test_a_trusted_head_of_another_origin_fails(log: Log) -> None:
    head = log.heads[-1]
    other = SignedTreeHead.sign(
        log.key,
        origin="accord/node/elsewhere",
        tree_size=head.tree_size,
        root_hash=head.root_hash,
        timestamp=head.timestamp,
    )
    assert_tampered(
        log,
        "the trusted head is of another log ('accord/node/elsewhere')",
        error=TrustedHeadMismatch,
        trusted_head=other,
    )


@pytest.mark.parametrize(
    "forge_head",
    [
        pytest.param(
            lambda head: SignedTreeHead(
                head.origin,
                head.tree_size,
                sha256(b"x"),
                head.timestamp,
                head.key_id,
                head.signature,
            ),
            id="root-not-re-signed",
        ),
        pytest.param(
            lambda head: SignedTreeHead.sign(
                SigningKey.generate(),
                origin=head.origin,
                tree_size=head.tree_size,
                root_hash=head.root_hash,
                timestamp=head.timestamp,
            ),
            id="another-key",
        ),
    ],
)
def test_a_trusted_head_that_does_not_verify_fails(
    log: Log, forge_head: Callable[[SignedTreeHead], SignedTreeHead]
) -> None:
    head = forge_head(log.heads[-1])
    with pytest.raises(LedgerTampered, match=f"^the signed tree head of size {SIZE} does not"):
        log.verify(head)


def test_consent_columns_that_disagree_with_their_record_are_named(log: Log) -> None:
    # Flows decide on consent_events; a row edited there (a withdrawal turned into a
    # grant) must not pass while the committed record says otherwise.
    with log.engine.begin() as connection:
        connection.execute(
            text("UPDATE consent_events SET event_type = 'given' WHERE leaf_index = 11")
        )
    assert_tampered(log, "consent event ")
    with pytest.raises(LedgerTampered, match="entry 11"):
        log.verify()


# --- witnessed heads: what the broker saw ----------------------------------------------


def verify_witnessed(log: Log, witnessed: list[SignedTreeHead]) -> VerifyReport:
    return verify_log(log.engine, public_key=log.key.public_key, witnessed_heads=witnessed)


def test_a_log_extending_every_witnessed_head_verifies(log: Log) -> None:
    report = verify_witnessed(log, log.heads)
    assert_clean(report, entries=SIZE, heads=len(HEAD_SIZES))


def test_truncation_fails_against_the_witness(log: Log) -> None:
    with log.engine.begin() as connection:
        truncate(connection, 22)
    assert_clean(log.verify(), entries=22, heads=HEAD_SIZES.index(22) + 1)
    with pytest.raises(TrustedHeadMismatch, match=r"^the log was truncated: it holds 22 "
                       r"entries, but the witness saw a head of size 26"):  # fmt: skip
        verify_witnessed(log, log.heads)
    # The heads the witness saw before the cut still hold.
    assert verify_witnessed(log, log.heads[:4]).entries == 22


def test_history_rewritten_and_resigned_fails_against_the_witness(log: Log) -> None:
    with log.engine.begin() as connection:
        forge_entry(connection, 11)  # under the head of size 15
        resign_heads(connection, log.key)
        fix_state(connection)
    assert_clean(log.verify(), entries=SIZE, heads=len(HEAD_SIZES))
    with pytest.raises(TrustedHeadMismatch, match=r"^the log is not the one the witness saw "
                       r"at size 15: its history was rewritten"):  # fmt: skip
        verify_witnessed(log, log.heads)
    assert verify_witnessed(log, log.heads[:2]).entries == SIZE


def test_a_witnessed_head_the_node_did_not_sign_fails(log: Log) -> None:
    head = log.heads[2]
    forged = SignedTreeHead.sign(
        SigningKey.generate(),
        origin=ORIGIN,
        tree_size=head.tree_size,
        root_hash=head.root_hash,
        timestamp=head.timestamp,
    )
    with pytest.raises(LedgerTampered):
        verify_witnessed(log, [forged])
