"""Customer import: read a CRM export, validate and normalize rows, upsert in batches.

Pipeline: the main process reads the file and cuts it into batches; a process pool
(started once per import) validates, normalizes and hashes each batch to the curve —
the CPU-heavy part; the main process upserts each batch in one transaction with bulk
SQLAlchemy Core statements and writes rejects as it goes. At most ``2 × workers``
batches are in flight, so memory stays bounded whatever the file size. A crash loses at
most the batch in flight; the store stays consistent and a re-run completes it, because
the upsert is keyed on external id and a record equal to the stored one is "unchanged".
"""

from __future__ import annotations

import csv
import gc
import io
import json
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, NamedTuple

from sqlalchemy import Connection, Dialect, Engine, delete, update

from kernel.db import foreign_keys_trusted
from kernel.telemetry import tracer
from node._store import bump_store_generation
from node._tables import CustomerRow, IdentifierRow, InterestRow, PurchaseRow
from node.errors import ImportSourceError, InvalidRow
from node.normalize import example_phone
from node.records import COLUMNS, CustomerRecord, parse_record

# Rows per committed transaction. Large transactions matter on SQLite: every commit
# rewrites each index page it touched (random e-mails touch most of them), so the write
# cost per row falls several-fold from 2,000 to 20,000 rows per transaction.
DEFAULT_BATCH_SIZE = 20_000
# Rows per unit of work sent to a worker process.
WORKER_CHUNK = 1000
# The file is decoded with errors="surrogateescape": a byte that is not valid UTF-8
# becomes a lone surrogate in U+DC80..U+DCFF, which marks its row for the reject file.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_LOOKUP_CHUNK = 500  # external ids per IN (...) lookup
_CUSTOMER_COLUMNS = (
    "external_id",
    "first_name",
    "last_name",
    "country",
    "age_band",
    "region",
    "loyalty_tier",
    "channel_email",
    "channel_phone",
    "channel_post",
    "channel_sms",
)
# The longest CSV record read (characters, quoted newlines included): longer ones are
# rejected, which also bounds what an unclosed quote can pull into memory.
MAX_CSV_RECORD = 1 << 20

_customers = CustomerRow.__table__  # type: ignore[attr-defined]
_identifiers = IdentifierRow.__table__  # type: ignore[attr-defined]
_interests = InterestRow.__table__  # type: ignore[attr-defined]
_purchases = PurchaseRow.__table__  # type: ignore[attr-defined]


class SourceFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"

    @classmethod
    def for_path(cls, path: Path) -> SourceFormat:
        suffix = path.suffix.lower()
        if suffix in (".csv", ".txt"):
            return cls.CSV
        if suffix in (".jsonl", ".ndjson"):
            return cls.JSONL
        raise ImportSourceError(
            f"cannot tell the format of {path.name!r} from its extension: "
            "use .csv or .jsonl, or pass --format"
        )


@dataclass(frozen=True, slots=True)
class Reject:
    line: int
    external_id: str
    reason: str


@dataclass(slots=True)
class ImportSummary:
    rows: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejects_path: str | None = None
    ignored_columns: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "imported": self.imported,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "rejects_path": self.rejects_path,
            "ignored_columns": self.ignored_columns,
        }


RawRow = tuple[int, dict[str, Any]]  # (line number, mapped fields)


class PreparedCustomer(NamedTuple):
    """A validated row as it travels from a worker to the writer: plain values only.

    Dates and amounts travel as text (pickling ``date`` and ``Decimal`` objects costs more
    than validating the row); the writer hands them to the database as it needs them.
    """

    line: int
    external_id: str
    digest: bytes
    # first_name, last_name, country, age_band, region, loyalty_tier,
    # channel_email, channel_phone, channel_post, channel_sms
    attributes: tuple[str | bool | None, ...]
    identifiers: tuple[tuple[str, str, bytes], ...]  # (kind, normalized value, point)
    interests: tuple[str, ...]
    purchases: tuple[tuple[str, str, str], ...]  # (ISO date, category, amount)


Prepared = PreparedCustomer | Reject


def prepare_batch(rows: list[RawRow | Reject], default_region: str) -> list[Prepared]:
    """Validate a batch of rows; runs in the worker processes.

    Rows the reader already rejected travel through unchanged, so rejects are written
    in file order.
    """
    out: list[Prepared] = []
    for row in rows:
        if isinstance(row, Reject):
            out.append(row)
            continue
        line, fields = row
        try:
            record = parse_record(fields, default_region=default_region)
        except InvalidRow as exc:
            out.append(Reject(line, _external_id_for_reject(fields), str(exc)))
            continue
        out.append(_prepared(line, record))
    return out


def _prepared(line: int, record: CustomerRecord) -> PreparedCustomer:
    channels = record.channels
    return PreparedCustomer(
        line,
        record.external_id,
        record.digest(),
        (
            record.first_name,
            record.last_name,
            record.country,
            record.age_band,
            record.region,
            record.loyalty_tier,
            "email" in channels,
            "phone" in channels,
            "post" in channels,
            "sms" in channels,
        ),
        tuple((i.kind.value, i.value, i.point) for i in record.identifiers),
        record.interests,
        tuple((p.purchased_on.isoformat(), p.category, str(p.amount)) for p in record.purchases),
    )


def _external_id_for_reject(fields: Mapping[str, Any]) -> str:
    value = fields.get("external_id")
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value).strip()[:128]
    return ""


class _CountingReader(io.RawIOBase):
    """Counts bytes read from the file so progress can be shown against its size."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        super().close()
        self._raw.close()

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        self.consumed += n or 0
        return n or 0


def _mapped(fields: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    return {mapping.get(key, key): value for key, value in fields.items()}


@dataclass(frozen=True, slots=True)
class CsvLines:
    """Whole CSV records as the file spells them, for a worker to parse.

    The main process only cuts the file at record boundaries (``csv_line_chunks``);
    parsing, the row checks and the mapping to columns happen in the workers, so the
    main process neither parses nor pickles a dictionary per row.
    """

    first_line: int  # physical line number of lines[0]
    names: tuple[str, ...]  # the header after mapping
    lines: list[str]


def _quoted_after(line: str, quoted: bool) -> bool:
    """Whether the csv module is inside a quoted field at the end of ``line``.

    ``quoted`` is the state at its start. This follows the csv module's default dialect
    (delimiter ``,``, quote ``"``, doubled quotes, not strict): a quote opens a quoted
    field only at the start of a field, ``""`` inside one is a literal quote, and any
    other quote is an ordinary character. A property test checks that cutting files
    where this says "not quoted" gives exactly the records the csv module reads.
    """
    at = 0
    while True:
        found = line.find('"', at)
        if found < 0:
            return quoted
        if quoted:
            if line.startswith('"', found + 1):
                at = found + 2  # a doubled quote: still inside
                continue
            quoted = False
        elif found == 0 or line[found - 1] == ",":
            quoted = True
        at = found + 1


def csv_line_chunks(
    text: IO[str], mapping: Mapping[str, str], summary: ImportSummary, size: int
) -> Iterator[CsvLines | list[RawRow | Reject]]:
    """Cut a CSV file into chunks of ``size`` whole records, reading the header first.

    A record longer than ``MAX_CSV_RECORD`` characters (a closing quote missing, most
    likely) is rejected on its own, and reading goes on at the next line.
    """
    lines = iter(text)
    header: list[str] = []
    quoted = False
    for line in lines:
        header.append(line)
        quoted = _quoted_after(line, quoted)
        if not quoted:
            break
    if not header:
        return
    if quoted or sum(map(len, header)) > MAX_CSV_RECORD:
        raise ImportSourceError(
            f"the CSV header cannot be read: a quoted field never closes, or it is longer "
            f"than {MAX_CSV_RECORD:,} characters"
        )
    csv.field_size_limit(MAX_CSV_RECORD)
    try:
        cells = next(csv.reader(header), [])
    except csv.Error as exc:
        raise ImportSourceError(f"the CSV header cannot be read: {exc}") from exc
    names = tuple(mapping.get(name.strip(), name.strip()) for name in cells)
    _check_columns(list(names), summary)
    first_line = len(header) + 1
    chunk: list[str] = []
    records = 0
    record_start = 0  # where the record being read starts in chunk
    record_chars = 0
    for line in lines:
        chunk.append(line)
        record_chars += len(line)
        if quoted or '"' in line:
            quoted = _quoted_after(line, quoted)
        if record_chars > MAX_CSV_RECORD:
            # The records before this one go first, so rejects stay in file order.
            if record_start:
                yield CsvLines(first_line, names, chunk[:record_start])
            start = first_line + record_start
            reason = (
                f"the CSV row is longer than {MAX_CSV_RECORD:,} characters "
                "(is a closing quote missing?)"
            )
            yield [Reject(start, "", reason)]
            first_line += len(chunk)
            chunk, records, record_start, record_chars, quoted = [], 0, 0, 0, False
            continue
        if quoted:
            continue  # the record goes on in the next line
        record_chars = 0
        records += 1
        if records >= size:
            yield CsvLines(first_line, names, chunk)
            first_line += len(chunk)
            chunk, records = [], 0
        record_start = len(chunk)
    if chunk:
        yield CsvLines(first_line, names, chunk)


def csv_records(chunk: CsvLines) -> Iterator[RawRow | Reject]:
    """The rows of a chunk, each with the physical line it starts on (runs in workers)."""
    csv.field_size_limit(MAX_CSV_RECORD)  # per process; no field is longer than its record
    names = chunk.names
    # Undecodable bytes are rare: one search over the chunk spares one per cell.
    undecodable = any(map(_UNDECODABLE.search, chunk.lines))
    reader = csv.reader(chunk.lines)
    consumed = 0  # lines of the chunk read so far
    while True:
        start = chunk.first_line + consumed
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            consumed = reader.line_num
            yield Reject(start, "", f"the CSV row cannot be parsed: {exc}")
            continue
        consumed = reader.line_num
        if not "".join(cells).strip():
            continue  # blank line: not a row
        if len(cells) != len(names):
            yield Reject(start, "", f"row has {len(cells)} fields but the header has {len(names)}")
            continue
        fields = {
            name: (cell if cell != "" else None) for name, cell in zip(names, cells, strict=True)
        }
        if undecodable and any(map(_UNDECODABLE.search, cells)):
            yield Reject(start, _external_id_for_reject(fields), "row is not valid UTF-8")
            continue
        yield (start, fields)


Work = CsvLines | list[RawRow | Reject]  # what a worker is given: a chunk of lines or rows


def prepare(work: Work, default_region: str) -> list[Prepared]:
    """Validate a chunk of CSV lines or of rows; runs in the worker processes."""
    rows = list(csv_records(work)) if isinstance(work, CsvLines) else work
    return prepare_batch(rows, default_region)


def _jsonl_rows(
    text: IO[str], mapping: Mapping[str, str], summary: ImportSummary
) -> Iterator[RawRow | Reject]:
    seen_columns: set[str] = set()
    for line_no, line in enumerate(text, start=1):
        if not line.strip():
            continue
        if _UNDECODABLE.search(line):
            yield Reject(line_no, "", "line is not valid UTF-8")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Reject(line_no, "", f"line is not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            yield Reject(line_no, "", "line is not a JSON object")
            continue
        fields = _mapped(obj, mapping)
        new_columns = set(fields) - seen_columns
        if new_columns:
            seen_columns |= new_columns
            summary.ignored_columns = sorted(seen_columns - set(COLUMNS))
        yield (line_no, fields)


def _check_columns(names: list[str], summary: ImportSummary) -> None:
    if "external_id" not in names:
        raise ImportSourceError(
            "the file has no external_id column (map one with --map SOURCE=external_id)"
        )
    if "email" not in names and "phone" not in names:
        raise ImportSourceError(
            "the file has neither an email nor a phone column (map one with --map SOURCE=email)"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ImportSourceError(f"columns appear twice after mapping: {', '.join(duplicates)}")
    summary.ignored_columns = sorted(set(names) - set(COLUMNS))


def _batches(rows: Iterator[RawRow | Reject], size: int) -> Iterator[list[RawRow | Reject]]:
    batch: list[RawRow | Reject] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _RejectWriter:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["line", "external_id", "reason"])

    def write(self, reject: Reject) -> None:
        self._writer.writerow([reject.line, reject.external_id, reject.reason])

    def close(self) -> None:
        self._file.close()


def run_import(
    source: Path,
    *,
    engine: Engine,
    default_region: str,
    rejects_path: Path,
    mapping: Mapping[str, str] | None = None,
    source_format: SourceFormat | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ImportSummary:
    """Import ``source`` into the store behind ``engine``; see the module docstring.

    ``on_progress(bytes_read, total_bytes)`` is called after every batch.
    """
    fmt = source_format or SourceFormat.for_path(source)
    mapping = dict(mapping or {})
    workers = workers if workers is not None else (os.cpu_count() or 1)
    summary = ImportSummary(rejects_path=str(rejects_path))
    try:
        raw = source.open("rb")
    except OSError as exc:
        raise ImportSourceError(f"cannot open {source}: {exc.strerror}") from exc
    total_bytes = os.fstat(raw.fileno()).st_size
    counter = _CountingReader(raw)
    text = io.TextIOWrapper(
        io.BufferedReader(counter),
        encoding="utf-8-sig",
        errors="surrogateescape",
        newline="" if fmt is SourceFormat.CSV else None,
    )
    reject_file = _RejectWriter(rejects_path)
    seen: dict[str, int] = {}

    def reject(item: Reject) -> None:
        summary.rejected += 1
        reject_file.write(item)

    writer = _BulkWriter(engine.dialect)
    pool = _pool(workers, default_region)
    writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accord-import-writer")
    try:
        with _collector_paused(), tracer().start_as_current_span("node.import") as span:
            span.set_attribute("accord.import.format", fmt.value)
            pending: list[PreparedCustomer] = []
            in_write: Future[tuple[int, int, int]] | None = None

            def write(batch: list[PreparedCustomer]) -> tuple[int, int, int]:
                # Every child row carries a customer id read or inserted in the same
                # transaction: the constraint holds by construction, and checking it
                # cost a sixth of the writer's time.
                with engine.connect() as connection, foreign_keys_trusted(connection):
                    with connection.begin():
                        return writer.upsert(connection, batch, now())

            def settle() -> None:
                """Wait for the transaction in flight and count what it did."""
                nonlocal in_write
                if in_write is None:
                    return
                imported, updated, unchanged = in_write.result()
                in_write = None
                summary.imported += imported
                summary.updated += updated
                summary.unchanged += unchanged
                if on_progress is not None:
                    on_progress(counter.consumed, total_bytes)

            def commit() -> None:
                # One transaction at a time, on the writer thread: the database driver
                # releases the GIL while it writes, so this thread keeps reading the file
                # and feeding the workers meanwhile.
                nonlocal in_write, pending
                settle()
                if pending:
                    in_write = writes.submit(write, pending)
                    pending = []

            chunk_size = min(batch_size, WORKER_CHUNK)
            work: Iterator[Work] = (
                csv_line_chunks(text, mapping, summary, chunk_size)
                if fmt is SourceFormat.CSV
                else _batches(_jsonl_rows(text, mapping, summary), chunk_size)
            )
            for prepared in _prepared_batches(
                work,
                pool,
                default_region,
                # Workers keep validating while a transaction commits: the window holds
                # a whole transaction's worth of chunks plus two per worker.
                window=2 * workers + -(-batch_size // chunk_size),
            ):
                summary.rows += len(prepared)
                for item in prepared:
                    if isinstance(item, Reject):
                        reject(item)
                        continue
                    first = seen.setdefault(item.external_id, item.line)
                    if first != item.line:
                        reject(
                            Reject(
                                item.line,
                                item.external_id,
                                f"external_id appears again (first at line {first})",
                            )
                        )
                        continue
                    pending.append(item)
                if len(pending) >= batch_size:
                    commit()
            commit()
            settle()
            for key, value in summary.as_dict().items():
                if isinstance(value, int):
                    span.set_attribute(f"accord.import.{key}", value)
    finally:
        writes.shutdown(wait=True)
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        reject_file.close()
        text.close()
    return summary


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while the main process imports.

    The main process keeps a window of validated batches and a transaction's worth of
    rows alive, hundreds of thousands of tuples, and every full collection walks them
    all: about a sixth of its CPU time at 300,000 rows. Reference counting still frees
    everything the import lets go of; cycles, if any, wait for the collector to resume.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _pool(workers: int, default_region: str) -> ProcessPoolExecutor | None:
    if workers <= 1:
        return None
    # forkserver: workers start clean (no inherited database connections or threads).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["node._import"])
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_worker_ready,
        initargs=(default_region,),
    )


def _worker_ready(default_region: str) -> None:
    """Load what every row needs, then take it out of the garbage collector's sight.

    Validating a row allocates thousands of small objects, so the collector runs often,
    and each full collection walks every live object: the modules and phonenumbers'
    metadata, which never become garbage. Frozen, they are skipped (a few percent of a
    worker's time in ``accord bench import``).
    """
    warm_up = {
        "external_id": "warm-up",
        "email": "warm-up@example.com",
        "phone": example_phone(default_region),
    }
    prepare_batch([(0, warm_up)], default_region)
    gc.collect()
    gc.freeze()


def _prepared_batches(
    batches: Iterator[Work],
    pool: ProcessPoolExecutor | None,
    default_region: str,
    *,
    window: int,
) -> Iterator[list[Prepared]]:
    if pool is None:
        for batch in batches:
            yield prepare(batch, default_region)
        return
    # A bounded window of batches in flight keeps memory flat on any file size.
    in_flight: deque[Future[list[Prepared]]] = deque()
    for batch in batches:
        in_flight.append(pool.submit(prepare, batch, default_region))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


class _BulkWriter:
    """Upserts prepared customers with one executemany per table and batch.

    SQLAlchemy Core's executemany spends several microseconds per row building parameter
    dictionaries; at a million customers (five million rows with their children) that is
    most of the import. So the statements are written once per dialect and run through
    ``exec_driver_sql`` with tuples, and the few conversions the drivers need are done
    here: SQLite gets amounts as REAL and timestamps in SQLAlchemy's own text format
    (what the ORM would have stored, so ORM reads see the same values); PostgreSQL casts
    ISO dates and decimal strings itself.
    """

    def __init__(self, dialect: Dialect) -> None:
        self._sqlite = dialect.name == "sqlite"
        self._mark = mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self._lookups: dict[int, str] = {}
        timestamp_type = _customers.c.created_at.type.dialect_impl(dialect)
        self._timestamp = timestamp_type.bind_processor(dialect) or (lambda value: value)

        def statement(table: Any, columns: tuple[str, ...]) -> str:
            marks = ", ".join(mark for _ in columns)
            return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"

        self._insert_customers = statement(
            _customers,
            (
                *_CUSTOMER_COLUMNS,
                "record_digest",
                "created_at",
                "updated_at",
                "changed_generation",
            ),
        )
        self._last_id_sql = f"SELECT coalesce(max(id), 0) FROM {_customers.name}"
        self._insert_identifiers = statement(
            _identifiers, ("customer_id", "kind", "value", "point")
        )
        self._insert_interests = statement(_interests, ("customer_id", "interest"))
        self._insert_purchases = statement(
            _purchases, ("customer_id", "purchased_on", "category", "amount")
        )

    def upsert(
        self, connection: Connection, customers: list[PreparedCustomer], now: datetime
    ) -> tuple[int, int, int]:
        """Insert new customers, replace changed ones, leave equal ones; return the counts."""
        if not customers:
            return 0, 0, 0
        existing = self._lookup(connection, [c.external_id for c in customers])
        new: list[PreparedCustomer] = []
        changed: list[tuple[int, PreparedCustomer]] = []
        unchanged = 0
        for customer in customers:
            found = existing.get(customer.external_id)
            if found is None:
                new.append(customer)
            elif found[1] == customer.digest:
                unchanged += 1
            else:
                changed.append((found[0], customer))
        if not new and not changed:
            return 0, 0, unchanged
        # Raised first: every row this batch writes carries the batch's generation.
        generation = bump_store_generation(connection)
        stamp = self._timestamp(now)
        with_ids: list[tuple[int, PreparedCustomer]] = list(changed)
        if new:
            last_id = self._last_id(connection) if self._sqlite else None
            connection.exec_driver_sql(
                self._insert_customers,
                [(c.external_id, *c.attributes, c.digest, stamp, stamp, generation) for c in new],
            )
            if last_id is not None and self._last_id(connection) == last_id + len(new):
                # SQLite gives each new row the largest id so far plus one (it only
                # picks at random once ids reach 2**63 - 1, and then this check fails):
                # the batch's ids are the next len(new) in insertion order.
                with_ids.extend(zip(range(last_id + 1, last_id + 1 + len(new)), new, strict=True))
            else:
                ids = self._lookup(connection, [c.external_id for c in new])
                with_ids.extend((ids[c.external_id][0], c) for c in new)
        if changed:
            changed_ids = [cid for cid, _ in changed]
            for table in (_identifiers, _interests, _purchases):
                connection.execute(delete(table).where(table.c.customer_id.in_(changed_ids)))
            for cid, customer in changed:
                values = dict(
                    zip(
                        _CUSTOMER_COLUMNS,
                        (customer.external_id, *customer.attributes),
                        strict=True,
                    )
                )
                connection.execute(
                    update(_customers)
                    .where(_customers.c.id == cid)
                    .values(
                        {
                            **values,
                            "record_digest": customer.digest,
                            "updated_at": now,
                            "changed_generation": generation,
                        }
                    )
                )
        self._insert_children(connection, with_ids)
        return len(new), len(changed), unchanged

    def _lookup(
        self, connection: Connection, external_ids: list[str]
    ) -> dict[str, tuple[int, bytes]]:
        found: dict[str, tuple[int, bytes]] = {}
        for start in range(0, len(external_ids), _LOOKUP_CHUNK):
            chunk = external_ids[start : start + _LOOKUP_CHUNK]
            result = connection.exec_driver_sql(self._lookup_sql(len(chunk)), tuple(chunk))
            for row_id, external_id, digest in result.all():
                found[external_id] = (row_id, bytes(digest))
        return found

    def _last_id(self, connection: Connection) -> int:
        return int(connection.exec_driver_sql(self._last_id_sql).scalar_one())

    def _lookup_sql(self, size: int) -> str:
        sql = self._lookups.get(size)
        if sql is None:
            marks = ", ".join(self._mark for _ in range(size))
            sql = (
                f"SELECT id, external_id, record_digest FROM {_customers.name} "
                f"WHERE external_id IN ({marks})"
            )
            self._lookups[size] = sql
        return sql

    def _insert_children(
        self, connection: Connection, with_ids: list[tuple[int, PreparedCustomer]]
    ) -> None:
        identifiers = [(cid, *i) for cid, c in with_ids for i in c.identifiers]
        interests = [(cid, interest) for cid, c in with_ids for interest in c.interests]
        purchases: list[tuple[int, str, str, str | float]]
        if self._sqlite:
            purchases = [
                (cid, day, category, float(amount))
                for cid, c in with_ids
                for day, category, amount in c.purchases
            ]
        else:
            purchases = [(cid, *p) for cid, c in with_ids for p in c.purchases]
        for sql, rows in (
            (self._insert_identifiers, identifiers),
            (self._insert_interests, interests),
            (self._insert_purchases, purchases),
        ):
            if rows:
                connection.exec_driver_sql(sql, rows)
