"""`accord node import` as an operator runs it: a real process on a real database."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import URL

from accord.synthetic import BOAT_DEALER, write_export
from node._tables import CustomerRow, IdentifierRow

ACCORD = [sys.executable, "-m", "accord"]


def accord(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ACCORD, *args], capture_output=True, text=True, timeout=300, check=False, **kwargs
    )  # type: ignore[call-overload, no-any-return]


def url_arg(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def test_json_summary_and_rejects(db_url: URL, tmp_path: Path) -> None:
    truth = write_export(tmp_path / "x.csv", company=BOAT_DEALER, people=range(300), seed=3,
                         bad_rate=0.05)  # fmt: skip
    rejects = tmp_path / "rej.csv"
    run = accord("node", "import", str(truth.path), "--db", url_arg(db_url),
                 "--rejects", str(rejects), "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["rows"] == 300
    assert summary["rejected"] == len(truth.bad_lines) > 0
    assert summary["imported"] == len(truth.valid_people)
    assert (
        summary["imported"] + summary["updated"] + summary["unchanged"] + summary["rejected"]
        == summary["rows"]
    )
    lines = rejects.read_text(encoding="utf-8").splitlines()[1:]
    assert sorted(int(line.split(",")[0]) for line in lines) == sorted(truth.bad_lines)
    # Not a terminal: no progress bar, nothing but the JSON object on stdout.
    assert run.stdout.count("\n") == 1 and "importing" not in run.stderr


def test_bad_arguments_get_clear_errors(tmp_path: Path) -> None:
    missing = accord("node", "import", str(tmp_path / "nope.csv"), "--db", str(tmp_path / "s.db"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    source = tmp_path / "in.csv"
    source.write_text("id,email\n1,a@example.com\n", encoding="utf-8")
    no_id = accord("node", "import", str(source), "--db", str(tmp_path / "s.db"))
    assert no_id.returncode == 2 and "external_id" in no_id.stderr
    db = str(tmp_path / "s.db")
    region = accord("node", "import", str(source), "--db", db, "--region", "XX")
    assert region.returncode == 2 and "region" in region.stderr
    mapped = accord("node", "import", str(source), "--db", str(tmp_path / "s.db"),
                    "--map", "id=external_id", "--json")  # fmt: skip
    assert mapped.returncode == 0 and json.loads(mapped.stdout)["imported"] == 1


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    truth = write_export(tmp_path / "x.csv", company=BOAT_DEALER, people=range(3000), seed=4)
    pid, fd = pty.fork()
    if pid == 0:  # child: stdout and stderr are the terminal
        args = ["node", "import", str(truth.path), "--db", str(tmp_path / "s.db")]
        os.execv(sys.executable, [*ACCORD, *args, "--batch-size", "100"])
    output = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")
    screen = output.decode(errors="replace")
    assert "importing x.csv" in screen  # the progress bar
    assert "import summary" in screen


def count(url: URL, table: object) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


def test_a_crash_mid_import_leaves_the_store_consistent_and_a_rerun_completes(
    db_url: URL, tmp_path: Path
) -> None:
    people = 20_000
    truth = write_export(tmp_path / "x.csv", company=BOAT_DEALER, people=range(people), seed=5)
    customers = CustomerRow.__table__  # type: ignore[attr-defined]
    args = ["node", "import", str(truth.path), "--db", url_arg(db_url), "--batch-size", "200",
            "--json"]  # fmt: skip
    # A session of its own, so the kill takes the import's forkserver and workers with it
    # (as a machine crash would) instead of leaving them behind after the suite.
    with subprocess.Popen(
        [*ACCORD, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    ) as process:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                if count(db_url, customers) >= 2000:
                    break
            except Exception:  # the schema may not exist yet
                continue
        os.killpg(process.pid, signal.SIGKILL)
    partial = count(db_url, customers)
    assert 0 < partial < len(truth.valid_people), "the kill should land mid-import"
    # Every committed customer has all its identifiers: batches are atomic.
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            orphans = connection.execute(text(
                "SELECT count(*) FROM customers c WHERE NOT EXISTS "
                "(SELECT 1 FROM identifiers i WHERE i.customer_id = c.id)"
            )).scalar_one()  # fmt: skip
            per_customer = connection.execute(text(
                "SELECT count(*) FROM identifiers"
            )).scalar_one()  # fmt: skip
    finally:
        engine.dispose()
    assert orphans == 0
    assert per_customer == 2 * partial  # each synthetic customer has an e-mail and a phone
    rerun = accord(*args)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["unchanged"] == partial
    assert summary["imported"] == len(truth.valid_people) - partial
    assert count(db_url, customers) == len(truth.valid_people)
    assert count(db_url, IdentifierRow.__table__) == 2 * len(truth.valid_people)  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", ["sqlite:///", "mysql://x@localhost/db", "postgresql://["])
def test_bad_database_urls_are_refused(tmp_path: Path, bad: str) -> None:
    source = tmp_path / "in.csv"
    source.write_text("external_id,email\n1,a@example.com\n", encoding="utf-8")
    run = accord("node", "import", str(source), "--db", bad)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr


def test_import_benchmark_reports_what_it_measured(tmp_path: Path) -> None:
    """The benchmark's JSON counts every row, finds exactly the generator's bad rows, and
    says where the CPU went (the figures themselves live in the README, not here)."""
    run = accord("bench", "import", "--rows", "400", "--json", "--keep", str(tmp_path))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["imported"] + report["rejected"] == 400
    assert report["rejected"] == report["expected_rejected"] > 0
    # Reading 400 rows and writing them takes the main process well over a millisecond
    # (the figure's resolution); a report that lost the measurement would say 0.
    assert report["cpu_s"]["main"] > 0
    assert report["peak_rss_mib"]["main"] > 0
    assert (tmp_path / "store-400.db").exists()


def test_match_benchmark_reports_what_it_measured(tmp_path: Path) -> None:
    """A small run of the match benchmark through its real processes: every flow finds
    the generator's intersection, and the report carries the floor, the repeats, peak
    memory and what the first flow read from storage for each process."""
    run = accord("bench", "match", "--size", "300", "--overlap", "0.4",
                 "--repeat-churn", "0.1", "--json", "--keep", str(tmp_path))  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    for flow in ("first", "repeat_unchanged", "repeat"):
        assert report[flow]["state"] == "succeeded", report[flow]
        assert report[flow]["intersection_found"] == report[flow]["intersection_expected"]
    assert report["first"]["intersection_expected"] == 120
    assert report["repeat"]["intersection_expected"] < 120  # churn moved some of them
    assert report["floor"]["x25519_per_s_all_cores"] > 0 and report["wall_s"] > 0
    processes = {"broker", "solent-boats", "bluewater-travel"}
    assert set(report["first"]["storage_read_mib"]) == processes
    assert all(v >= 0 for v in report["first"]["storage_read_mib"].values())
    assert set(report["peak_rss_mib"]) == processes
    assert all(v > 0 for v in report["peak_rss_mib"].values())
    for flow in ("first", "repeat_unchanged", "repeat"):
        used = report[flow]["cpu_s"]
        assert set(used) == processes
        assert all(set(parts) == {"main", "workers"} for parts in used.values())
        assert all(v >= 0 for parts in used.values() for v in parts.values())
    # Blinding ~1,300 tokens takes the nodes' processes tens of milliseconds: a report
    # that lost the measurement would say 0.
    assert sum(v for parts in report["first"]["cpu_s"].values() for v in parts.values()) > 0
