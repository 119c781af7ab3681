"""``accord node …``: set up a node and import its customers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from accord._options import (
    DEFAULT_DB,
    DEFAULT_KEYS,
    DEFAULT_REGION,
    DbOption,
    JsonOption,
    KeysOption,
    RegionOption,
    engine_for,
    err,
    fail,
    node_context,
    out,
    print_json,
    region_for,
)
from kernel.errors import KernelError
from kernel.keys import KeyStore
from node import DEFAULT_BATCH_SIZE, ImportSummary, SourceFormat, purge_expired, run_import
from node.errors import NodeError

node_app = typer.Typer(help="Operate a partner node over its customer store.", no_args_is_help=True)


@node_app.command("init")
def node_init(
    name: Annotated[str, typer.Option(help="The node's name in the exchange, e.g. solent-boats.")],
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    as_json: JsonOption = False,
) -> None:
    """Create the node's keys and database, and sign the empty audit log's first head."""
    try:
        store = KeyStore.create(keys, name=name)
    except KernelError as exc:
        fail(str(exc), code=2)
    engine = engine_for(db)
    engine.dispose()
    context = node_context(db, keys, signing=True)
    try:
        _, head = context.ledger.append([])
    finally:
        context.close()
    identity = store.identity
    if as_json:
        print_json({**identity.to_json(), "keys": str(keys), "tree_size": head.tree_size})
        return
    out.print(f"node [bold]{identity.name}[/] initialised", highlight=False)
    out.print(f"  keys:        {keys}/ (keep signing.pem, master.key, hpke.key secret)")
    out.print(f"  signing key: {identity.signing_key_id}")
    out.print(f"  audit log:   {identity.origin}, empty head signed")


@node_app.command("import")
def node_import(
    file: Annotated[Path, typer.Argument(help="CSV or JSON Lines export of customers.")],
    db: DbOption = DEFAULT_DB,
    rejects: Annotated[
        Path | None,
        typer.Option(
            help="Where rejected rows go (CSV: line, external_id, reason).",
            show_default="FILE.rejects.csv",
        ),
    ] = None,
    as_json: JsonOption = False,
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
    default_region = region_for(region)
    if not file.is_file():
        fail(f"no such file: {file}", code=2)
    rejects_path = rejects or file.with_name(file.name + ".rejects.csv")
    engine = engine_for(db)
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
        print_json(summary.as_dict())
    else:
        _print_summary(summary)


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            fail(f"--map takes SOURCE=TARGET, got {pair!r}", code=2)
        mapping[source.strip()] = target.strip()
    return mapping


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


@node_app.command("purge")
def purge(
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    as_json: JsonOption = False,
) -> None:
    """Delete received records and match results whose retention has ended (a running
    node does this on its own every few seconds); the deletion is logged."""
    context = node_context(db, keys, signing=True)
    try:
        records, matches = purge_expired(context.engine, context.ledger, now=datetime.now(UTC))
    finally:
        context.close()
    if as_json:
        print_json({"records_deleted": records, "match_results_deleted": matches})
        return
    out.print(
        f"deleted {records} received records and {matches} match results past retention",
        highlight=False,
    )
