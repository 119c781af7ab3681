"""Database plumbing shared by node, broker and consent: URLs, engines, migrations.

An SQLite file is the embedded default; PostgreSQL is used when given a URL. Engines are
built by the caller (settings are built once in ``main()``), never at import time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    create_engine,
    event,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlmodel import SQLModel

from kernel.errors import ConfigurationError

# Every package's tables share SQLModel's metadata; named constraints keep migrations
# identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


_HOST = re.compile(r"^[A-Za-z0-9._%:-]+\Z")  # a name, IPv4, or IPv6 (brackets removed)


def metadata() -> MetaData:
    return SQLModel.metadata


def database_url(value: str) -> URL:
    """Turn what an operator typed into a SQLAlchemy URL.

    A bare path means an SQLite file; ``postgresql://`` gets the psycopg 3 driver.
    """
    text = value.strip()
    if not text:
        raise ConfigurationError("the database URL is empty")
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        url = make_url(text)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
        raise ConfigurationError("the database URL cannot be parsed") from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigurationError(
            f"unsupported database {backend!r}: use an SQLite path or postgresql://"
        )
    if backend == "sqlite" and not url.database:
        raise ConfigurationError("the SQLite URL names no file (an in-memory store keeps nothing)")
    if backend == "postgresql" and url.host is not None and not _HOST.match(url.host):
        raise ConfigurationError("the database URL's host is not a host name or IP address")
    return url


def redacted(url: URL) -> str:
    """The URL as it may appear in logs and messages (password hidden)."""
    return url.render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (audit verify, segment preview) run beside an import; NORMAL
    # synchronous is durable at every commit boundary in WAL mode except on power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # 64 MiB of page cache (the default is 2 MiB): a million-customer store's indexes
    # stay in memory while an import or a flow walks them.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def create_db_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


@contextmanager
def engine_for(url: URL) -> Iterator[Engine]:
    engine = create_db_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def lock_rows(connection: Connection, column: Column[Any], *where: ColumnElement[bool]) -> int:
    """Write-lock the rows of ``column``'s table that match ``where``, as the first
    statement of the caller's transaction, before it reads them; return how many exist.

    A no-op ``UPDATE`` (``column`` set to itself): on SQLite it takes the write lock at
    once — a transaction that reads first and writes later fails immediately, busy
    timeout or not, when another commit lands in between — and on PostgreSQL it locks
    the rows, so a read-modify-write cannot lose an update. A row that does not exist
    yet is not locked: two transactions may both go on to insert it (callers serialize
    that in-process, and the primary key refuses the second).
    """
    table = column.table
    return int(
        connection.execute(update(table).where(*where).values({column.name: column})).rowcount
    )


@contextmanager
def foreign_keys_trusted(connection: Connection) -> Iterator[None]:
    """On SQLite, skip foreign-key checks for the transactions run on ``connection`` inside.

    For writers that insert many child rows whose parents they know exist (read or
    inserted in the same transaction, or vouched for by a generation number): checking
    costs a primary-key lookup per row. (Bulk loaders do the same: mysqldump,
    pg_restore --disable-triggers.) SQLite takes the pragma only outside a transaction;
    it is switched back on before the connection returns to the pool, whatever happened.
    PostgreSQL checks as always.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()
    try:
        yield
    finally:
        connection.rollback()
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()


def insert_rows(
    connection: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """``INSERT`` many rows with one ``executemany``, skipping SQLAlchemy's per-row work.

    For columns whose Python values the drivers take as they are (str, int, bytes, None,
    bool); SQLAlchemy Core spends several microseconds per row on parameter processing,
    which dominates bulk appends.
    """
    if not rows:
        return
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(mark for _ in columns)})"
    connection.exec_driver_sql(sql, list(rows))
