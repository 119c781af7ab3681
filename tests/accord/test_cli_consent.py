"""The compliance officer's journey from the command line: real processes, real databases."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

ACCORD = [sys.executable, "-m", "accord"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*ACCORD, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json").stdout)


class Node:
    def __init__(self, db: str, keys: Path) -> None:
        self.db, self.keys = db, keys

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*args, "--db", self.db, "--keys", str(self.keys), check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def node(db_url: URL, tmp_path: Path) -> Node:
    db = db_url.render_as_string(hide_password=False)
    keys = tmp_path / "keys"
    run("node", "init", "--name", "solent-boats", "--db", db, "--keys", str(keys))
    customers = tmp_path / "customers.csv"
    customers.write_text(
        "external_id,email,phone\n"
        "C1,Alice@Example.com,07911 123456\n"
        "C2,bob@straße.de,\n"
        "C3,carol@example.org,+44 20 7946 0018\n",
        encoding="utf-8",
    )
    run("node", "import", str(customers), "--db", db, "--json")
    (tmp_path / "notice.txt").write_text("Solent Boats privacy notice v3\n", encoding="utf-8")
    return Node(db, keys)


def grant(node: Node, subject: str, tmp_path: Path, *extra: str) -> Any:
    return node.json(
        "consent", "grant", subject, "--purpose", "marketing.cross_sell",
        "--recipient", "bluewater-travel", "--channel", "email", "--method", "web_form",
        "--notice-ref", "https://solent-boats.example/privacy", "--notice-version", "3",
        "--notice-file", str(tmp_path / "notice.txt"), *extra,
    )  # fmt: skip


def test_grant_withdraw_show_verify_prove_and_erase(node: Node, tmp_path: Path) -> None:
    given = grant(node, "alice@example.com", tmp_path)  # resolved through the e-mail
    assert given["external_id"] == "C1" and given["event_type"] == "given"
    assert given["subject"] not in ("C1", "alice@example.com")
    head_file = tmp_path / "head.json"
    node("audit", "head", "--out", str(head_file))

    withdrawn = node.json("consent", "withdraw", "+44 7911 123456", "--purpose",
                          "marketing.cross_sell")  # fmt: skip
    assert withdrawn["external_id"] == "C1" and withdrawn["recipient"] == "*"

    report = node.json("consent", "show", "C1")
    assert [e["event_type"] for e in report["events"]] == ["given", "withdrawn"]
    assert all(e["proof"] == "verified" for e in report["events"])
    statuses = {(s["purpose"], s["recipient"]): s["status"] for s in report["states"]}
    assert statuses[("marketing.cross_sell", "bluewater-travel")] == "withdrawn"
    assert report["flows"] == []
    past = node.json("consent", "show", "C1", "--at", given["recorded_at"])
    then = {(s["purpose"], s["recipient"]): s["status"] for s in past["states"]}
    assert then == {
        ("marketing.cross_sell", "bluewater-travel"): "valid",
        ("marketing.cross_sell", "*"): "none",  # the withdrawal came later
    }

    verified = node.json("audit", "verify", "--trusted-head", str(head_file))
    assert verified["verified"] and verified["entries"] == 2
    assert verified["trusted_head_size"] == 1

    proof = tmp_path / "c1-proof.json"
    node("audit", "proof", "C1", "--out", str(proof))
    identity = str(node.keys / "identity.json")
    checked = run_json("audit", "check-proof", str(proof), "--identity", identity)
    assert checked["verified"] and checked["key_pinned"]
    assert [e["record"]["event_type"] for e in checked["entries"]] == ["given", "withdrawn"]

    # A forged record in the proof file fails the offline check.
    bundle = json.loads(proof.read_text())
    bundle["entries"][0]["record"] = bundle["entries"][0]["record"].replace("web_form", "import")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(bundle))
    bad = run("audit", "check-proof", str(forged), "--identity", identity, check=False)
    assert bad.returncode == 1 and "not in the signed log" in bad.stdout

    erased = node.json("consent", "erase", "C1", "--reason", "data-subject request")
    assert erased == {
        "customer_deleted": True,
        "consent_records_erased": 2,
        "tree_size": 3,
        "revocations_issued": 0,  # nothing of C1's was ever released to a partner
    }
    after = node.json("audit", "verify", "--trusted-head", str(head_file))
    assert after["verified"] and after["erased_entries"] == 2 and after["entries"] == 3
    # The proof exported before the erasure still checks: the log kept its commitments.
    assert run_json("audit", "check-proof", str(proof), "--identity", identity)["verified"]
    gone = node("consent", "show", "alice@example.com", check=False)
    assert gone.returncode == 1 and "no customer" in gone.stderr


def test_clear_errors(node: Node, tmp_path: Path) -> None:
    unknown = node("consent", "grant", "C2", "--purpose", "marketing.bogus", "--recipient",
                   "bluewater-travel", "--method", "web_form", "--notice-ref", "r",
                   "--notice-version", "1", "--notice-sha256", "ab" * 32, check=False)  # fmt: skip
    assert unknown.returncode == 1 and "unknown purpose" in unknown.stderr
    assert "marketing.cross_sell" in unknown.stderr  # lists the known ones
    nobody = node("consent", "withdraw", "nobody@example.com", "--purpose",
                  "marketing.cross_sell", check=False)  # fmt: skip
    assert nobody.returncode == 1 and "nobody" not in nobody.stderr
    no_notice = node("consent", "grant", "C2", "--purpose", "marketing.cross_sell",
                     "--recipient", "x1", "--method", "web_form", "--notice-ref", "r",
                     "--notice-version", "1", check=False)  # fmt: skip
    assert no_notice.returncode == 2 and "notice" in no_notice.stderr
    conflict_id = "0b8e4c9e-6f0e-4a53-9d3b-2f1e0c7b9a11"
    grant(node, "C2", tmp_path, "--event-id", conflict_id)
    clash = node("consent", "refuse", "C2", "--purpose", "marketing.cross_sell",
                 "--event-id", conflict_id, check=False)  # fmt: skip
    assert clash.returncode == 1 and "other content" in clash.stderr
    no_keys = run("audit", "verify", "--db", node.db, "--keys", str(tmp_path / "none"),
                  check=False)  # fmt: skip
    assert no_keys.returncode == 2 and "accord node init" in no_keys.stderr


def test_consent_import_rejects_exactly_the_bad_rows(node: Node, tmp_path: Path) -> None:
    notice = ["https://solent-boats.example/privacy", "3", "ab" * 32, "en-GB"]
    header = ["subject", "event_type", "purpose", "recipient", "channels", "collected_at",
              "collection_method", "notice_reference", "notice_version", "notice_sha256",
              "notice_language", "expires_at", "actor"]  # fmt: skip
    rows = [
        ["C1", "given", "marketing.cross_sell", "bluewater-travel", "email;post",
         "2026-03-01T10:00:00Z", "web_form", *notice, "2027-03-01T10:00:00Z", "crm"],
        ["bob@straße.de", "given", "analytics.overlap", "*", "", "2026-03-02T10:00:00Z",
         "point_of_sale", *notice, "", "crm"],
        ["C9", "given", "marketing.cross_sell", "*", "", "2026-03-01T10:00:00Z", "web_form",
         *notice, "", "crm"],  # no such customer
        ["C3", "maybe", "marketing.cross_sell", "*", "", "2026-03-01T10:00:00Z", "web_form",
         *notice, "", "crm"],  # bad event type
        ["C3", "given", "marketing.bogus", "*", "", "2026-03-01T10:00:00Z", "web_form",
         *notice, "", "crm"],  # unknown purpose
        ["C3", "given", "marketing.cross_sell", "*", "", "yesterday", "web_form",
         *notice, "", "crm"],  # bad time
        ["C3", "given", "marketing.cross_sell", "*", "", "2026-03-01T10:00:00Z", "web_form",
         "", "", "", "", "", "crm"],  # a grant without its notice
        ["+44 20 7946 0018", "withdrawn", "marketing.cross_sell", "*", "",
         "2026-03-05T10:00:00Z", "call_centre", "", "", "", "", "", "crm"],
    ]  # fmt: skip
    source = tmp_path / "consents.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    summary = node.json("consent", "import", str(source))
    assert (summary["rows"], summary["recorded"], summary["rejected"]) == (8, 3, 5)
    with open(summary["rejects_path"], newline="", encoding="utf-8") as handle:
        rejects = list(csv.DictReader(handle))
    assert [int(r["line"]) for r in rejects] == [4, 5, 6, 7, 8]
    reasons = [r["reason"] for r in rejects]
    assert "subject" in reasons[0] and "event_type" in reasons[1]
    assert "unknown purpose" in reasons[2] and "collected_at" in reasons[3]
    assert "notice" in reasons[4]
    again = node.json("consent", "import", str(source))
    assert (again["recorded"], again["unchanged"], again["rejected"]) == (0, 3, 5)
    assert node.json("audit", "verify")["entries"] == 3


def test_verify_names_the_tampered_entry(node: Node, tmp_path: Path, db_url: URL) -> None:
    for subject in ("C1", "C2", "C3"):
        grant(node, subject, tmp_path)
    engine = create_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE audit_records SET record = :r WHERE leaf_index = 1"),
                {"r": b'{"forged":true}'},
            )
    finally:
        engine.dispose()
    result = node("audit", "verify", check=False)
    assert result.returncode == 1
    assert "entry 1" in result.stdout and "does NOT verify" in result.stdout
