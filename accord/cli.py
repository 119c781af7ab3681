"""The ``accord`` command line. Settings are built here, once, and passed down."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from kernel.config import (
    DEFAULT_DB_URL,
    DEFAULT_REGION,
    ENV_DB_URL,
    ENV_DEFAULT_REGION,
    region_code,
)
from kernel.db import database_url
from kernel.errors import ConfigurationError
from node import DEFAULT_BATCH_SIZE, ImportSummary, SourceFormat, open_store, run_import
from node.errors import NodeError

app = typer.Typer(
    help="Accord: a privacy-preserving exchange for collaborative CRM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Operate a partner node over its customer store.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print JSON.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(bench_app, name="bench")

err = Console(stderr=True)
out = Console()

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        envvar=ENV_DB_URL,
        help="The node's database: an SQLite path or a postgresql:// URL.",
        show_default=True,
    ),
]
RegionOption = Annotated[
    str,
    typer.Option(
        "--region",
        envvar=ENV_DEFAULT_REGION,
        help="Default region for phone numbers written without a country code (ISO 3166).",
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            fail(f"--map takes SOURCE=TARGET, got {pair!r}", code=2)
        mapping[source.strip()] = target.strip()
    return mapping


@node_app.command("import")
def node_import(
    file: Annotated[Path, typer.Argument(help="CSV or JSON Lines export of customers.")],
    db: DbOption = DEFAULT_DB_URL,
    rejects: Annotated[
        Path | None,
        typer.Option(
            help="Where rejected rows go (CSV: line, external_id, reason).",
            show_default="FILE.rejects.csv",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
    mapping: Annotated[
        list[str] | None,
        typer.Option("--map", help="Rename a source column: SOURCE=TARGET (repeatable)."),
    ] = None,
    source_format: Annotated[
        SourceFormat | None,
        typer.Option("--format", help="Override the format the extension implies."),
    ] = None,
    region: RegionOption = DEFAULT_REGION,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Rows per committed transaction.")
    ] = DEFAULT_BATCH_SIZE,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: one per core).")
    ] = None,
) -> None:
    """Import customers from a CRM export; upsert by external id, reject bad rows with reasons."""
    try:
        default_region = region_code(region)
        url = database_url(db)
    except ConfigurationError as exc:
        fail(str(exc), code=2)
    if not file.is_file():
        fail(f"no such file: {file}", code=2)
    rejects_path = rejects or file.with_name(file.name + ".rejects.csv")
    try:
        engine = open_store(url)
    except NodeError as exc:
        fail(str(exc))
    try:
        summary = _import_with_progress(
            file,
            engine=engine,
            default_region=default_region,
            rejects_path=rejects_path,
            mapping=parse_mapping(mapping or []),
            source_format=source_format,
            batch_size=batch_size,
            workers=workers,
        )
    except NodeError as exc:
        fail(str(exc), code=2)
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), sort_keys=True))
    else:
        _print_summary(summary)


def _import_with_progress(file: Path, **kwargs: object) -> ImportSummary:
    if not err.is_terminal:
        return run_import(file, **kwargs)  # type: ignore[arg-type]
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"importing {file.name}", total=file.stat().st_size)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return run_import(file, on_progress=advance, **kwargs)  # type: ignore[arg-type]


def _print_summary(summary: ImportSummary) -> None:
    table = Table(title="import summary", show_header=False)
    for key in ("rows", "imported", "updated", "unchanged", "rejected"):
        table.add_row(key, str(getattr(summary, key)))
    out.print(table)
    if summary.rejected:
        out.print(f"rejected rows and reasons: {summary.rejects_path}", highlight=False)
    if summary.ignored_columns:
        out.print(f"ignored columns: {', '.join(summary.ignored_columns)}", highlight=False)


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

    result = import_benchmark(rows=rows, seed=seed, workers=workers, keep=keep)
    typer.echo(json.dumps(result, sort_keys=True))


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the demo writes its files.")] = Path(
        "demo-out"
    ),
    customers: Annotated[int, typer.Option(min=10, help="Customers per company.")] = 2000,
) -> None:
    """Run the exchange end to end on embedded defaults (grows with every issue)."""
    from accord.demo import run_demo

    code = run_demo(out_dir, customers=customers, console=out)
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
