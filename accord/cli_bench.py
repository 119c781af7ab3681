"""``accord bench …``: benchmarks that print JSON. Timings live here, never in tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from accord._options import print_json

bench_app = typer.Typer(help="Benchmarks that print JSON.", no_args_is_help=True)


@bench_app.command("import")
def bench_import(
    rows: Annotated[int, typer.Option(min=1, help="Rows in the synthetic export.")] = 100_000,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (the default output).")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic export.")] = 7,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes.")] = None,
    keep: Annotated[
        Path | None, typer.Option(help="Keep the CSV and store in this folder.")
    ] = None,
) -> None:
    """Time parse + normalize + hash-to-curve + write of N synthetic customers into SQLite."""
    from accord.bench import import_benchmark

    print_json(import_benchmark(rows=rows, seed=seed, workers=workers, keep=keep))


@bench_app.command("audit")
def bench_audit(
    entries: Annotated[int, typer.Option(min=1, help="Entries to append.")] = 100_000,
    batch: Annotated[
        int, typer.Option(min=1, max=1000, help="Entries per committed batch (one head each).")
    ] = 1000,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (the default output).")
    ] = True,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URL (default: a fresh SQLite file)."),
    ] = None,
) -> None:
    """Append N consent-event entries (signed head per batch), then verify the whole log."""
    from accord.bench import audit_benchmark

    print_json(audit_benchmark(entries=entries, batch=batch, db=db))


@bench_app.command("match")
def bench_match(
    size: Annotated[int, typer.Option(min=10, help="Customers per store (one e-mail each).")] = (
        100_000
    ),
    overlap: Annotated[float, typer.Option(min=0.0, max=1.0, help="Shared fraction.")] = 0.5,
    repeat_churn: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Change this fraction of each store, ask again."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (the default output).")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic stores.")] = 7,
    keep: Annotated[
        Path | None, typer.Option(help="Keep stores, keys and logs in this folder.")
    ] = None,
) -> None:
    """Time one match through broker and nodes (separate processes) against the X25519 floor."""
    from accord.bench_match import match_benchmark

    print_json(
        match_benchmark(size=size, overlap=overlap, churn=repeat_churn, seed=seed, keep=keep)
    )
