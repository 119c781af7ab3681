"""Alembic environment for the customer store.

Always run through ``node._store.migrate`` with a live connection; the node's tables get
their own version table so consent's migrations can share the database.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from kernel.db import metadata
from node._tables import NODE_TABLES

VERSION_TABLE = "accord_node_alembic_version"
_OWN_TABLES = {table.name for table in NODE_TABLES}


def _include_name(name: str | None, type_: str, _parent: Any) -> bool:
    """Reflected side: only this package's tables."""
    if type_ == "table":
        return name in _OWN_TABLES
    return True


def _include_object(_object: Any, name: str | None, type_: str, *_: Any) -> bool:
    """Model side: the shared metadata holds every package's tables; keep ours."""
    if type_ == "table":
        return name in _OWN_TABLES
    return True


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata(),
    version_table=VERSION_TABLE,
    include_name=_include_name,
    include_object=_include_object,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
