"""Opening and migrating the customer store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from consent import migrate_ledger
from kernel.db import create_db_engine, redacted
from node._tables import (
    CustomerRow,
    IdentifierRow,
    InterestRow,
    PurchaseRow,
    StoreGenerationRow,
)
from node.errors import AmbiguousSubject, CustomerNotFound, InvalidIdentifier, StoreError
from node.normalize import normalize_email, normalize_phone

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
    """An engine on the node's database at ``url``, migrated to the newest schema.

    The database holds the customer store and the consent ledger; both are migrated.
    """
    engine = create_db_engine(url)
    try:
        migrate(engine)
        migrate_ledger(engine)
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


def customer_exists(engine: Engine, external_id: str) -> bool:
    with engine.connect() as connection:
        found = connection.execute(
            select(_customers.c.id).where(_customers.c.external_id == external_id)
        ).first()
    return found is not None


def find_customer(engine: Engine, subject: str, *, default_region: str) -> str:
    """The external id of the customer that ``subject`` names.

    ``subject`` is an external id, or an e-mail or phone as a data-subject request
    arrives; identifiers are normalized exactly as at import. Raises
    ``CustomerNotFound`` (or ``AmbiguousSubject``) without echoing the value.
    """
    text = subject.strip()
    if customer_exists(engine, text):
        return text
    candidates: list[tuple[str, str]] = []
    if "@" in text:
        try:
            candidates.append(("email", normalize_email(text)))
        except InvalidIdentifier:
            pass
    else:
        try:
            candidates.append(("phone", normalize_phone(text, default_region)))
        except InvalidIdentifier:
            pass
    with engine.connect() as connection:
        for kind, value in candidates:
            owners = sorted(
                set(
                    connection.execute(
                        select(_customers.c.external_id)
                        .join(_identifiers, _identifiers.c.customer_id == _customers.c.id)
                        .where(_identifiers.c.kind == kind, _identifiers.c.value == value)
                    ).scalars()
                )
            )
            if len(owners) == 1:
                return str(owners[0])
            if len(owners) > 1:
                raise AmbiguousSubject(
                    f"that {kind} belongs to {len(owners)} customers: name one by external id"
                )
    raise CustomerNotFound("no customer has that external id, e-mail or phone")


_generation = StoreGenerationRow.__table__  # type: ignore[attr-defined]


def bump_store_generation(connection: Connection, *, deletion: bool = False) -> int:
    """Raise the store generation inside the caller's transaction and return it; rows the
    transaction inserts or changes carry it as ``changed_generation``. The row lock
    (SQLite: the write lock) keeps generations in commit order."""
    raised = {"generation": _generation.c.generation + 1}
    if deletion:
        raised["deleted_generation"] = _generation.c.generation + 1
    connection.execute(update(_generation).where(_generation.c.id == 1).values(raised))
    return store_generation(connection).generation


@dataclass(frozen=True, slots=True)
class StoreGeneration:
    """``generation``: equal numbers, the same customers and identifiers.
    ``deleted_generation``: the generation of the last deletion of a customer."""

    generation: int
    deleted_generation: int


def store_generation(connection: Connection) -> StoreGeneration:
    row = connection.execute(
        select(_generation.c.generation, _generation.c.deleted_generation).where(
            _generation.c.id == 1
        )
    ).one()
    return StoreGeneration(int(row.generation), int(row.deleted_generation))


def delete_customer(engine: Engine, external_id: str) -> bool:
    """Delete a customer and everything stored about them (erasure); True if one existed."""
    with engine.begin() as connection:
        customer_id = connection.execute(
            select(_customers.c.id).where(_customers.c.external_id == external_id)
        ).scalar_one_or_none()
        if customer_id is None:
            return False
        for table in (_identifiers, _interests, _purchases):
            connection.execute(delete(table).where(table.c.customer_id == customer_id))
        connection.execute(delete(_customers).where(_customers.c.id == customer_id))
        bump_store_generation(connection, deletion=True)
    return True
