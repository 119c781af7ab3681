"""Opening and migrating the customer store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from kernel.db import create_db_engine, redacted
from node._tables import CustomerRow, IdentifierRow, InterestRow, PurchaseRow
from node.errors import StoreError

MIGRATIONS = Path(__file__).parent / "migrations"
_customers = CustomerRow.__table__  # type: ignore[attr-defined]
_identifiers = IdentifierRow.__table__  # type: ignore[attr-defined]
_interests = InterestRow.__table__  # type: ignore[attr-defined]
_purchases = PurchaseRow.__table__  # type: ignore[attr-defined]


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the store's schema to the newest migration (idempotent)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_store(url: URL) -> Engine:
    """An engine on the customer store at ``url``, migrated to the newest schema."""
    engine = create_db_engine(url)
    try:
        migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        raise StoreError(f"cannot open the customer store at {redacted(url)}: {exc.orig}") from exc
    return engine


@dataclass(frozen=True, slots=True)
class StoreCounts:
    customers: int
    identifiers: int
    emails: int
    phones: int
    interests: int
    purchases: int


def store_counts(engine: Engine) -> StoreCounts:
    with engine.connect() as connection:

        def count(table: Any, *where: Any) -> int:
            return int(
                connection.execute(
                    select(func.count()).select_from(table).where(*where)
                ).scalar_one()
            )

        return StoreCounts(
            customers=count(_customers),
            identifiers=count(_identifiers),
            emails=count(_identifiers, _identifiers.c.kind == "email"),
            phones=count(_identifiers, _identifiers.c.kind == "phone"),
            interests=count(_interests),
            purchases=count(_purchases),
        )
