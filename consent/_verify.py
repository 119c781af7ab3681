"""``accord audit verify``: recompute the log from its entries and check everything signed.

One pass over the entries in order:

* indices run 0, 1, 2, … with no gap (a gap names the missing entry);
* each entry's leaf data is the canonical ``{"commitment", "kind"}`` of its row's kind;
* where the record and salt still exist (not erased), the commitment recomputed from
  them at this index equals the entry's (an altered record, or entries or records moved
  to other positions, fail here and are named exactly);
* the root recomputed at every stored head's size equals that head's root, and every
  head's signature verifies under the node's public key. All heads are recomputed from
  one sequence of leaves, so every pair of them is consistent; an entry altered together
  with its record fails at the first head after it, which names the range;
* the stored append state (size, frontier) agrees with the entries, and no entry lies
  beyond the last signed head.

Local checks cannot catch a log that was truncated and re-signed, or rewritten by
someone holding the key: ``trusted_head`` (a head published earlier, later the broker's
witnessed heads) must verify and the log must contain it — an RFC 9162 consistency proof
from it to the latest head is built from the entries and checked.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Generator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, select

from consent._tables import ConsentEventRow, EntryRow, LogStateRow, RecordRow, TreeHeadRow
from consent.errors import LedgerTampered, ProofError, TrustedHeadMismatch
from consent.merkle import (
    EMPTY_ROOT,
    MerkleFrontier,
    consistency_proof,
    leaf_hash,
    verify_consistency,
)
from consent.records import (
    SignedTreeHead,
    commitment_from_leaf_data,
    parse_time,
    record_commitment,
)
from kernel.crypto import SALT_SIZE

__all__ = ["VerifyReport", "verify_log"]

_state_t = LogStateRow.__table__  # type: ignore[attr-defined]
_entries = EntryRow.__table__  # type: ignore[attr-defined]
_records = RecordRow.__table__  # type: ignore[attr-defined]
_heads = TreeHeadRow.__table__  # type: ignore[attr-defined]
_events = ConsentEventRow.__table__  # type: ignore[attr-defined]
_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class VerifyReport:
    entries: int
    heads: int
    records_checked: int
    erased_entries: int
    consent_events_checked: int
    latest_head: SignedTreeHead | None
    trusted_head_size: int | None


def verify_log(
    engine: Engine,
    *,
    public_key: bytes,
    trusted_head: SignedTreeHead | None = None,
    witnessed_heads: Sequence[SignedTreeHead] = (),
) -> VerifyReport:
    """Verify the whole log; raise ``LedgerTampered`` naming the first problem found.

    ``trusted_head`` (one head published earlier) and ``witnessed_heads`` (the heads a
    witness saw) must each be a prefix of this log: same root at their size, and no
    entries gone (``TrustedHeadMismatch`` otherwise). Their signatures are this log's.
    """
    with _snapshot(engine) as connection:
        state = _state(connection)
        size_at_start = int(state.size)
        if state.origin is None and size_at_start:
            raise LedgerTampered("the append state names no log but the log holds entries")
        heads = [
            SignedTreeHead(
                origin=row.origin,
                tree_size=int(row.tree_size),
                root_hash=bytes(row.root_hash),
                timestamp=row.timestamp,
                key_id=row.key_id,
                signature=bytes(row.signature),
            )
            for row in connection.execute(select(_heads).order_by(_heads.c.tree_size))
        ]
        for head in heads:
            head.verify(public_key)
            if state.origin is not None and head.origin != state.origin:
                raise LedgerTampered(
                    f"the head of size {head.tree_size} names another log ({head.origin!r})"
                )
        for earlier in (*witnessed_heads, *([trusted_head] if trusted_head else [])):
            earlier.verify(public_key)
            if state.origin is not None and earlier.origin != state.origin:
                raise TrustedHeadMismatch(
                    f"the trusted head is of another log ({earlier.origin!r})"
                )
        witnessed_roots: dict[int, bytes] = {}
        witnessed_sizes = {h.tree_size for h in witnessed_heads}

        frontier = MerkleFrontier()
        want_heads = iter(heads)
        next_head = next(want_heads, None)
        previous_size = 0
        checked = erased = 0
        leaf_hashes: list[bytes] | None = [] if trusted_head is not None else None
        trusted_root: bytes | None = None
        if next_head is not None and next_head.tree_size == 0:
            _check_root(next_head, EMPTY_ROOT, previous_size)
            next_head = next(want_heads, None)
        with closing(_stream(connection)) as rows:
            for row in rows:
                index = frontier.size
                if row.leaf_index != index:
                    raise LedgerTampered(
                        f"entry {index} is missing (the next entry is {row.leaf_index})"
                    )
                data = bytes(row.data)
                commitment = _commitment_of(index, row.kind, data)
                if row.record is not None:
                    salt = bytes(row.salt or b"")
                    if len(salt) != SALT_SIZE or (
                        record_commitment(salt, index, bytes(row.record)) != commitment
                    ):
                        raise LedgerTampered(
                            f"entry {index}: its record does not match its commitment (the "
                            "record, its salt or the entry was altered, or entries were moved)"
                        )
                    checked += 1
                else:
                    erased += 1
                hashed = leaf_hash(data)
                frontier.append(hashed)
                if leaf_hashes is not None:
                    leaf_hashes.append(hashed)
                size = frontier.size
                if trusted_head is not None and size == trusted_head.tree_size:
                    trusted_root = frontier.root()
                if size in witnessed_sizes:
                    witnessed_roots[size] = frontier.root()
                while next_head is not None and next_head.tree_size == size:
                    _check_root(next_head, frontier.root(), previous_size)
                    previous_size = size
                    next_head = next(want_heads, None)
        size = frontier.size
        if next_head is not None:
            raise LedgerTampered(
                f"the signed head of size {next_head.tree_size} covers entries that are gone: "
                f"the log holds {size} (entries {size}..{next_head.tree_size - 1} were removed)"
            )
        last_signed = heads[-1].tree_size if heads else 0
        if last_signed != size:
            raise LedgerTampered(
                f"entries {last_signed}..{size - 1} lie beyond the last signed head "
                "(inserted after it was signed, or the heads were removed)"
            )
        if int(state.size) != size or bytes(state.frontier) != b"".join(frontier.to_hashes()):
            raise LedgerTampered(
                f"the append state (size {int(state.size)}) does not match the {size} entries"
            )
        projection_checked = _check_consent_projection(connection)

    if trusted_head is not None:
        _check_trusted(trusted_head, trusted_root, leaf_hashes or [], size)
    for witnessed in sorted(witnessed_heads, key=lambda h: h.tree_size):
        _check_witnessed(witnessed, witnessed_roots.get(witnessed.tree_size, EMPTY_ROOT), size)
    trusted_sizes = [
        h.tree_size for h in (*witnessed_heads, *([trusted_head] if trusted_head else []))
    ]
    return VerifyReport(
        entries=size,
        heads=len(heads),
        records_checked=checked,
        erased_entries=erased,
        consent_events_checked=projection_checked,
        latest_head=heads[-1] if heads else None,
        trusted_head_size=max(trusted_sizes) if trusted_sizes else None,
    )


def _state(connection: Any) -> Any:
    state = connection.execute(
        select(_state_t.c.origin, _state_t.c.size, _state_t.c.frontier).where(_state_t.c.id == 1)
    ).first()
    if state is None:
        raise LedgerTampered("the append state of the log is missing")
    return state


@contextmanager
def _snapshot(engine: Engine) -> Generator[Connection, None, None]:
    """A connection that reads one consistent snapshot, whatever appends run meanwhile.

    PostgreSQL: a REPEATABLE READ transaction. SQLite: an explicit read transaction (the
    driver would otherwise run each SELECT on its own, in whatever state it finds).
    """
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        else:
            connection.exec_driver_sql("BEGIN")
        try:
            yield connection
        finally:
            connection.rollback()


def _raw_rows(connection: Any, sql: str) -> Generator[tuple[Any, ...], None, None]:
    """Rows as plain driver tuples, in batches: verification reads every row, and per-row
    ORM processing would be most of its cost. On PostgreSQL a server-side cursor (memory
    stays flat); the cursor is the connection's, so it reads the same snapshot."""
    dbapi = connection.connection.dbapi_connection
    if connection.dialect.name == "postgresql":
        cursor = dbapi.cursor(name=f"accord_verify_{uuid.uuid4().hex}")
    else:
        cursor = dbapi.cursor()
    try:
        cursor.execute(sql)
        while True:
            rows = cursor.fetchmany(_BATCH)
            if not rows:
                return
            yield from rows
    finally:
        cursor.close()


class _Entry(NamedTuple):
    leaf_index: int
    kind: str
    data: bytes
    record: bytes | None
    salt: bytes | None


def _stream(connection: Any) -> Generator[_Entry, None, None]:
    sql = (
        "SELECT e.leaf_index, e.kind, e.data, r.record, r.salt FROM audit_entries e "
        "LEFT JOIN audit_records r ON r.leaf_index = e.leaf_index ORDER BY e.leaf_index"
    )
    with closing(_raw_rows(connection, sql)) as rows:
        for row in rows:
            yield _Entry(*row)


def _check_consent_projection(connection: Any) -> int:
    """The consent-event columns flows decide on must say what the committed records say."""
    sql = (
        "SELECT c.leaf_index, c.event_id, c.subject, c.event_type, c.purpose, "
        "c.purpose_version, c.recipient, c.channels, c.collected_at, c.expires_at, "
        "r.record, e.kind FROM consent_events c "
        "LEFT JOIN audit_records r ON r.leaf_index = c.leaf_index "
        "LEFT JOIN audit_entries e ON e.leaf_index = c.leaf_index"
    )
    stored_time = _stored_time(connection.dialect.name)
    checked = 0
    with closing(_raw_rows(connection, sql)) as rows:
        for row in rows:
            (leaf_index, event_id, subject, event_type, purpose, version, recipient,
             channels, collected_at, expires_at, record, kind) = row  # fmt: skip
            if record is None or kind != "consent":
                raise LedgerTampered(
                    f"consent event {event_id} points at entry {leaf_index}, which holds no "
                    "consent record"
                )
            committed = json.loads(record)
            expected_expiry = committed.get("expires_at")
            if (
                committed.get("event_id") != event_id
                or committed.get("subject") != subject
                or committed.get("event_type") != event_type
                or committed.get("purpose") != purpose
                or committed.get("purpose_version") != int(version)
                or committed.get("recipient") != recipient
                or ",".join(committed.get("channels") or ()) != channels
                or stored_time(committed.get("collected_at")) != collected_at
                or (None if expected_expiry is None else stored_time(expected_expiry)) != expires_at
            ):
                raise LedgerTampered(
                    f"consent event {event_id} (entry {leaf_index}): its columns, which flows "
                    "decide on, differ from the committed record"
                )
            checked += 1
    return checked


def _stored_time(backend: str) -> Any:
    """How a record's RFC 3339 time reads back from the column (to compare without parsing
    a million datetimes): SQLite keeps SQLAlchemy's UTC text, PostgreSQL a datetime."""
    if backend == "sqlite":
        return lambda text: None if text is None else text[:-1].replace("T", " ")
    return lambda text: None if text is None else parse_time(text)


def _commitment_of(index: int, kind: str, data: bytes) -> bytes:
    parsed = commitment_from_leaf_data(data)
    if parsed is None:
        raise LedgerTampered(f"entry {index}: its leaf data is not an entry")
    if parsed[0] != kind:
        raise LedgerTampered(f"entry {index}: its leaf data does not match its kind {kind!r}")
    return parsed[1]


def _check_root(head: SignedTreeHead, root: bytes, previous_size: int) -> None:
    if head.root_hash != root:
        if head.tree_size == 0:
            raise LedgerTampered("the signed head of size 0 does not have the empty root")
        raise LedgerTampered(
            f"the signed head of size {head.tree_size} does not match the entries: an entry "
            f"in {previous_size}..{head.tree_size - 1} was altered, inserted, removed or "
            "reordered together with its record"
        )


def _check_witnessed(witnessed: SignedTreeHead, root_at_size: bytes, size: int) -> None:
    """A witnessed head is a prefix of the log: its root is the log's root at its size (the
    leaves up to it are the ones the final root was computed from, so consistency holds)."""
    if witnessed.tree_size > size:
        raise TrustedHeadMismatch(
            f"the log was truncated: it holds {size} entries, but the witness saw a head of "
            f"size {witnessed.tree_size}"
        )
    if root_at_size != witnessed.root_hash:
        raise TrustedHeadMismatch(
            f"the log is not the one the witness saw at size {witnessed.tree_size}: its "
            "history was rewritten (and re-signed)"
        )


def _check_trusted(
    trusted: SignedTreeHead, root_at_size: bytes | None, leaf_hashes: list[bytes], size: int
) -> None:
    if trusted.tree_size > size:
        raise TrustedHeadMismatch(
            f"the log was truncated: it holds {size} entries, but a head published earlier "
            f"covers {trusted.tree_size}"
        )
    if trusted.tree_size == 0:
        return
    if root_at_size != trusted.root_hash:
        raise TrustedHeadMismatch(
            f"the log is not the one the trusted head of size {trusted.tree_size} signed: "
            "its history was rewritten (and re-signed)"
        )
    latest_root = MerkleFrontier.from_leaf_hashes(leaf_hashes).root()
    proof = consistency_proof(leaf_hashes, trusted.tree_size)
    try:
        verify_consistency(trusted.tree_size, size, proof, trusted.root_hash, latest_root)
    except ProofError as exc:  # pragma: no cover - implied by the root check above
        raise TrustedHeadMismatch(f"no consistency with the trusted head: {exc}") from exc
