"""``accord consent import FILE``: consent events from a CSV or JSON Lines file.

Same rules as the customer import: a bad row never aborts the import and is never
dropped silently; it goes to the reject file (``line,event_id,reason``) and the summary
counts it. Rows are recorded in transactions of ``batch_size``; a re-run of the same
file changes nothing, because a row without an ``event_id`` gets a UUIDv5 derived from
its content (and the ledger is idempotent on event ids).

Columns: ``subject`` (the customer's external id, or an e-mail or phone, resolved by the
node), ``event_type``, ``purpose``, ``recipient``, ``channels`` (``;``-separated),
``collected_at`` (ISO 8601 with a zone), ``collection_method``, ``notice_reference``,
``notice_version``, ``notice_sha256``, ``notice_language``, ``expires_at``, ``actor``,
optional ``event_id`` and ``supersedes``.
"""

from __future__ import annotations

import csv
import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from consent._ledger import Ledger
from consent.errors import ConsentError
from consent.model import Channel, CollectionMethod, EventType, NewConsentEvent, Notice
from consent.records import parse_time
from kernel.crypto import canonical_json

__all__ = ["CONSENT_COLUMNS", "ConsentImportSummary", "import_consents"]

CONSENT_COLUMNS: Final = (
    "event_id",
    "subject",
    "event_type",
    "purpose",
    "recipient",
    "channels",
    "collected_at",
    "collection_method",
    "notice_reference",
    "notice_version",
    "notice_sha256",
    "notice_language",
    "expires_at",
    "actor",
    "supersedes",
)
_UNDECODABLE: Final = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8
# Row content -> event id, so that re-importing a file without ids is idempotent.
_ROW_NAMESPACE: Final = uuid.UUID("6f1d7d3e-5b7a-4a53-8c1e-2f8e4a1c9b70")


class RowRejected(Exception):
    """A row breaks a rule; the message is the reject file's reason."""


@dataclass(slots=True)
class ConsentImportSummary:
    rows: int = 0
    recorded: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejects_path: str | None = None
    ignored_columns: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "recorded": self.recorded,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "rejects_path": self.rejects_path,
            "ignored_columns": self.ignored_columns,
        }


Resolver = Callable[[str], str]  # subject text -> external id; raises with a reason


def import_consents(
    source: Path,
    *,
    ledger: Ledger,
    resolve_subject: Resolver,
    rejects_path: Path,
    batch_size: int = 1000,
) -> ConsentImportSummary:
    """Record the consent events in ``source``; see the module docstring."""
    summary = ConsentImportSummary(rejects_path=str(rejects_path))
    rows = _rows(source, summary)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    with rejects_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line", "event_id", "reason"])

        def reject(line: int, event_id: str, reason: str) -> None:
            summary.rejected += 1
            writer.writerow([line, event_id, reason])

        pending: list[tuple[int, str, NewConsentEvent]] = []

        def flush() -> None:
            _record(ledger, pending, summary, reject)
            pending.clear()

        for line, fields in rows:
            summary.rows += 1
            if isinstance(fields, str):
                reject(line, "", fields)
                continue
            event_id = str(fields.get("event_id") or "").strip()
            try:
                event = _event(fields)
                event.check(now=datetime.now(UTC))
                external_id = _resolve(resolve_subject, fields.get("subject"))
            except (RowRejected, ConsentError) as exc:
                reject(line, event_id, str(exc))
                continue
            pending.append((line, external_id, event))
            if len(pending) >= batch_size:
                flush()
        flush()
    return summary


def _record(
    ledger: Ledger,
    pending: list[tuple[int, str, NewConsentEvent]],
    summary: ConsentImportSummary,
    reject: Callable[[int, str, str], None],
) -> None:
    if not pending:
        return
    try:
        _, new = ledger.record_counted([(x, e) for _, x, e in pending])
    except ConsentError:
        # Some row of the batch breaks a rule only the ledger can see (an event id
        # recorded with other content, a clash inside the batch): find it row by row.
        for line, external_id, event in pending:
            try:
                _, one = ledger.record_counted([(external_id, event)])
            except ConsentError as exc:
                reject(line, event.event_id, str(exc))
            else:
                summary.recorded += one
                summary.unchanged += 1 - one
        return
    summary.recorded += new
    summary.unchanged += len(pending) - new


def _resolve(resolve_subject: Resolver, value: Any) -> str:
    text = _text(value)
    if text is None:
        raise RowRejected("subject is missing (external id, e-mail or phone)")
    try:
        return resolve_subject(text)
    except Exception as exc:  # the node's lookup errors carry a reason without the value
        raise RowRejected(f"subject: {exc}") from None


def _rows(source: Path, summary: ConsentImportSummary) -> Iterator[tuple[int, Any]]:
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(source)
        return
    with source.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        names = [name.strip() for name in header]
        summary.ignored_columns = sorted(set(names) - set(CONSENT_COLUMNS))
        last = reader.line_num
        while True:
            start = last + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                last = reader.line_num
                yield start, f"the CSV row cannot be parsed: {exc}"
                continue
            last = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(names):
                yield start, f"row has {len(cells)} fields but the header has {len(names)}"
                continue
            if any(map(_UNDECODABLE.search, cells)):
                yield start, "row is not valid UTF-8"
                continue
            yield start, dict(zip(names, cells, strict=True))


def _jsonl_rows(source: Path) -> Iterator[tuple[int, Any]]:
    with source.open(encoding="utf-8-sig", errors="surrogateescape") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if _UNDECODABLE.search(line):
                yield line_no, "line is not valid UTF-8"
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, f"line is not valid JSON ({exc.msg})"
                continue
            if not isinstance(value, dict):
                yield line_no, "line is not a JSON object"
                continue
            if isinstance(value.get("channels"), list):
                value["channels"] = ";".join(str(c) for c in value["channels"])
            yield line_no, value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _choice(value: Any, column: str, kind: Any) -> Any:
    text = _text(value)
    if text is None:
        raise RowRejected(f"{column} is missing")
    try:
        return kind(text.lower())
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise RowRejected(f"{column} must be one of {allowed}") from None


def _time(value: Any, column: str) -> datetime | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise RowRejected(f"{column} must be an ISO 8601 time with a zone") from None


def _event(fields: Mapping[str, Any]) -> NewConsentEvent:
    event_type = _choice(fields.get("event_type"), "event_type", EventType)
    collected_at = _time(fields.get("collected_at"), "collected_at")
    if collected_at is None:
        raise RowRejected("collected_at is missing")
    channels = tuple(
        _choice(c, "channels", Channel)
        for c in (_text(fields.get("channels")) or "").split(";")
        if c.strip()
    )
    reference, version, digest, language = (
        _text(fields.get(k))
        for k in ("notice_reference", "notice_version", "notice_sha256", "notice_language")
    )
    parts = (reference, version, digest, language)
    if any(parts) and not all(parts):
        raise RowRejected("notice needs reference, version, sha256 and language together")
    notice = None
    if reference and version and digest and language:
        notice = Notice(reference, version, digest.lower(), language)
    content = {k: _text(fields.get(k)) for k in CONSENT_COLUMNS if k != "event_id"}
    event_id = _text(fields.get("event_id")) or str(
        uuid.uuid5(_ROW_NAMESPACE, canonical_json(content).decode("utf-8"))
    )
    return NewConsentEvent(
        event_id=event_id,
        event_type=event_type,
        purpose=_text(fields.get("purpose")) or "",
        recipient=_text(fields.get("recipient")) or "",
        collected_at=collected_at,
        collection_method=_choice(
            fields.get("collection_method") or "import", "collection_method", CollectionMethod
        ),
        actor=_text(fields.get("actor")) or "import",
        channels=channels,
        notice=notice,
        expires_at=_time(fields.get("expires_at"), "expires_at"),
        supersedes=_text(fields.get("supersedes")),
    )
