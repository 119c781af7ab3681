"""Shared fixtures: a fresh database per test, on SQLite and (when configured) PostgreSQL.

PostgreSQL tests carry the ``postgres`` marker and use ``ACCORD_TEST_POSTGRES_URL``
(e.g. ``postgresql://postgres@127.0.0.1:5432/test``); without it they are skipped.
``.ci/run`` sets it and fails if the server cannot be reached. Each test gets its own
schema, dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from kernel.db import database_url

# Property tests check laws, not speed (speed lives in `accord bench`): no per-example
# deadline. Hypothesis' 200 ms default failed a phone test when phonenumbers imported a
# region's metadata from a disk whose page cache had gone cold.
settings.register_profile("accord", deadline=None)
settings.load_profile("accord")

POSTGRES_ENV = "ACCORD_TEST_POSTGRES_URL"
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(POSTGRES_ENV):
        return
    skip = pytest.mark.skip(reason=f"{POSTGRES_ENV} is not set: no PostgreSQL to test against")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def postgres_url() -> Iterator[URL]:
    base = database_url(os.environ[POSTGRES_ENV])
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> URL:
    return database_url(str(tmp_path / "store.db"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> URL:
    """A URL of an empty database; every test using it runs on both backends."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: URL = request.getfixturevalue(name)
    return url
