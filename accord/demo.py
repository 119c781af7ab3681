"""``make demo``: the exchange end to end on embedded defaults.

Today (issue 2): two partner companies, a boat dealer and a travel agency, export their
customers in their own house styles; each export is imported into its own node store;
the demo checks every figure against the generator's ground truth and fails loudly if
one differs. Later issues grow this into the whole exchange.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from accord.synthetic import BOAT_DEALER, TRAVEL_AGENCY, Company, ExportTruth, write_export
from kernel.db import database_url
from node import ImportSummary, open_store, run_import, store_counts

SEED = 2026


def run_demo(out_dir: Path, *, customers: int, console: Console) -> int:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    overlap = customers // 4
    plan: list[tuple[Company, range]] = [
        (BOAT_DEALER, range(0, customers)),
        (TRAVEL_AGENCY, range(customers - overlap, 2 * customers - overlap)),
    ]
    table = Table(title="Accord demo: two partner nodes")
    for column in ("company", "rows", "imported", "rejected", "customers", "e-mails", "phones"):
        table.add_column(column, justify="right" if column != "company" else "left")
    problems: list[str] = []
    truths: list[ExportTruth] = []
    for company, people in plan:
        slug = company.name.lower().replace(" ", "-")
        truth = write_export(out_dir / f"{slug}.csv", company=company, people=people, seed=SEED)
        truths.append(truth)
        engine = open_store(database_url(str(out_dir / f"{slug}.db")))
        try:
            summary = run_import(
                truth.path,
                engine=engine,
                default_region="GB",
                rejects_path=out_dir / f"{slug}.rejects.csv",
            )
            again = run_import(
                truth.path,
                engine=engine,
                default_region="GB",
                rejects_path=out_dir / f"{slug}.rerun.rejects.csv",
            )
            counts = store_counts(engine)
        finally:
            engine.dispose()
        problems += _check(company, truth, summary, again)
        table.add_row(
            company.name,
            str(summary.rows),
            str(summary.imported),
            str(summary.rejected),
            str(counts.customers),
            str(counts.emails),
            str(counts.phones),
        )
    console.print(table)
    shared = truths[0].valid_people & truths[1].valid_people
    console.print(
        f"customers both companies hold (generator's ground truth): {len(shared)}; "
        "blinded matching through the broker comes with issue 4",
        highlight=False,
    )
    console.print(f"files: {out_dir}/", highlight=False)
    if problems:
        for problem in problems:
            console.print(f"[bold red]MISMATCH[/] {problem}", highlight=False)
        return 1
    console.print("[bold green]every figure matches the generator's ground truth[/]")
    return 0


def _check(
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
