"""``make demo``: the exchange end to end on embedded defaults.

Two partner companies, a boat dealer and a travel agency, export their customers (each
in its own house style, with bad rows) and their consents; each imports them into its own
node. A broker and the two nodes then start as separate processes on loopback; the boat
dealer proposes a match agreement, the travel agency reviews and countersigns it and asks
for the audience; the broker matches blinded tokens. The dealer then defines and
publishes a segment of sailing customers; under two more agreements the agency asks for
a noised overlap count and for a release of the segment's consenting customers; one
customer withdraws and the revocation reaches the agency; every audit log — the nodes'
against the heads the broker witnessed, and the broker's own — verifies. Every figure is
checked against the generator's ground truth, and the demo fails loudly if one differs.
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
from sqlalchemy import create_engine, text

from accord.exchange import LocalExchange, Process
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
OVERLAP_PURPOSE = "analytics.overlap"
SEGMENT = "sailors"
RELEASED_FIELDS = ("first_name", "last_name", "email", "interests")
# Overlap counts: epsilon 0.5 per count (discrete Laplace of scale 2), two counts in all.
EPSILON_TOTAL, EPSILON_PER_COUNT = "1.0", "0.5"
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
    for column in (
        "company",
        "rows",
        "imported",
        "rejected",
        "customers",
        "e-mails",
        "phones",
        "consents",
    ):
        table.add_column(column, justify="right" if column != "company" else "left")
    truths: dict[str, ExportTruth] = {}
    consented: dict[str, set[int]] = {}
    overlap_consented: set[int] = set()
    for company, people in plan:
        name = NAMES[company.name]
        partner = next(n for n in NAMES.values() if n != name)
        truth = write_export(out_dir / f"{name}.csv", company=company, people=people, seed=SEED)
        truths[name] = truth
        db = str(out_dir / f"{name}.db")
        accord("node", "init", "--name", name, "--db", db, "--keys", str(out_dir / f"{name}-keys"))
        engine = open_store(database_url(db))
        try:
            summary = run_import(
                truth.path,
                engine=engine,
                default_region="GB",
                rejects_path=out_dir / f"{name}.rejects.csv",
            )
            again = run_import(
                truth.path,
                engine=engine,
                default_region="GB",
                rejects_path=out_dir / f"{name}.rerun.rejects.csv",
            )
            counts = store_counts(engine)
        finally:
            engine.dispose()
        problems += _check_import(company, truth, summary, again)
        consent_file = out_dir / f"{name}-consents.csv"
        consented[name] = write_consents(
            consent_file,
            truth,
            company=company,
            partner=partner,
            purpose=PURPOSE,
            seed=SEED,
            rate=0.8 if company is BOAT_DEALER else 0.7,
        )
        recorded = accord(
            "consent",
            "import",
            str(consent_file),
            "--db",
            db,
            "--keys",
            str(out_dir / f"{name}-keys"),
        )
        if recorded["recorded"] != len(consented[name]) or recorded["rejected"]:
            problems.append(
                f"{name}: consent import recorded {recorded['recorded']}, "
                f"expected {len(consented[name])}"
            )
        if company is TRAVEL_AGENCY:
            # Its customers' consent to overlap counting with the boat dealer.
            overlap_file = out_dir / f"{name}-overlap-consents.csv"
            overlap_consented = write_consents(
                overlap_file,
                truth,
                company=company,
                partner=partner,
                purpose=OVERLAP_PURPOSE,
                seed=SEED + 1,
                rate=0.9,
            )
            more = accord(
                "consent",
                "import",
                str(overlap_file),
                "--db",
                db,
                "--keys",
                str(out_dir / f"{name}-keys"),
            )
            recorded["recorded"] += more["recorded"]
        table.add_row(
            company.name,
            str(summary.rows),
            str(summary.imported),
            str(summary.rejected),
            str(counts.customers),
            str(counts.emails),
            str(counts.phones),
            str(recorded["recorded"]),
        )
    console.print(table)

    # 2. The exchange: a broker and two nodes, separate processes on loopback.
    console.rule("2. a broker and two nodes start as separate processes")
    owner, recipient = "solent-boats", "bluewater-travel"
    with LocalExchange(out_dir / "logs") as exchange:
        broker = exchange.start_broker(db=str(out_dir / "broker.db"), keys=out_dir / "broker-keys")
        nodes = {
            name: exchange.start_node(
                name=name,
                db=str(out_dir / f"{name}.db"),
                keys=out_dir / f"{name}-keys",
                broker=broker,
            )
            for name in (owner, recipient)
        }
        for process in [broker, *nodes.values()]:
            console.print(
                f"  {process.name} listening on {process.address} (pid {process.pid})",
                highlight=False,
            )

        # 3. An agreement: proposed by the owner, reviewed and countersigned by the recipient.
        console.rule("3. Solent Boats proposes a match agreement; Bluewater Travel signs it")
        proposed = accord(
            "agreement",
            "propose",
            "--node",
            nodes[owner].address,
            "--partner",
            recipient,
            "--segment",
            "all",
            "--purpose",
            PURPOSE,
            "--mode",
            "match",
            "--k",
            "10",
        )
        agreement_id = proposed["agreement_id"]
        console.print(
            f"  proposed {agreement_id}; digest {proposed['digest'][:16]}…", highlight=False
        )
        signed = accord(
            "agreement",
            "sign",
            agreement_id,
            "--digest",
            proposed["digest"],
            "--node",
            nodes[recipient].address,
        )
        console.print(f"  countersigned: agreement is {signed['state']}", highlight=False)

        # 4. The travel agency asks which of its customers are in the dealer's segment.
        console.rule("4. Bluewater Travel requests the audience (blinded matching)")
        started = time.perf_counter()
        result = accord(
            "audience", "request", "--agreement", agreement_id, "--node", nodes[recipient].address
        )
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
            f"{result['owner_set_size']} (owner) and {result['recipient_set_size']} (recipient) "
            "tokens",
            highlight=False,
        )
        console.print(
            f"  consented overlap found: [bold]{matched}[/] customers; generator's ground "
            f"truth: [bold]{len(shared)}[/] (customers of both who consented on both sides)",
            highlight=False,
        )
        if result["state"] != "succeeded":
            problems.append(f"the flow failed: {result.get('failure_detail')}")
        if matched != len(shared):
            problems.append(f"matched {matched} customers, ground truth says {len(shared)}")

        problems += _audiences(console, out_dir, nodes, truths, consented, overlap_consented)
        problems += _compliance(console, out_dir, broker, nodes)

    console.print(f"files: {out_dir}/", highlight=False)
    if problems:
        for problem in problems:
            console.print(f"[bold red]MISMATCH[/] {problem}", highlight=False)
        return 1
    console.print("[bold green]every figure matches the generator's ground truth[/]")
    return 0


def accord_status(*args: str) -> tuple[int, Any]:
    """Run an ``accord`` command whose exit code is part of its answer (0 or 1)."""
    run = subprocess.run(
        [sys.executable, "-m", "accord", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if run.returncode not in (0, 1) or not run.stdout.strip():
        raise RuntimeError(f"accord {' '.join(args[:2])} failed: {run.stderr.strip()}")
    return run.returncode, json.loads(run.stdout)


def _wait(check: Any, *, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _held_records(db: Path) -> int:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM node_received")).scalar_one())
    finally:
        engine.dispose()


def _agreement(owner: Process, recipient: Process, *terms: str) -> str:
    proposed = accord(
        "agreement", "propose", "--node", owner.address, "--partner", recipient.name, *terms
    )
    accord(
        "agreement",
        "sign",
        proposed["agreement_id"],
        "--digest",
        proposed["digest"],
        "--node",
        recipient.address,
    )
    return str(proposed["agreement_id"])


def _audiences(
    console: Console,
    out_dir: Path,
    nodes: dict[str, Process],
    truths: dict[str, ExportTruth],
    consented: dict[str, set[int]],
    overlap_consented: set[int],
) -> list[str]:
    problems: list[str] = []
    owner, recipient = nodes["solent-boats"], nodes["bluewater-travel"]
    owner_db, owner_keys = out_dir / f"{owner.name}.db", out_dir / f"{owner.name}-keys"
    sailors = truths[owner.name].interested_in("sailing")
    releasable = sailors & consented[owner.name]

    console.rule("5. Solent Boats defines a segment of sailing customers and publishes it")
    accord(
        "segment",
        "define",
        SEGMENT,
        "--title",
        "Sailors",
        "--description",
        "Customers interested in sailing",
        "--interest",
        "sailing",
        "--db",
        str(owner_db),
    )
    preview = accord(
        "segment",
        "preview",
        SEGMENT,
        "--purpose",
        PURPOSE,
        "--partner",
        recipient.name,
        "--db",
        str(owner_db),
        "--keys",
        str(owner_keys),
    )
    console.print(
        f"  {preview['customers']} sailing customers, {preview['consented_customers']} "
        f"of them consented to {recipient.name} (local preview only)",
        highlight=False,
    )
    if (preview["customers"], preview["consented_customers"]) != (len(sailors), len(releasable)):
        problems.append(
            f"segment preview {preview['customers']}/"
            f"{preview['consented_customers']}, ground truth {len(sailors)}/"
            f"{len(releasable)}"
        )
    published = accord(
        "segment",
        "publish",
        SEGMENT,
        "--purpose",
        PURPOSE,
        "--mode",
        "overlap",
        "--mode",
        "release",
        *[f"--field={f}" for f in RELEASED_FIELDS],
        "--node",
        owner.address,
    )
    console.print(
        f"  in the broker's catalog as about {published['size_bucket']} customers "
        "(a size bucket, never an exact count)",
        highlight=False,
    )

    console.rule("6. an overlap agreement: how many sailing customers do they share?")
    overlap_id = _agreement(
        owner,
        recipient,
        "--segment",
        SEGMENT,
        "--purpose",
        PURPOSE,
        "--mode",
        "overlap",
        "--k",
        "10",
        "--epsilon-total",
        EPSILON_TOTAL,
        "--epsilon-per-count",
        EPSILON_PER_COUNT,
    )
    result = accord(
        "audience",
        "request",
        "--partner",
        owner.name,
        "--segment",
        SEGMENT,
        "--purpose",
        PURPOSE,
        "--mode",
        "overlap",
        "--node",
        recipient.address,
    )
    overlap = result.get("summary", {}).get("overlap", {})
    truth = len(releasable & truths[recipient.name].valid_people & overlap_consented)
    noised = int(overlap.get("noised_count", -1))
    console.print(
        f"  agreement {overlap_id}: Bluewater is told [bold]{noised}[/] (noised by "
        f"Solent Boats with OpenDP, epsilon {EPSILON_PER_COUNT} of {EPSILON_TOTAL}); "
        f"ground truth {truth}",
        highlight=False,
    )
    # Discrete Laplace of scale 2 strays beyond 40 with probability ~2e-9.
    if result["state"] != "succeeded" or overlap.get("suppressed") or abs(noised - truth) > 40:
        problems.append(f"overlap count {noised} (state {result['state']}), truth {truth}")

    console.rule("7. a release agreement: Bluewater receives the sailing customers who agreed")
    release_id = _agreement(
        owner,
        recipient,
        "--segment",
        SEGMENT,
        "--purpose",
        PURPOSE,
        "--mode",
        "release",
        "--k",
        "10",
        *[f"--field={f}" for f in RELEASED_FIELDS],
    )
    result = accord(
        "audience",
        "request",
        "--partner",
        owner.name,
        "--segment",
        SEGMENT,
        "--purpose",
        PURPOSE,
        "--mode",
        "release",
        "--node",
        recipient.address,
    )
    records = int(result.get("summary", {}).get("release", {}).get("records", -1))
    console.print(
        f"  agreement {release_id}: {records} records ({', '.join(RELEASED_FIELDS)}) "
        f"sealed to Bluewater's key and signed by Solent Boats; ground truth "
        f"{len(releasable)}",
        highlight=False,
    )
    if result["state"] != "succeeded" or records != len(releasable):
        problems.append(
            f"release of {records} records (state {result['state']}), truth {len(releasable)}"
        )

    console.rule("8. a customer withdraws; the revocation reaches Bluewater Travel")
    recipient_db = out_dir / f"{recipient.name}.db"
    held = _held_records(recipient_db)
    person = min(releasable)
    withdrawn = accord(
        "consent",
        "withdraw",
        truths[owner.name].external_ids[person],
        "--purpose",
        PURPOSE,
        "--recipient",
        recipient.name,
        "--db",
        str(owner_db),
        "--keys",
        str(owner_keys),
    )
    issued = withdrawn["revocations_issued"]

    def acknowledged() -> bool:
        _, listed = accord_status(
            "revocation", "list", "--db", str(owner_db), "--keys", str(owner_keys)
        )
        return bool(issued) and all(
            r["state"] == "acknowledged"
            for r in listed["revocations"]
            if r["revocation_id"] in issued
        )

    done = _wait(acknowledged)
    after = _held_records(recipient_db)
    console.print(
        f"  {len(issued)} revocation issued (by release id, never by identifier); "
        f"{'acknowledged' if done else 'NOT acknowledged'}; Bluewater holds {after} "
        f"records, was {held}",
        highlight=False,
    )
    if not done or after != held - 1:
        problems.append(f"the revocation was not carried out (held {held} → {after})")
    return problems


def _compliance(
    console: Console, out_dir: Path, broker: Process, nodes: dict[str, Process]
) -> list[str]:
    problems: list[str] = []
    console.rule("9. every audit log verifies, against the heads the broker witnessed")
    for name in nodes:
        db, keys = str(out_dir / f"{name}.db"), str(out_dir / f"{name}-keys")
        args = (
            "audit",
            "verify",
            "--db",
            db,
            "--keys",
            keys,
            "--witnessed",
            "--broker",
            broker.address,
        )
        # The node sends its head to the witness within seconds of its log growing.
        _wait(lambda a=args: accord_status(*a)[1].get("witnessed_heads", 0) > 0, timeout=30)
        code, report = accord_status(*args)
        console.print(
            f"  {name}: {report.get('entries')} entries, {report.get('heads')} signed "
            f"heads, {report.get('witnessed_heads', 0)} witnessed by the broker: "
            f"{'verified' if code == 0 else 'FAILED'}",
            highlight=False,
        )
        if code != 0 or not report.get("witnessed_heads"):
            problems.append(f"{name}'s audit log does not verify against the witness")
    code, report = accord_status(
        "audit",
        "verify",
        "--db",
        str(out_dir / "broker.db"),
        "--keys",
        str(out_dir / "broker-keys"),
    )
    console.print(
        f"  broker: {report.get('entries')} entries, {report.get('heads')} signed "
        f"heads: {'verified' if code == 0 else 'FAILED'}",
        highlight=False,
    )
    if code != 0:
        problems.append("the broker's audit log does not verify")
    return problems


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
