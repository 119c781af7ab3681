"""Options and helpers shared by every command group of the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from sqlalchemy import Engine

from consent import Ledger
from kernel import config
from kernel.config import (
    DEFAULT_DB_URL,
    DEFAULT_KEYS_DIR,
    ENV_DB_URL,
    ENV_DEFAULT_REGION,
    ENV_KEYS_DIR,
    region_code,
)
from kernel.db import database_url
from kernel.errors import KernelError
from kernel.keys import KeyStore
from node import open_store
from node.errors import NodeError

# soft_wrap: messages are never broken mid-sentence when output goes to a file or pipe.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        envvar=ENV_DB_URL,
        help="The node's database: an SQLite path or a postgresql:// URL.",
    ),
]
KeysOption = Annotated[
    Path,
    typer.Option(
        "--keys",
        envvar=ENV_KEYS_DIR,
        help="The node's key directory (made by `accord node init`).",
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
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]

DEFAULT_REGION: str = config.DEFAULT_REGION
DEFAULT_DB: str = DEFAULT_DB_URL
DEFAULT_KEYS: Path = Path(DEFAULT_KEYS_DIR)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, sort_keys=True, ensure_ascii=False))


def engine_for(db: str) -> Engine:
    """The node's database, migrated; a clear error instead of a traceback."""
    try:
        url = database_url(db)
    except KernelError as exc:
        fail(str(exc), code=2)
    try:
        return open_store(url)
    except NodeError as exc:
        fail(str(exc))


def region_for(region: str) -> str:
    try:
        return region_code(region)
    except KernelError as exc:
        fail(str(exc), code=2)


def keystore_for(keys: Path) -> KeyStore:
    try:
        return KeyStore.open(keys)
    except KernelError as exc:
        fail(str(exc), code=2)


@dataclass
class NodeContext:
    """What a node command works on: its database, keys and ledger."""

    engine: Engine
    keys: KeyStore
    ledger: Ledger

    def close(self) -> None:
        self.engine.dispose()


def node_context(db: str, keys: Path, *, signing: bool = False) -> NodeContext:
    keystore = keystore_for(keys)
    engine = engine_for(db)
    try:
        signing_key = keystore.signing_key() if signing else None
    except KernelError as exc:
        engine.dispose()
        fail(str(exc), code=2)
    identity = keystore.identity
    ledger = Ledger(
        engine, origin=identity.origin, controller=identity.name, signing_key=signing_key
    )
    return NodeContext(engine, keystore, ledger)
