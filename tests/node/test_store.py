"""The customer store's schema and its migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import URL

from kernel.db import database_url, metadata
from kernel.errors import ConfigurationError
from node import open_store, store_counts
from node._tables import NODE_TABLES

OWN = {table.name for table in NODE_TABLES}


def test_migrations_build_exactly_the_models_schema(db_url: URL) -> None:
    engine = open_store(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    # Both sides: tables of other packages share the metadata and database.
                    "include_name": lambda name, type_, _p: type_ != "table" or name in OWN,
                    "include_object": lambda _o, name, type_, _r, _c: (
                        type_ != "table" or name in OWN
                    ),
                    "compare_type": True,
                },
            )
            assert compare_metadata(context, metadata()) == []
        tables = set(inspect(engine).get_table_names())
        assert OWN | {"accord_node_alembic_version"} <= tables
    finally:
        engine.dispose()


def test_opening_twice_is_idempotent(db_url: URL) -> None:
    for _ in range(2):
        engine = open_store(db_url)
        assert store_counts(engine).customers == 0
        engine.dispose()


def test_database_urls(tmp_path: Path) -> None:
    assert database_url(str(tmp_path / "a.db")).get_backend_name() == "sqlite"
    assert database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    for bad in ("", "  ", "mysql://u@h/db", "postgresql://["):
        with pytest.raises(ConfigurationError):
            database_url(bad)
