"""Customer import against a real database file (SQLite) and a real PostgreSQL."""

from __future__ import annotations

import csv
import gc
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from kernel.crypto import hash_to_curve
from node import open_store, run_import, store_counts
from node._import import MAX_CSV_RECORD, CsvLines, ImportSummary, csv_line_chunks, csv_records
from node._tables import CustomerRow, IdentifierRow, InterestRow, PurchaseRow
from node.errors import ImportSourceError

HEADER = [
    "external_id", "email", "phone", "first_name", "last_name", "country", "age_band",
    "region", "interests", "channels", "loyalty_tier", "purchases",
]  # fmt: skip
GOOD = [
    ["C1", "  Alice.Smith@Example.COM ", "07911 123456", "Alice", "Smith", "GB", "35-44",
     "London", "Sailing;diving", "email;SMS", "Gold", "2025-06-01:sailing:1200.50"],
    ["C2", "bob@straße.de", "", "Bob", "Jones", "", "65+", "", "", "post", "", ""],
    ["C3", "", "+44 20 7946 0018", "", "", "", "", "", "", "", "", ""],
    ["C4", "carol+crm@gmail.com;Carol.Alt@Example.org", "0044 7123 654321", "Carol", "",
     "gb", "18-24", "Wales", "", "", "none", "2024-01-02:mooring:10;2024-02-03:servicing:99.99"],
]  # fmt: skip
# What GOOD's rows hold once normalized (kind, value), by external id.
GOOD_IDENTIFIERS = {
    "C1": {("email", "alice.smith@example.com"), ("phone", "+447911123456")},
    "C2": {("email", "bob@xn--strae-oqa.de")},
    "C3": {("phone", "+442079460018")},
    "C4": {
        ("email", "carol+crm@gmail.com"),
        ("email", "carol.alt@example.org"),
        ("phone", "+447123654321"),
    },
}
BAD = [
    (["C5", "not-an-email", "", "", "", "", "", "", "", "", "", ""], "email"),
    (["C6", "dave@example.com", "12", "", "", "", "", "", "", "", "", ""], "phone"),
    (["", "eve@example.com", "", "", "", "", "", "", "", "", "", ""], "external_id"),
    (["C8", "", "", "Frank", "", "", "", "", "", "", "", ""], "no e-mail or phone"),
    (["C9", "gina@example.com", "", "", "", "", "17", "", "", "", "", ""], "age_band"),
    (["C10", "hal@example.com", "", "", "", "", "", "", "", "fax", "", ""], "channels"),
    (["C11", "ivy@example.com", "", "", "", "", "", "", "", "", "diamond", ""], "loyalty_tier"),
    (["C12", "jo@example.com", "", "", "", "", "", "", "", "", "", "2024-13-01:x:1"], "date"),
    (["C13", "kim@example.com", "", "", "", "ZZ", "", "", "", "", "", ""], "country"),
]  # fmt: skip


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def store(db_url: URL) -> Any:
    engine = open_store(db_url)
    yield engine
    engine.dispose()


def do_import(engine: Engine, source: Path, tmp_path: Path, **kwargs: Any) -> Any:
    kwargs.setdefault("workers", 1)
    return run_import(
        source,
        engine=engine,
        default_region="GB",
        rejects_path=tmp_path / "rejects.csv",
        **kwargs,
    )


def identifiers_of(engine: Engine, external_id: str) -> set[tuple[str, str]]:
    c, i = CustomerRow.__table__, IdentifierRow.__table__  # type: ignore[attr-defined]
    with engine.connect() as connection:
        rows = connection.execute(
            select(i.c.kind, i.c.value).join(c, c.c.id == i.c.customer_id)
            .where(c.c.external_id == external_id)
        )  # fmt: skip
        return {(kind, value) for kind, value in rows}


def test_bad_rows_are_rejected_exactly_with_reasons(store: Engine, tmp_path: Path) -> None:
    rows = GOOD[:2] + [row for row, _ in BAD] + GOOD[2:]
    summary = do_import(store, write_csv(tmp_path / "in.csv", rows), tmp_path)
    assert (summary.rows, summary.imported, summary.rejected) == (len(rows), len(GOOD), len(BAD))
    rejects = read_rejects(tmp_path / "rejects.csv")
    # Header is line 1; the bad rows follow the first two good ones.
    assert [int(r["line"]) for r in rejects] == list(range(4, 4 + len(BAD)))
    for reject, (row, keyword) in zip(rejects, BAD, strict=True):
        assert reject["external_id"] == row[0]
        assert keyword in reject["reason"], reject
    assert store_counts(store).customers == len(GOOD)


def test_identifiers_are_normalized_and_hashed_to_the_curve(store: Engine, tmp_path: Path) -> None:
    do_import(store, write_csv(tmp_path / "in.csv", GOOD), tmp_path)
    for external_id, expected in GOOD_IDENTIFIERS.items():
        assert identifiers_of(store, external_id) == expected
    i = IdentifierRow.__table__  # type: ignore[attr-defined]
    with store.connect() as connection:
        for kind, value, point in connection.execute(select(i.c.kind, i.c.value, i.c.point)):
            assert bytes(point) == hash_to_curve(kind, value)


def test_attributes_and_purchases_are_stored(store: Engine, tmp_path: Path) -> None:
    do_import(store, write_csv(tmp_path / "in.csv", GOOD), tmp_path)
    c = CustomerRow.__table__  # type: ignore[attr-defined]
    interests = InterestRow.__table__  # type: ignore[attr-defined]
    purchases = PurchaseRow.__table__  # type: ignore[attr-defined]
    with store.connect() as connection:
        alice = connection.execute(select(c).where(c.c.external_id == "C1")).mappings().one()
        assert (alice["country"], alice["age_band"], alice["loyalty_tier"]) == (
            "GB",
            "35-44",
            "gold",
        )
        assert (alice["channel_email"], alice["channel_sms"], alice["channel_post"]) == (
            True,
            True,
            False,
        )
        got = set(connection.execute(
            select(interests.c.interest).where(interests.c.customer_id == alice["id"])
        ).scalars())  # fmt: skip
        assert got == {"sailing", "diving"}
        amounts = sorted(connection.execute(select(purchases.c.amount)).scalars())
        assert amounts == [Decimal("10.00"), Decimal("99.99"), Decimal("1200.50")]


def test_rerun_of_the_same_file_changes_nothing(store: Engine, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", GOOD + [row for row, _ in BAD])
    do_import(store, source, tmp_path)
    with store.connect() as connection:
        before = connection.execute(text("SELECT id, updated_at FROM customers ORDER BY id")).all()
    again = do_import(store, source, tmp_path)
    assert (again.imported, again.updated, again.unchanged, again.rejected) == (
        0, 0, len(GOOD), len(BAD)
    )  # fmt: skip
    with store.connect() as connection:
        after = connection.execute(text("SELECT id, updated_at FROM customers ORDER BY id")).all()
    assert after == before


def test_changed_rows_are_updated_in_place(store: Engine, tmp_path: Path) -> None:
    do_import(store, write_csv(tmp_path / "in.csv", GOOD), tmp_path)
    changed = [list(row) for row in GOOD]
    changed[0][1] = "alice@new.example"
    changed[0][8] = "fishing"
    summary = do_import(store, write_csv(tmp_path / "in2.csv", changed), tmp_path)
    assert (summary.imported, summary.updated, summary.unchanged) == (0, 1, len(GOOD) - 1)
    assert identifiers_of(store, "C1") == {
        ("email", "alice@new.example"),
        ("phone", "+447911123456"),
    }
    assert store_counts(store).customers == len(GOOD)


def test_duplicate_external_id_in_one_file_is_rejected(store: Engine, tmp_path: Path) -> None:
    rows = [GOOD[0], GOOD[1], [*GOOD[0][:1], "other@example.com", *GOOD[0][2:]]]
    summary = do_import(store, write_csv(tmp_path / "in.csv", rows), tmp_path)
    assert (summary.imported, summary.rejected) == (2, 1)
    (reject,) = read_rejects(tmp_path / "rejects.csv")
    assert reject["line"] == "4" and "first at line 2" in reject["reason"]


def test_mapping_renames_columns(store: Engine, tmp_path: Path) -> None:
    header = ["Customer No", "E-Mail", "Mobile", *HEADER[3:]]
    source = write_csv(tmp_path / "in.csv", GOOD, header=header)
    with pytest.raises(ImportSourceError, match="external_id"):
        do_import(store, source, tmp_path)
    summary = do_import(
        store,
        source,
        tmp_path,
        mapping={"Customer No": "external_id", "E-Mail": "email", "Mobile": "phone"},
    )
    assert summary.imported == len(GOOD)
    assert identifiers_of(store, "C3") == GOOD_IDENTIFIERS["C3"]


def test_line_numbers_count_physical_lines_across_quoted_newlines(
    store: Engine, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "external_id,email,region\n"
        'A1,a@example.com,"two\nlines"\n'
        "A2,broken,\n"
        "A3,c@example.com,x,extra\n"
        "A4,d@example.com,Wales\n",
        encoding="utf-8",
    )
    summary = do_import(store, source, tmp_path)
    assert summary.imported == 1
    # region "two\nlines" is refused (control character); A2 is on line 4, A3 on line 5;
    # A4, on line 6, is the one good row.
    assert [(r["line"], r["external_id"]) for r in read_rejects(tmp_path / "rejects.csv")] == [
        ("2", "A1"),
        ("4", "A2"),
        ("5", ""),
    ]


def test_invalid_utf8_row_is_rejected_and_the_rest_imported(store: Engine, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(
        b"external_id,email\nA1,a@example.com\nA2,b\xff@example.com\nA3,c@example.com\n"
    )
    summary = do_import(store, source, tmp_path)
    assert (summary.imported, summary.rejected) == (2, 1)
    (reject,) = read_rejects(tmp_path / "rejects.csv")
    assert (reject["line"], reject["reason"]) == ("3", "row is not valid UTF-8")


def test_jsonl_import_with_lists_and_bad_lines(store: Engine, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        {"external_id": "J1", "email": ["J@Example.com", "j2@example.com"],
         "interests": ["Sailing"],
         "purchases": [{"date": "2025-01-01", "category": "Cruises", "amount": "500"}]},
        "this is not json",
        [1, 2],
        {"external_id": 42, "phone": "+33 6 12 34 56 78"},
        {"external_id": "J3", "email": 7},
    ]  # fmt: skip
    source.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n\n",
        encoding="utf-8",
    )
    summary = do_import(store, source, tmp_path)
    assert (summary.rows, summary.imported, summary.rejected) == (5, 2, 3)
    assert identifiers_of(store, "J1") == {("email", "j@example.com"), ("email", "j2@example.com")}
    assert identifiers_of(store, "42") == {("phone", "+33612345678")}
    reasons = {r["line"]: r["reason"] for r in read_rejects(tmp_path / "rejects.csv")}
    assert set(reasons) == {"2", "3", "5"}
    assert "JSON" in reasons["2"] and "object" in reasons["3"] and "email" in reasons["5"]


def test_parallel_workers_give_the_same_store_as_one(db_url: URL, tmp_path: Path) -> None:
    rows = (GOOD + [row for row, _ in BAD]) * 1
    source = write_csv(tmp_path / "in.csv", rows)
    engine = open_store(db_url)
    try:
        parallel = do_import(engine, source, tmp_path, workers=2, batch_size=3)
        assert (parallel.imported, parallel.rejected) == (len(GOOD), len(BAD))
        assert [r["line"] for r in read_rejects(tmp_path / "rejects.csv")] == [
            str(n) for n in range(2 + len(GOOD), 2 + len(rows))
        ]
    finally:
        engine.dispose()


def test_unreadable_source_is_a_clear_error(store: Engine, tmp_path: Path) -> None:
    with pytest.raises(ImportSourceError, match="format"):
        do_import(store, tmp_path / "customers.xlsx", tmp_path)
    with pytest.raises(ImportSourceError, match="cannot open"):
        do_import(store, tmp_path / "missing.csv", tmp_path)


# Text a CSV export could hold, biased towards what decides where records end: quotes
# (opening, doubled, stray), delimiters and every kind of line break.
_CSV_TEXT = st.lists(st.sampled_from(['"', '"', ",", "\n", "\r", "\r\n", "a", " "])).map("".join)


@given(body=_CSV_TEXT, size=st.integers(min_value=1, max_value=4))
@settings(max_examples=400, deadline=None)
def test_cutting_a_csv_file_into_chunks_reads_the_same_records(body: str, size: int) -> None:
    """Workers parse the chunks on their own: where the file is cut must change nothing."""
    header = "external_id,email\n"
    summary = ImportSummary()
    work = list(csv_line_chunks(io.StringIO(header + body, newline=""), {}, summary, size))
    chunked = [
        row
        for chunk in work
        for row in (csv_records(chunk) if isinstance(chunk, CsvLines) else chunk)
    ]
    # The whole file in one piece is what the csv module reads from start to end.
    whole = CsvLines(2, ("external_id", "email"), io.StringIO(body, newline="").readlines())
    assert chunked == list(csv_records(whole))
    assert all(isinstance(chunk, CsvLines) and chunk.lines for chunk in work)


def test_an_unclosed_quote_is_one_reject_and_reading_goes_on(store: Engine, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    opening = 'A2,"unclosed@example.com\n'
    run_on = [f"B{n},b{n}@example.com\n" for n in range(MAX_CSV_RECORD // 16)]
    source.write_text("external_id,email\nA1,a@example.com\n" + opening + "".join(run_on))
    summary = do_import(store, source, tmp_path, workers=2, batch_size=1000)
    (reject,) = read_rejects(tmp_path / "rejects.csv")
    assert reject["line"] == "3" and "closing quote" in reject["reason"]
    # The record ends with the line that takes it past the limit; the lines after it are
    # rows again.
    swallowed, chars = 0, len(opening)
    while chars <= MAX_CSV_RECORD:
        chars += len(run_on[swallowed])
        swallowed += 1
    assert summary.imported == 1 + len(run_on) - swallowed > 1
    assert summary.rows == summary.imported + summary.rejected


def test_import_leaves_the_connection_and_collector_as_it_found_them(
    store: Engine, tmp_path: Path
) -> None:
    """The writer skips SQLite's foreign-key checks and the collector pauses, for the
    import only: the pooled connection checks keys again and the collector runs."""
    do_import(store, write_csv(tmp_path / "in.csv", GOOD), tmp_path)
    assert gc.isenabled()
    with store.connect() as connection:
        if store.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
        ghost = {"c": 10**9, "k": "email", "v": "x", "p": b"\0" * 32}
        with pytest.raises(IntegrityError):
            connection.execute(
                text("INSERT INTO identifiers (customer_id, kind, value, point) "
                     "VALUES (:c, :k, :v, :p)"), ghost
            )  # fmt: skip
    gc.disable()
    try:
        do_import(store, write_csv(tmp_path / "in.csv", GOOD), tmp_path)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_children_find_their_customer_when_ids_are_not_sequential(
    store: Engine, tmp_path: Path
) -> None:
    """The writer takes a batch's new ids to be the next ones after the largest, which
    SQLite guarantees until an id reaches 2**63 - 1; past that it picks ids at random, and
    the writer must notice and look them up."""
    if store.dialect.name == "sqlite":
        with store.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO customers (id, external_id, channel_email, channel_phone, "
                "channel_post, channel_sms, record_digest, created_at, updated_at) "
                "VALUES (9223372036854775807, 'last', 0, 0, 0, 0, x'00', '2026-01-01', "
                "'2026-01-01')"
            )
    do_import(store, write_csv(tmp_path / "in.csv", GOOD), tmp_path, batch_size=2)
    for external_id, expected in GOOD_IDENTIFIERS.items():
        assert identifiers_of(store, external_id) == expected


def test_a_header_that_never_ends_is_a_clear_error(store: Engine, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text('external_id,"email\nA1,a@example.com\n', encoding="utf-8")
    with pytest.raises(ImportSourceError, match="header cannot be read: a quoted field"):
        do_import(store, source, tmp_path)
