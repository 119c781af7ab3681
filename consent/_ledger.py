"""The consent ledger and audit log over a database (SQLite or PostgreSQL).

Appends are serialized by one state row (``audit_log_state``): every append transaction
first updates it, which takes SQLite's write lock or PostgreSQL's row lock, reads the
tree's size and frontier, writes the new entries and records, and ends with a signed
tree head for the new size. A crash rolls the whole transaction back: entries, records,
head and state move together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from consent._tables import (
    ConsentEventRow,
    EntryRow,
    LogStateRow,
    RecordRow,
    SubjectRow,
    TreeHeadRow,
)
from consent.errors import ConsentError, EventConflict, SubjectErased, SubjectNotFound
from consent.merkle import HASH_SIZE, MerkleFrontier, inclusion_proofs, leaf_hash
from consent.model import (
    ANY_RECIPIENT,
    Channel,
    ConsentEvent,
    ConsentState,
    ConsentStatus,
    EventType,
    NewConsentEvent,
    states_of,
    status_of,
)
from consent.proofs import PROOF_FORMAT
from consent.purposes import purpose
from consent.records import (
    SignedTreeHead,
    consent_record,
    erasure_record,
    event_from_record,
    format_time,
    leaf_data,
    record_commitment,
)
from kernel.crypto import SALT_SIZE, SigningKey, canonical_json, random_bytes, sha256
from kernel.db import insert_rows

__all__ = ["ConsentPosition", "ErasureResult", "Ledger", "NewEntry", "utc_now"]

_state_t = LogStateRow.__table__  # type: ignore[attr-defined]
_entries = EntryRow.__table__  # type: ignore[attr-defined]
_records = RecordRow.__table__  # type: ignore[attr-defined]
_heads = TreeHeadRow.__table__  # type: ignore[attr-defined]
_subjects = SubjectRow.__table__  # type: ignore[attr-defined]
_events = ConsentEventRow.__table__  # type: ignore[attr-defined]

CONSENT_KIND: Final = "consent"
ERASURE_KIND: Final = "erasure"
_CONSENT_CHANGES: Final = frozenset({CONSENT_KIND, ERASURE_KIND})  # kinds that move events


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_db_time(moment: datetime) -> datetime:
    """UTC for storage: SQLite keeps wall-clock text, so every value must be in one zone."""
    return moment.astimezone(UTC)


def from_db_time(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An entry to append: its kind, canonical record and (optional) subject pseudonym."""

    kind: str
    record: bytes
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentPosition:
    """``version``: see ``Ledger.consent_version``; ``log_size``: the log's size then."""

    version: int
    log_size: int


@dataclass(frozen=True, slots=True)
class ErasureResult:
    subject: str
    erased_entries: int
    tree_head: SignedTreeHead


@dataclass(slots=True)
class _AppendResult:
    first_index: int
    head: SignedTreeHead
    indices: list[int] = field(default_factory=list)


class Ledger:
    """One node's consent ledger and audit log; see the module docstring.

    ``signing_key`` is needed to append (every append ends with a signed head); reading,
    proving and exporting need only the database.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        origin: str,
        controller: str,
        signing_key: SigningKey | None = None,
        now: Callable[[], datetime] = utc_now,
        salts: Callable[[int], bytes] = random_bytes,
    ) -> None:
        self.engine = engine
        self.origin = origin
        self.controller = controller
        self._signing_key = signing_key
        self._now = now
        self._salts = salts

    # --- the log ------------------------------------------------------------------------

    def append(self, entries: Sequence[NewEntry]) -> tuple[list[int], SignedTreeHead]:
        """Append ``entries`` in one transaction ending in a signed head."""
        with self.engine.begin() as connection:
            result = self._append(connection, entries, self._now())
        return result.indices, result.head

    def _append(
        self, connection: Connection, entries: Sequence[NewEntry], now: datetime
    ) -> _AppendResult:
        if self._signing_key is None:
            raise ConsentError("appending to the audit log needs the node's signing key")
        # Take the append lock first (SQLite: the write lock; PostgreSQL: the row lock),
        # then read the state under it.
        connection.execute(update(_state_t).where(_state_t.c.id == 1).values(size=_state_t.c.size))
        row = connection.execute(
            select(_state_t.c.origin, _state_t.c.size, _state_t.c.frontier).where(
                _state_t.c.id == 1
            )
        ).one()
        if row.origin is not None and row.origin != self.origin:
            raise ConsentError(
                f"this database's audit log is {row.origin!r}, not {self.origin!r}: "
                "check --db and --keys"
            )
        frontier = _frontier(int(row.size), bytes(row.frontier))
        first = frontier.size
        entry_rows: list[tuple[int, str, bytes]] = []
        record_rows: list[tuple[int, str | None, bytes, bytes]] = []
        for offset, entry in enumerate(entries):
            index = first + offset
            salt = self._salts(SALT_SIZE)
            data = leaf_data(entry.kind, record_commitment(salt, index, entry.record))
            frontier.append(leaf_hash(data))
            entry_rows.append((index, entry.kind, data))
            record_rows.append((index, entry.subject, entry.record, salt))
        insert_rows(connection, _entries.name, ("leaf_index", "kind", "data"), entry_rows)
        insert_rows(
            connection, _records.name, ("leaf_index", "subject", "record", "salt"), record_rows
        )
        head = SignedTreeHead.sign(
            self._signing_key,
            origin=self.origin,
            tree_size=frontier.size,
            root_hash=frontier.root(),
            timestamp=format_time(now),
        )
        connection.execute(
            update(_state_t)
            .where(_state_t.c.id == 1)
            .values(
                origin=self.origin,
                size=frontier.size,
                frontier=b"".join(frontier.to_hashes()),
                consent_generation=_state_t.c.consent_generation
                + sum(1 for e in entries if e.kind in _CONSENT_CHANGES),
            )
        )
        if frontier.size > first or first == 0:
            connection.execute(insert(_heads), [_head_row(head)])
        return _AppendResult(first, head, list(range(first, frontier.size)))

    def append_record(
        self, kind: str, record: dict[str, Any], *, subject: str | None = None
    ) -> tuple[int, SignedTreeHead]:
        """Append one entry whose record is ``record``'s canonical JSON (flows, revocations,
        retention): ids and counts, never identifiers."""
        indices, head = self.append([NewEntry(kind, canonical_json(record), subject)])
        return indices[0], head

    def latest_head(self) -> SignedTreeHead | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_heads).order_by(_heads.c.tree_size.desc()).limit(1)
            ).first()
        return None if row is None else _head_from_row(row)

    def head_at(self, tree_size: int) -> SignedTreeHead | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(_heads).where(_heads.c.tree_size == tree_size)).first()
        return None if row is None else _head_from_row(row)

    def size(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(select(_state_t.c.size).where(_state_t.c.id == 1)).scalar_one()
            )

    def frontier(self) -> MerkleFrontier:
        """The tree's frontier at its current size (kept with the state by every append)."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_state_t.c.size, _state_t.c.frontier).where(_state_t.c.id == 1)
            ).one()
        return _frontier(int(row.size), bytes(row.frontier))

    def leaf_hashes(self, *, since: int = 0, upto: int | None = None) -> list[bytes]:
        """Leaf hashes of entries ``since`` ≤ index < ``upto``, in order."""
        query = select(_entries.c.data).order_by(_entries.c.leaf_index)
        if since:
            query = query.where(_entries.c.leaf_index >= since)
        if upto is not None:
            query = query.where(_entries.c.leaf_index < upto)
        with self.engine.connect() as connection:
            return [leaf_hash(bytes(data)) for (data,) in connection.execute(query)]

    # --- subjects ---------------------------------------------------------------------------

    def pseudonym_for(self, external_id: str) -> str:
        """The pseudonym of the subject with ``external_id``; ``SubjectNotFound`` if none."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(_subjects.c.pseudonym).where(_subjects.c.external_id == external_id)
            ).scalar_one_or_none()
        if found is None:
            raise SubjectNotFound("no consent has been recorded for this subject")
        return str(found)

    def _pseudonyms(
        self, connection: Connection, external_ids: Sequence[str], now: datetime
    ) -> dict[str, str]:
        """Pseudonyms for external ids, creating random ones for new subjects."""
        wanted = sorted(set(external_ids))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for external_id, pseudonym in connection.execute(
                select(_subjects.c.external_id, _subjects.c.pseudonym).where(
                    _subjects.c.external_id.in_(chunk)
                )
            ):
                found[external_id] = pseudonym
        created = {x: random_bytes(16).hex() for x in wanted if x not in found}
        if created:
            connection.execute(
                insert(_subjects),
                [
                    {"pseudonym": p, "external_id": x, "created_at": to_db_time(now)}
                    for x, p in created.items()
                ],
            )
            found.update(created)
        return found

    # --- consent events ---------------------------------------------------------------------

    def record(self, submissions: Sequence[tuple[str, NewConsentEvent]]) -> list[ConsentEvent]:
        """Record consent events for ``(external_id, event)`` pairs in one transaction.

        Idempotent on event id: an event already recorded with the same content is
        returned as recorded; the same id with other content raises ``EventConflict``.
        """
        return self.record_counted(submissions)[0]

    def record_counted(
        self, submissions: Sequence[tuple[str, NewConsentEvent]]
    ) -> tuple[list[ConsentEvent], int]:
        """``record``, also saying how many events were new (the rest were already there)."""
        now = self._now()
        for _, event in submissions:
            event.check(now=now)
        try:
            with self.engine.begin() as connection:
                return self._record(connection, submissions, now)
        except IntegrityError as exc:  # a concurrent writer recorded the same id first
            raise EventConflict("an event id in this batch was recorded concurrently") from exc

    def _record(
        self,
        connection: Connection,
        submissions: Sequence[tuple[str, NewConsentEvent]],
        now: datetime,
    ) -> tuple[list[ConsentEvent], int]:
        pseudonyms = self._pseudonyms(connection, [e for e, _ in submissions], now)
        digests = [_content_digest(pseudonyms[x], event) for x, event in submissions]
        existing = self._existing(connection, [event.event_id for _, event in submissions])
        results: list[ConsentEvent | None] = []
        fresh: list[tuple[int, ConsentEvent]] = []
        seen: dict[str, str] = {}
        for position, ((_, event), digest) in enumerate(zip(submissions, digests, strict=True)):
            known = existing.get(event.event_id) or seen.get(event.event_id)
            if known is not None:
                if known != digest:
                    raise EventConflict(
                        f"event {event.event_id} is already recorded with other content"
                    )
                results.append(None)  # filled from the stored record below
                continue
            seen[event.event_id] = digest
            pseudonym = pseudonyms[submissions[position][0]]
            recorded = ConsentEvent(
                event_id=event.event_id,
                subject=pseudonym,
                event_type=event.event_type,
                purpose=event.purpose,
                purpose_version=purpose(event.purpose).version,
                recipient=event.recipient,
                channels=tuple(sorted(event.channels)),
                collected_at=event.collected_at.astimezone(UTC),
                collection_method=event.collection_method,
                actor=event.actor,
                recorded_at=now,
                leaf_index=-1,
                notice=event.notice,
                expires_at=None if event.expires_at is None else event.expires_at.astimezone(UTC),
                supersedes=event.supersedes,
            )
            results.append(recorded)
            fresh.append((position, recorded))
        if fresh:
            appended = self._append(
                connection,
                [
                    NewEntry(
                        CONSENT_KIND,
                        consent_record(event, controller=self.controller),
                        event.subject,
                    )
                    for _, event in fresh
                ],
                now,
            )
            event_rows = []
            for (position, pending), index in zip(fresh, appended.indices, strict=True):
                indexed = replace(pending, leaf_index=index)
                results[position] = indexed
                event_rows.append(_event_row(indexed, digests[position]))
            connection.execute(insert(_events), event_rows)
        missing = [submissions[i][1].event_id for i, r in enumerate(results) if r is None]
        if missing:
            stored = {e.event_id: e for e in self._events_by_id(connection, missing)}
            results = [r if r is not None else stored[s[1].event_id]
                       for r, s in zip(results, submissions, strict=True)]  # fmt: skip
        return [r for r in results if r is not None], len(fresh)

    def _existing(self, connection: Connection, event_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        ids = sorted(set(event_ids))
        for start in range(0, len(ids), 500):
            for event_id, digest in connection.execute(
                select(_events.c.event_id, _events.c.content_digest).where(
                    _events.c.event_id.in_(ids[start : start + 500])
                )
            ):
                found[event_id] = digest
        return found

    def _events_by_id(self, connection: Connection, event_ids: Sequence[str]) -> list[ConsentEvent]:
        rows = connection.execute(
            select(_records.c.leaf_index, _records.c.record)
            .join(_events, _events.c.leaf_index == _records.c.leaf_index)
            .where(_events.c.event_id.in_(list(event_ids)))
        )
        return [event_from_record(bytes(record), leaf_index=index) for index, record in rows]

    def events_of(self, pseudonym: str) -> list[ConsentEvent]:
        """Every consent event of a subject, in log order (data-subject access)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(_records.c.leaf_index, _records.c.record)
                .join(_entries, _entries.c.leaf_index == _records.c.leaf_index)
                .where(_records.c.subject == pseudonym, _entries.c.kind == CONSENT_KIND)
                .order_by(_records.c.leaf_index)
            )
            return [event_from_record(bytes(record), leaf_index=index) for index, record in rows]

    def states(self, pseudonym: str, *, now: datetime | None = None) -> list[ConsentState]:
        return states_of(self.events_of(pseudonym), now=now or self._now())

    def consent_version(self) -> int:
        """A number that goes up in the transaction of every consent record or erasure
        (and never otherwise changes the events): equal numbers, equal decisions."""
        return self.consent_position().version

    def consent_position(self) -> ConsentPosition:
        """The consent version and the log's size, read together."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(_state_t.c.consent_generation, _state_t.c.size).where(_state_t.c.id == 1)
            ).one_or_none()
        if found is None:
            return ConsentPosition(0, 0)
        return ConsentPosition(int(found.consent_generation), int(found.size))

    def subjects_changed_since(self, log_size: int) -> set[str] | None:
        """External ids of the subjects with a consent event at leaf ``log_size`` or later,
        or None when a subject was erased since (whom, the log no longer says). Leaves
        below a size the state row showed are committed: appends hold its lock."""
        with self.engine.connect() as connection:
            erased = connection.execute(
                select(_entries.c.leaf_index)
                .where(_entries.c.leaf_index >= log_size, _entries.c.kind == ERASURE_KIND)
                .limit(1)
            ).first()
            if erased is not None:
                return None
            # Subjects of the new leaves, not subjects joined to events: the planner then
            # walks only the leaves since ``log_size``.
            recent = select(_events.c.subject).where(_events.c.leaf_index >= log_size)
            return set(
                connection.execute(
                    select(_subjects.c.external_id).where(
                        _subjects.c.pseudonym.in_(recent), _subjects.c.external_id.is_not(None)
                    )
                ).scalars()
            )

    def valid_subjects(
        self, *, purpose: str, recipient: str, now: datetime, need_channel: bool = False
    ) -> dict[str, tuple[Channel, ...]]:
        """External ids whose consent for ``purpose`` to ``recipient`` is valid at ``now``.

        With ``need_channel``, only subjects who accept at least one channel (release).
        SQL only fetches each subject's candidate events in order (the rule's "latest");
        the status of the latest is ``consent.model.status_of``'s. Rows are read as plain
        tuples: at a million subjects, per-row ORM processing would cost seconds.
        """
        return self.valid_subjects_until(
            purpose=purpose, recipient=recipient, now=now, need_channel=need_channel
        )[0]

    def valid_subjects_until(
        self,
        *,
        purpose: str,
        recipient: str,
        now: datetime,
        need_channel: bool = False,
        subjects: Collection[str] | None = None,
    ) -> tuple[dict[str, tuple[Channel, ...]], datetime | None]:
        """``valid_subjects`` and the first moment after ``now`` at which the answer could
        differ with no new event (an expiry, or an event collected in the future), or
        None if time alone never changes it. With ``subjects`` (external ids), only those
        are decided, and only their events set that moment."""
        dialect = self.engine.dialect
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        condition = (
            f"e.purpose = {mark} AND (e.recipient = {mark} OR e.recipient = {mark}) "
            f"AND e.collected_at {{}} {mark}"
        )
        decisions = (
            "SELECT s.external_id, e.event_type, e.purpose_version, e.channels, "
            "e.expires_at FROM consent_events e "
            "JOIN consent_subjects s ON s.pseudonym = e.subject "
            f"WHERE {condition.format('<=')} AND s.external_id IS NOT NULL{{}} "
            "ORDER BY e.subject, e.collected_at, e.leaf_index"
        )
        future = f"SELECT min(e.collected_at) FROM consent_events e WHERE {condition.format('>')}"
        bound_now = _time_binder(self.engine)(to_db_time(now))
        decider = _SubjectDecider(
            purpose=purpose, now=now, need_channel=need_channel, to_time=_time_reader(dialect.name)
        )
        parameters: tuple[Any, ...] = (purpose, recipient, ANY_RECIPIENT, bound_now)
        with self.engine.connect() as connection:
            if subjects is None:
                decider.feed(connection.exec_driver_sql(decisions.format(""), parameters).cursor)
                decider.future(connection.exec_driver_sql(future, parameters).scalar())
            else:
                wanted = sorted(set(subjects))
                for start in range(0, len(wanted), _SUBSET_CHUNK):
                    chunk = tuple(wanted[start : start + _SUBSET_CHUNK])
                    # By pseudonym, so the decision index is searched per subject rather
                    # than scanned over the whole purpose.
                    among = (
                        " AND e.subject IN (SELECT pseudonym FROM consent_subjects "
                        f"WHERE external_id IN ({', '.join(mark for _ in chunk)}))"
                    )
                    decider.feed(
                        connection.exec_driver_sql(
                            decisions.format(among), parameters + chunk
                        ).cursor
                    )
                    decider.future(
                        connection.exec_driver_sql(future + among, parameters + chunk).scalar()
                    )
        return decider.valid, decider.horizon

    # --- erasure ------------------------------------------------------------------------

    def erase(self, external_id: str, *, actor: str, reason: str) -> ErasureResult:
        """Crypto-shred a subject: delete records and salts, keep the log; log the erasure."""
        now = self._now()
        with self.engine.begin() as connection:
            pseudonym = connection.execute(
                select(_subjects.c.pseudonym).where(_subjects.c.external_id == external_id)
            ).scalar_one_or_none()
            if pseudonym is None:
                raise SubjectNotFound("no consent subject with this external id")
            erased = connection.execute(
                select(_records.c.leaf_index).where(_records.c.subject == pseudonym)
            ).all()
            connection.execute(delete(_events).where(_events.c.subject == pseudonym))
            connection.execute(delete(_records).where(_records.c.subject == pseudonym))
            connection.execute(
                update(_subjects)
                .where(_subjects.c.pseudonym == pseudonym)
                .values(external_id=None, erased_at=to_db_time(now))
            )
            appended = self._append(
                connection,
                [
                    NewEntry(
                        ERASURE_KIND,
                        erasure_record(
                            subject=pseudonym,
                            erased_entries=len(erased),
                            actor=actor,
                            reason=reason,
                            erased_at=now,
                        ),
                        None,
                    )
                ],
                now,
            )
        return ErasureResult(pseudonym, len(erased), appended.head)

    def check_not_erased(self, pseudonym: str) -> None:
        with self.engine.connect() as connection:
            erased_at = connection.execute(
                select(_subjects.c.erased_at).where(_subjects.c.pseudonym == pseudonym)
            ).scalar_one_or_none()
        if erased_at is not None:
            raise SubjectErased("this subject was erased")

    # --- proofs -------------------------------------------------------------------------

    def subject_proof(self, pseudonym: str) -> dict[str, Any]:
        """An offline-checkable bundle: the subject's records, salts and inclusion proofs.

        Proofs are against the latest signed head (consent.proofs checks such a file).
        """
        head = self.latest_head()
        if head is None:
            raise SubjectNotFound("the audit log is empty")
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(_entries.c.leaf_index, _entries.c.kind, _records.c.record, _records.c.salt)
                .join(_records, _records.c.leaf_index == _entries.c.leaf_index)
                .where(_records.c.subject == pseudonym, _entries.c.leaf_index < head.tree_size)
                .order_by(_entries.c.leaf_index)
            ).all()
        if not rows:
            raise SubjectNotFound("no audit-log entries for this subject")
        hashes = self.leaf_hashes(upto=head.tree_size)
        proofs = inclusion_proofs(hashes, [int(r.leaf_index) for r in rows])
        return {
            "format": PROOF_FORMAT,
            "origin": self.origin,
            "signing_key_id": head.key_id,
            "tree_head": head.to_json(),
            "entries": [
                {
                    "leaf_index": int(r.leaf_index),
                    "kind": r.kind,
                    "record": bytes(r.record).decode("utf-8"),
                    "salt": bytes(r.salt).hex(),
                    "inclusion_proof": [h.hex() for h in proofs[int(r.leaf_index)]],
                }
                for r in rows
            ],
        }

    def iter_heads(self) -> Iterator[SignedTreeHead]:
        with self.engine.connect() as connection:
            for row in connection.execute(select(_heads).order_by(_heads.c.tree_size)):
                yield _head_from_row(row)


_SUBSET_CHUNK: Final = 500  # external ids per IN (...) when deciding a few subjects


class _SubjectDecider:
    """Decides each subject from its candidate events in decision order (the last one is
    the latest), keeping the earliest expiry still ahead."""

    def __init__(
        self, *, purpose: str, now: datetime, need_channel: bool, to_time: Callable[[Any], datetime]
    ) -> None:
        self._purpose = purpose
        self._now = now
        self._need_channel = need_channel
        self._to_time = to_time
        self.valid: dict[str, tuple[Channel, ...]] = {}
        self._soonest: datetime | None = None
        # Many subjects share a decision's inputs and a channel list: decide each once.
        self._decided: dict[tuple[str, int, Any], bool] = {}
        self._channel_sets: dict[str, tuple[Channel, ...]] = {}

    @property
    def horizon(self) -> datetime | None:
        return self._soonest

    def future(self, collected: Any) -> None:
        """An event collected after ``now`` changes the answer when its time comes."""
        if collected is not None:
            self._ahead(self._to_time(collected))

    def _ahead(self, moment: datetime) -> None:
        if self._soonest is None or moment < self._soonest:
            self._soonest = moment

    def feed(self, cursor: Any) -> None:
        """Rows (external id, type, version, channels, expiry) in decision order: each
        subject's rows together, its latest last (external ids and subjects are one to
        one, so the external id tells where a subject's rows end)."""
        previous: tuple[Any, ...] | None = None
        while True:
            rows = cursor.fetchmany(20_000)
            if not rows:
                break
            for row in rows:
                if previous is not None and row[0] != previous[0]:
                    self._collect(previous)
                previous = row
        if previous is not None:
            self._collect(previous)

    def _collect(self, row: tuple[Any, ...]) -> None:
        external_id, event_type, version, channels, expires = row
        key = (event_type, version, expires)
        ok = self._decided.get(key)
        if ok is None:
            expires_at = None if expires is None else self._to_time(expires)
            status = status_of(
                EventType(event_type),
                purpose=self._purpose,
                purpose_version=int(version),
                expires_at=expires_at,
                now=self._now,
            )
            ok = status is ConsentStatus.VALID
            if expires_at is not None and expires_at > self._now:
                self._ahead(expires_at)
            if len(self._decided) < 100_000:
                self._decided[key] = ok
        if ok and (channels or not self._need_channel):
            accepted = self._channel_sets.get(channels)
            if accepted is None:
                accepted = self._channel_sets[channels] = tuple(
                    Channel(c) for c in channels.split(",") if c
                )
            self.valid[external_id] = accepted


def _time_reader(backend: str) -> Callable[[Any], datetime]:
    """How a timestamp column reads back: SQLite gives SQLAlchemy's UTC text."""
    if backend == "sqlite":
        return lambda text: datetime.fromisoformat(text).replace(tzinfo=UTC)
    return from_db_time


def _time_binder(engine: Engine) -> Callable[[datetime], Any]:
    """How a timestamp is bound in raw SQL: as SQLAlchemy's own type would store it."""
    column = _events.c.collected_at.type.dialect_impl(engine.dialect)
    processor = column.bind_processor(engine.dialect)
    return processor or (lambda value: value)


def _frontier(size: int, packed: bytes) -> MerkleFrontier:
    hashes = [packed[i : i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE)]
    return MerkleFrontier.from_hashes(size, hashes)


def _head_row(head: SignedTreeHead) -> dict[str, Any]:
    return {
        "tree_size": head.tree_size,
        "origin": head.origin,
        "root_hash": head.root_hash,
        "timestamp": head.timestamp,
        "key_id": head.key_id,
        "signature": head.signature,
    }


def _head_from_row(row: Any) -> SignedTreeHead:
    return SignedTreeHead(
        origin=row.origin,
        tree_size=int(row.tree_size),
        root_hash=bytes(row.root_hash),
        timestamp=row.timestamp,
        key_id=row.key_id,
        signature=bytes(row.signature),
    )


def _content_digest(pseudonym: str, event: NewConsentEvent) -> str:
    """Digest of what the caller submitted (the idempotency comparison)."""
    notice = event.notice
    content = {
        "subject": pseudonym,
        "event_type": event.event_type.value,
        "purpose": event.purpose,
        "recipient": event.recipient,
        "channels": sorted(c.value for c in event.channels),
        "collected_at": format_time(event.collected_at),
        "collection_method": event.collection_method.value,
        "actor": event.actor,
        "notice": None
        if notice is None
        else [notice.reference, notice.version, notice.sha256, notice.language],
        "expires_at": None if event.expires_at is None else format_time(event.expires_at),
        "supersedes": event.supersedes,
    }
    return sha256(canonical_json(content)).hex()


def _event_row(event: ConsentEvent, digest: str) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "leaf_index": event.leaf_index,
        "subject": event.subject,
        "event_type": event.event_type.value,
        "purpose": event.purpose,
        "purpose_version": event.purpose_version,
        "recipient": event.recipient,
        "channels": ",".join(c.value for c in event.channels),
        "collected_at": to_db_time(event.collected_at),
        "expires_at": None if event.expires_at is None else to_db_time(event.expires_at),
        "recorded_at": to_db_time(event.recorded_at),
        "content_digest": digest,
    }
