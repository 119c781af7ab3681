"""store generation

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 23:25:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "node_store_generation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("deleted_generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_store_generation")),
    )
    op.bulk_insert(table, [{"id": 1, "generation": 0, "deleted_generation": 0}])
    # A plain ADD COLUMN with a default: SQLite and PostgreSQL add it without a rewrite.
    op.add_column(
        "customers",
        sa.Column("changed_generation", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_index("ix_customers_changed_generation", "customers", ["changed_generation"])


def downgrade() -> None:
    op.drop_index("ix_customers_changed_generation", table_name="customers")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("changed_generation")
    op.drop_table("node_store_generation")
