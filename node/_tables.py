"""SQLModel tables of the customer store. They never leave the repository layer.

The import path writes through SQLAlchemy Core on these tables' ``__table__`` objects
(bulk inserts); ORM objects are used only where a handful of rows is read.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

import kernel.db  # noqa: F401  (sets the shared naming convention before tables exist)


class CustomerRow(SQLModel, table=True):
    __tablename__ = "customers"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    external_id: str = Field(sa_column=Column(String(128), nullable=False, unique=True))
    first_name: str | None = Field(default=None, sa_column=Column(String(128)))
    last_name: str | None = Field(default=None, sa_column=Column(String(128)))
    country: str | None = Field(default=None, sa_column=Column(String(2)))
    age_band: str | None = Field(default=None, sa_column=Column(String(8)))
    region: str | None = Field(default=None, sa_column=Column(String(128)))
    loyalty_tier: str | None = Field(default=None, sa_column=Column(String(16)))
    channel_email: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    channel_phone: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    channel_post: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    channel_sms: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    # SHA-256 of the record's canonical form: lets a re-import tell "unchanged" from
    # "updated" without reading every child row back.
    record_digest: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class IdentifierRow(SQLModel, table=True):
    __tablename__ = "identifiers"
    __table_args__ = (
        # One index over the values serves both uniqueness and lookups by identifier (a
        # data-subject request names an e-mail or phone); a second one over (kind, value)
        # would write every value a third time on import.
        UniqueConstraint("kind", "value", "customer_id", name="uq_identifiers_kind_value_customer"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    customer_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    kind: str = Field(sa_column=Column(String(8), nullable=False))
    value: str = Field(sa_column=Column(String(320), nullable=False))
    # Hash-to-curve u-coordinate (DESIGN.md, matching step 2): key-independent, so it is
    # computed once at import and never leaves the node.
    point: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))


class InterestRow(SQLModel, table=True):
    __tablename__ = "customer_interests"

    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    )
    interest: str = Field(sa_column=Column(String(64), primary_key=True))


class PurchaseRow(SQLModel, table=True):
    __tablename__ = "purchases"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    customer_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    purchased_on: date = Field(sa_column=Column(Date, nullable=False))
    category: str = Field(sa_column=Column(String(64), nullable=False))
    amount: Decimal = Field(sa_column=Column(Numeric(12, 2), nullable=False))


class AgreementRow(SQLModel, table=True):
    """This node's own signed copy of an agreement it is party to."""

    __tablename__ = "node_agreements"

    agreement_id: str = Field(sa_column=Column(String(36), primary_key=True))
    role: str = Field(sa_column=Column(String(16), nullable=False))  # owner | recipient
    partner: str = Field(sa_column=Column(String(64), nullable=False))
    canonical: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    owner_signature: bytes = Field(sa_column=Column(LargeBinary(64), nullable=False))
    recipient_signature: bytes = Field(sa_column=Column(LargeBinary(64), nullable=False))
    rotation: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class BlindUsageRow(SQLModel, table=True):
    """Identifiers this node blinded under an agreement in one epoch (the cap's counter)."""

    __tablename__ = "node_blind_usage"

    agreement_id: str = Field(sa_column=Column(String(36), primary_key=True))
    epoch: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    rotation: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    identifiers: int = Field(sa_column=Column(Integer, nullable=False))


class FlowRow(SQLModel, table=True):
    """A flow this node took part in, as the node saw it (results stay on the node)."""

    __tablename__ = "node_flows"

    flow_id: str = Field(sa_column=Column(String(36), primary_key=True))
    agreement_id: str = Field(sa_column=Column(String(36), nullable=False, index=True))
    role: str = Field(sa_column=Column(String(16), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    matched_customers: int | None = Field(default=None, sa_column=Column(Integer))
    delete_after: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class MatchRow(SQLModel, table=True):
    """One of this node's own customers found in a partner's segment (match mode)."""

    __tablename__ = "node_match_results"

    flow_id: str = Field(
        sa_column=Column(String(36), ForeignKey("node_flows.flow_id"), primary_key=True)
    )
    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    )


NODE_TABLES = (
    CustomerRow.__table__,  # type: ignore[attr-defined]
    IdentifierRow.__table__,  # type: ignore[attr-defined]
    InterestRow.__table__,  # type: ignore[attr-defined]
    PurchaseRow.__table__,  # type: ignore[attr-defined]
    AgreementRow.__table__,  # type: ignore[attr-defined]
    BlindUsageRow.__table__,  # type: ignore[attr-defined]
    FlowRow.__table__,  # type: ignore[attr-defined]
    MatchRow.__table__,  # type: ignore[attr-defined]
)
