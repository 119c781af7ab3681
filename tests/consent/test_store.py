"""The ledger's schema and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.engine import URL

from consent import migrate_ledger
from consent._tables import CONSENT_TABLES, LogStateRow
from kernel.db import create_db_engine, metadata
from node import open_store

OWN = {table.name for table in CONSENT_TABLES}


def test_migrations_build_exactly_the_models_schema(db_url: URL) -> None:
    engine = create_db_engine(db_url)
    try:
        migrate_ledger(engine)
        migrate_ledger(engine)  # idempotent
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
            state = LogStateRow.__table__  # type: ignore[attr-defined]
            rows = connection.execute(select(state.c.id, state.c.size)).all()
            assert [tuple(r) for r in rows] == [(1, 0)]  # the one append-lock row
        assert OWN | {"accord_consent_alembic_version"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_the_node_database_holds_store_and_ledger(db_url: URL) -> None:
    engine = open_store(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"customers", "identifiers", "audit_entries", "consent_events"} <= tables
        assert {"accord_node_alembic_version", "accord_consent_alembic_version"} <= tables
    finally:
        engine.dispose()
