"""The marketer's segments from the command line: real processes, real databases."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

ACCORD = [sys.executable, "-m", "accord"]
CUSTOMERS = (
    "external_id,email,country,interests,channels,purchases\n"
    "C1,alice@example.com,GB,sailing;diving,email,2025-01-10:boats:10.10;2025-03-01:boats:20.20\n"
    "C2,bob@example.com,GB,golf,post,2024-06-01:travel:500\n"
    "C3,carol@example.org,FR,sailing,sms,\n"
    "C4,dan@example.de,DE,,,\n"
)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*ACCORD, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


@dataclass
class Node:
    db: str
    keys: Path

    def segment(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("segment", *args, "--db", self.db, check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self.segment(*args, "--json").stdout)

    def preview(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.segment("preview", *args, "--keys", str(self.keys), check=check)


@pytest.fixture
def node(db_url: URL, tmp_path: Path) -> Node:
    db = db_url.render_as_string(hide_password=False)
    keys = tmp_path / "keys"
    run("node", "init", "--name", "solent-boats", "--db", db, "--keys", str(keys))
    customers = tmp_path / "customers.csv"
    customers.write_text(CUSTOMERS, encoding="utf-8")
    run("node", "import", str(customers), "--db", db, "--json")
    notice = tmp_path / "notice.txt"
    notice.write_text("Solent Boats privacy notice v3\n", encoding="utf-8")
    for subject in ("C1", "bob@example.com"):
        run("consent", "grant", subject, "--purpose", "marketing.cross_sell",
            "--recipient", "bluewater-travel", "--channel", "email", "--method", "web_form",
            "--notice-ref", "https://solent-boats.example/privacy", "--notice-version", "3",
            "--notice-file", str(notice), "--db", db, "--keys", str(keys), "--json")  # fmt: skip
    return Node(db, keys)


def test_define_redefine_list_and_preview(node: Node) -> None:
    first = node.json("define", "sailors", "--title", "Sailors", "--interest", "Sailing",
                      "--country", "gb")  # fmt: skip
    assert first["created"] and first["version"] == 1 and not first["built_in"]
    assert first["filter"]["countries"] == ["GB"] and first["filter"]["interests"] == ["sailing"]

    # A new title or description keeps the version; the text output says so.
    retitled = node.segment("define", "sailors", "--title", "Sailors of the Solent",
                            "--description", "Customers who sail", "--interest", "sailing",
                            "--country", "GB")  # fmt: skip
    assert "updated (same filter): version 1" in retitled.stdout
    again = node.segment("define", "sailors", "--title", "Sailors of the Solent",
                         "--description", "Customers who sail", "--interest", "sailing",
                         "--country", "GB")  # fmt: skip
    assert "unchanged: version 1" in again.stdout

    # A new filter is a new version; the order of repeated options does not matter.
    wider = node.json("define", "sailors", "--title", "Sailors of the Solent",
                      "--description", "Customers who sail", "--interest", "sailing",
                      "--country", "GB", "--country", "FR")  # fmt: skip
    assert not wider["created"] and wider["version"] == 2
    assert wider["filter"]["countries"] == ["FR", "GB"]
    same = node.json("define", "sailors", "--title", "Sailors of the Solent",
                     "--description", "Customers who sail", "--interest", "sailing",
                     "--country", "FR", "--country", "GB")  # fmt: skip
    assert same["version"] == 2

    spenders = node.json("define", "spenders", "--title", "Big spenders", "--min-spend", "30.30",
                         "--purchased-since", "2025-01-01", "--purchase-category", "boats",
                         "--channel", "email")  # fmt: skip
    assert spenders["created"] and spenders["filter"]["min_total_spend"] == "30.30"
    assert spenders["filter"]["purchased_since"] == "2025-01-01"

    listed = node.json("list")["segments"]
    assert [(s["segment_id"], s["version"], s["built_in"]) for s in listed] == [
        ("all", 1, True),
        ("sailors", 2, False),
        ("spenders", 1, False),
    ]
    assert listed[1]["title"] == "Sailors of the Solent"
    assert listed[1]["description"] == "Customers who sail"
    table = node.segment("list").stdout
    assert "sailors" in table and "spenders" in table and "every customer" in table

    plain = json.loads(node.preview("sailors", "--json").stdout)
    assert plain == {
        "segment_id": "sailors",
        "version": 2,
        "customers": 2,  # C1 and C3
        "consented_customers": None,
        "purpose": None,
        "partner": None,
        "size_bucket": 32,
        "at": plain["at"],
    }
    asked = ("--purpose", "marketing.cross_sell", "--partner", "bluewater-travel")
    consented = json.loads(node.preview("sailors", *asked, "--json").stdout)
    assert consented["customers"] == 2 and consented["consented_customers"] == 1  # C1 only
    assert consented["purpose"] == "marketing.cross_sell"
    assert consented["partner"] == "bluewater-travel"
    everyone = json.loads(node.preview("all", *asked, "--json").stdout)
    assert (everyone["customers"], everyone["consented_customers"]) == (4, 2)  # C1, C2
    elsewhere = json.loads(
        node.preview(
            "all", "--purpose", "marketing.cross_sell", "--partner", "harbour-insure", "--json"
        ).stdout  # fmt: skip
    )
    assert elsewhere["consented_customers"] == 0
    # 10.10 + 20.20 reaches 30.30 exactly, on SQLite too.
    assert json.loads(node.preview("spenders", "--json").stdout)["customers"] == 1

    text = node.preview("sailors", *asked).stdout
    assert "customers" in text and "marketing.cross_sell → bluewater-travel" in text
    assert "size bucket" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("define", "sailors", "--title", "S", "--country", "GBR"), "ISO 3166"),
        (("define", "sailors", "--title", "S", "--channel", "fax"), "channels must be among"),
        (("define", "sailors", "--title", "S", "--age-band", "17"), "age_bands must be among"),
        (("define", "sailors", "--title", "S", "--min-spend", "lots"), "--min-spend"),
        (("define", "sailors", "--title", "S", "--min-spend", "-5"), "--min-spend"),
        (("define", "sailors", "--title", "S", "--purchased-since", "1/2/2025"), "YYYY-MM-DD"),
        (("define", "sailors", "--title", "S", "--purchased-since", "2025-13-01"), "month"),
        (("define", "Sailing Families", "--title", "S"), "lower-case slug"),
        (("define", "all", "--title", "S"), "built-in"),
        (("define", "sailors", "--title", ""), "title"),
        (("preview", "all", "--purpose", "marketing.cross_sell"), "go together"),
        (("preview", "all", "--purpose", "marketing.bogus", "--partner", "x1"), "unknown purpose"),
        (
            ("preview", "all", "--purpose", "marketing.cross_sell", "--partner", "Bad_Name"),
            "party name",
        ),
    ],  # fmt: skip
)
def test_bad_input_exits_2_with_a_clear_message(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    db = str(tmp_path / "store.db")
    result = run("segment", *args, "--db", db, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not (tmp_path / "store.db").exists()  # refused before the database was touched


def test_unknown_segments_and_missing_keys(node: Node, tmp_path: Path) -> None:
    unknown = node.preview("nobody", check=False)
    assert unknown.returncode == 1 and "no segment 'nobody'" in unknown.stderr
    assert node.json("list")["segments"][0]["segment_id"] == "all"  # nothing was written
    no_keys = node.segment("preview", "all", "--purpose", "marketing.cross_sell", "--partner",
                           "bluewater-travel", "--keys", str(tmp_path / "none"),
                           check=False)  # fmt: skip
    assert no_keys.returncode == 2 and "accord node init" in no_keys.stderr
