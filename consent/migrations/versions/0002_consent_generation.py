"""consent generation

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 23:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log_state") as batch:
        batch.add_column(
            sa.Column("consent_generation", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_log_state") as batch:
        batch.drop_column("consent_generation")
