"""``make demo``: the exchange end to end on embedded defaults.

Two partner companies, a boat dealer and a travel agency, export their customers (each
in its own house style, with bad rows) and their consents; each imports them into its own
node. A broker and the two nodes then start as separate processes on loopback; the boat
dealer proposes a match agreement, the travel agency reviews and countersigns it and asks
for the audience; the broker matches blinded tokens. Every figure is checked against the
generator's ground truth, and the demo fails loudly if one differs.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from accord.exchange import LocalExchange
from accord.synthetic import (
    BOAT_DEALER,
    TRAVEL_AGENCY,
    Company,
    ExportTruth,
    write_consents,
    write_export,
)
from kernel.db import database_url
from node import ImportSummary, open_store, run_import, store_counts

SEED = 2026
PURPOSE = "marketing.cross_sell"
NAMES = {BOAT_DEALER.name: "solent-boats", TRAVEL_AGENCY.name: "bluewater-travel"}


def accord(*args: str) -> Any:
    """Run an ``accord`` command as an operator would; its JSON output, or fail loudly."""
    run = subprocess.run(
        [sys.executable, "-m", "accord", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if run.returncode != 0:
        raise RuntimeError(f"accord {' '.join(args[:2])} failed: {run.stderr.strip()}")
    return json.loads(run.stdout)


def run_demo(out_dir: Path, *, customers: int, console: Console) -> int:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    overlap = customers // 4
    plan: list[tuple[Company, range]] = [
        (BOAT_DEALER, range(0, customers)),
        (TRAVEL_AGENCY, range(customers - overlap, 2 * customers - overlap)),
    ]
    problems: list[str] = []

    # 1. Each company imports its customers and consents into its own node.
    console.rule("1. two companies import their customers and consents")
    table = Table(title="partner nodes")
    for column in ("company", "rows", "imported", "rejected", "customers", "e-mails", "phones",
                   "consents"):  # fmt: skip
        table.add_column(column, justify="right" if column != "company" else "left")
    truths: dict[str, ExportTruth] = {}
    consented: dict[str, set[int]] = {}
    for company, people in plan:
        name = NAMES[company.name]
        partner = next(n for n in NAMES.values() if n != name)
        truth = write_export(out_dir / f"{name}.csv", company=company, people=people, seed=SEED)
        truths[name] = truth
        db = str(out_dir / f"{name}.db")
        accord("node", "init", "--name", name, "--db", db, "--keys", str(out_dir / f"{name}-keys"))
        engine = open_store(database_url(db))
        try:
            summary = run_import(truth.path, engine=engine, default_region="GB",
                                 rejects_path=out_dir / f"{name}.rejects.csv")  # fmt: skip
            again = run_import(truth.path, engine=engine, default_region="GB",
                               rejects_path=out_dir / f"{name}.rerun.rejects.csv")  # fmt: skip
            counts = store_counts(engine)
        finally:
            engine.dispose()
        problems += _check_import(company, truth, summary, again)
        consent_file = out_dir / f"{name}-consents.csv"
        consented[name] = write_consents(
            consent_file, truth, company=company, partner=partner, purpose=PURPOSE, seed=SEED,
            rate=0.8 if company is BOAT_DEALER else 0.7,
        )  # fmt: skip
        recorded = accord("consent", "import", str(consent_file), "--db", db, "--keys",
                          str(out_dir / f"{name}-keys"))  # fmt: skip
        if recorded["recorded"] != len(consented[name]) or recorded["rejected"]:
            problems.append(f"{name}: consent import recorded {recorded['recorded']}, "
                            f"expected {len(consented[name])}")  # fmt: skip
        table.add_row(company.name, str(summary.rows), str(summary.imported),
                      str(summary.rejected), str(counts.customers), str(counts.emails),
                      str(counts.phones), str(recorded["recorded"]))  # fmt: skip
    console.print(table)

    # 2. The exchange: a broker and two nodes, separate processes on loopback.
    console.rule("2. a broker and two nodes start as separate processes")
    owner, recipient = "solent-boats", "bluewater-travel"
    with LocalExchange(out_dir / "logs") as exchange:
        broker = exchange.start_broker(db=str(out_dir / "broker.db"))
        nodes = {
            name: exchange.start_node(
                name=name,
                db=str(out_dir / f"{name}.db"),
                keys=out_dir / f"{name}-keys",
                broker=broker,
            )  # fmt: skip
            for name in (owner, recipient)
        }
        for process in [broker, *nodes.values()]:
            console.print(f"  {process.name} listening on {process.address} (pid {process.pid})",
                          highlight=False)  # fmt: skip

        # 3. An agreement: proposed by the owner, reviewed and countersigned by the recipient.
        console.rule("3. Solent Boats proposes a match agreement; Bluewater Travel signs it")
        proposed = accord("agreement", "propose", "--node", nodes[owner].address,
                          "--partner", recipient, "--segment", "all", "--purpose", PURPOSE,
                          "--mode", "match", "--k", "10")  # fmt: skip
        agreement_id = proposed["agreement_id"]
        console.print(f"  proposed {agreement_id}; digest {proposed['digest'][:16]}…",
                      highlight=False)  # fmt: skip
        signed = accord("agreement", "sign", agreement_id, "--digest", proposed["digest"],
                        "--node", nodes[recipient].address)  # fmt: skip
        console.print(f"  countersigned: agreement is {signed['state']}", highlight=False)

        # 4. The travel agency asks which of its customers are in the dealer's segment.
        console.rule("4. Bluewater Travel requests the audience (blinded matching)")
        started = time.perf_counter()
        result = accord("audience", "request", "--agreement", agreement_id,
                        "--node", nodes[recipient].address)  # fmt: skip
        elapsed = time.perf_counter() - started
    matched = int(result.get("summary", {}).get("match", {}).get("matched_customers", -1))
    shared = (
        truths[owner].valid_people
        & truths[recipient].valid_people
        & consented[owner]
        & consented[recipient]
    )
    console.print(
        f"  flow {result['flow_id']}: {result['state']} in {elapsed:.1f} s; padded sets "
        f"{result['owner_set_size']} (owner) and {result['recipient_set_size']} (recipient) tokens",
        highlight=False,
    )
    console.print(
        f"  consented overlap found: [bold]{matched}[/] customers; generator's ground truth: "
        f"[bold]{len(shared)}[/] (customers of both who consented on both sides)",
        highlight=False,
    )
    if result["state"] != "succeeded":
        problems.append(f"the flow failed: {result.get('failure_detail')}")
    if matched != len(shared):
        problems.append(f"matched {matched} customers, ground truth says {len(shared)}")

    # 5. Compliance: every audit log verifies.
    console.rule("5. every audit log verifies")
    for name in (owner, recipient):
        report = accord("audit", "verify", "--db", str(out_dir / f"{name}.db"), "--keys",
                        str(out_dir / f"{name}-keys"))  # fmt: skip
        console.print(f"  {name}: {report['entries']} entries, {report['heads']} signed heads "
                      "verify", highlight=False)  # fmt: skip
        if not report["verified"]:
            problems.append(f"{name}'s audit log does not verify")

    console.print(f"files: {out_dir}/", highlight=False)
    if problems:
        for problem in problems:
            console.print(f"[bold red]MISMATCH[/] {problem}", highlight=False)
        return 1
    console.print("[bold green]every figure matches the generator's ground truth[/]")
    return 0


def _check_import(
    company: Company, truth: ExportTruth, summary: ImportSummary, again: ImportSummary
) -> list[str]:
    problems = []
    with open(summary.rejects_path or "", newline="", encoding="utf-8") as handle:
        rejected_lines = {int(row["line"]) for row in csv.DictReader(handle)}
    if rejected_lines != set(truth.bad_lines):
        problems.append(
            f"{company.name}: rejected lines differ from the broken ones "
            f"(extra {sorted(rejected_lines - set(truth.bad_lines))[:5]}, "
            f"missing {sorted(set(truth.bad_lines) - rejected_lines)[:5]})"
        )
    if summary.imported != len(truth.valid_people):
        problems.append(
            f"{company.name}: imported {summary.imported}, expected {len(truth.valid_people)}"
        )
    if again.unchanged != len(truth.valid_people) or again.imported or again.updated:
        problems.append(f"{company.name}: a re-run of the same file changed the store")
    return problems
