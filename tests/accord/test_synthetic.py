"""The synthetic exports look like real ones and their ground truth is right."""

from __future__ import annotations

import csv
from pathlib import Path

import phonenumbers

from accord.synthetic import BOAT_DEALER, IDN_DOMAINS, TRAVEL_AGENCY, person, write_export


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_exports_are_deterministic(tmp_path: Path) -> None:
    a = write_export(tmp_path / "a.csv", company=BOAT_DEALER, people=range(500), seed=9)
    b = write_export(tmp_path / "b.csv", company=BOAT_DEALER, people=range(500), seed=9)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.bad_lines == b.bad_lines
    c = write_export(tmp_path / "c.csv", company=BOAT_DEALER, people=range(500), seed=10)
    assert c.path.read_bytes() != a.path.read_bytes()


def test_mess_and_bad_rows_at_the_advertised_rates(tmp_path: Path) -> None:
    n = 20_000
    truth = write_export(tmp_path / "a.csv", company=BOAT_DEALER, people=range(n), seed=1)
    data = rows(truth.path)
    assert len(data) == truth.rows == n
    assert 0.006 < len(truth.bad_lines) / n < 0.014
    assert len(truth.valid_people) == n - len(truth.bad_lines)
    emails = [r["email"] for r in data]
    assert sum(e != e.strip() for e in emails) > n * 0.05  # stray whitespace
    assert sum(e.strip() != e.strip().lower() for e in emails) > n * 0.2  # mixed case
    idn = sum(any(d in e for d in IDN_DOMAINS) for e in emails) / n
    assert 0.005 < idn < 0.015
    phones = [r["phone"] for r in data]
    assert any(p.startswith("0") and not p.startswith("00") for p in phones)  # national


def test_people_have_unique_valid_identifiers() -> None:
    people = [person(3, i) for i in range(0, 3_000_000, 997)]
    assert len({p.mobile for p in people}) == len(people)
    assert len({(p.email_local, p.email_domain) for p in people}) == len(people)
    for p in people[:500]:
        number = phonenumbers.parse("+44" + p.mobile, None)
        assert phonenumbers.is_valid_number(number), p.mobile


def test_shared_people_carry_the_same_identifiers_in_both_exports(tmp_path: Path) -> None:
    boats = write_export(tmp_path / "b.csv", company=BOAT_DEALER, people=range(0, 100), seed=2)
    travel = write_export(tmp_path / "t.csv", company=TRAVEL_AGENCY, people=range(50, 150), seed=2)
    b_rows, t_rows = rows(boats.path), rows(travel.path)
    shared = sorted(boats.valid_people & travel.valid_people)
    assert len(shared) >= 45
    index = shared[0]  # row `index` of the boat dealer's file, `index - 50` of the agency's
    b, t = b_rows[index], t_rows[index - 50]
    assert b["email"].strip().lower() == t["email"].strip().lower()
    assert b["phone"] != t["phone"]  # national vs international house style
    digits_b = "".join(ch for ch in b["phone"] if ch.isdigit())
    digits_t = "".join(ch for ch in t["phone"] if ch.isdigit())
    assert digits_b.lstrip("0")[-10:] == digits_t[-10:]
