"""SQLModel tables of the customer store. They never leave the repository layer.

The import path writes through SQLAlchemy Core on these tables' ``__table__`` objects
(bulk inserts); ORM objects are used only where a handful of rows is read.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

import kernel.db  # noqa: F401  (sets the shared naming convention before tables exist)


class CustomerRow(SQLModel, table=True):
    __tablename__ = "customers"
    # A flow that cached its consented set re-reads only the customers changed since.
    __table_args__ = (Index("ix_customers_changed_generation", "changed_generation"),)

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
    # The store generation of the import batch that last inserted or changed the row.
    changed_generation: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )


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
    # overlap: the owner-signed count as received (recipient) or released (owner)
    overlap_count: int | None = Field(default=None, sa_column=Column(Integer))
    overlap_suppressed: bool | None = Field(default=None, sa_column=Column(Boolean))
    # release: records received (recipient) or released (owner)
    records: int | None = Field(default=None, sa_column=Column(Integer))
    delete_after: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class BudgetRow(SQLModel, table=True):
    """Epsilon an overlap agreement has spent (owner side); never reset."""

    __tablename__ = "node_budgets"

    agreement_id: str = Field(sa_column=Column(String(36), primary_key=True))
    spent: str = Field(sa_column=Column(String(40), nullable=False))  # a decimal string


class ReleaseRow(SQLModel, table=True):
    """Owner side: which customer a released record was, so a withdrawal can revoke it."""

    __tablename__ = "node_releases"
    __table_args__ = (Index("ix_node_releases_customer", "customer_id"),)

    release_id: bytes = Field(sa_column=Column(LargeBinary(16), primary_key=True))
    agreement_id: str = Field(sa_column=Column(String(36), nullable=False))
    flow_id: str = Field(sa_column=Column(String(36), nullable=False))
    # No foreign key: erasure deletes the customer, and the release must stay revocable.
    customer_id: int = Field(sa_column=Column(Integer, nullable=False))
    released_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class ReceivedRow(SQLModel, table=True):
    """Recipient side: a released record as received (deleted at delete_after or revocation)."""

    __tablename__ = "node_received"
    __table_args__ = (Index("ix_node_received_agreement", "agreement_id"),)

    release_id: bytes = Field(sa_column=Column(LargeBinary(16), primary_key=True))
    agreement_id: str = Field(sa_column=Column(String(36), nullable=False))
    flow_id: str = Field(sa_column=Column(String(36), nullable=False))
    fields: str = Field(sa_column=Column(Text, nullable=False))  # JSON: name -> values
    channels: str = Field(sa_column=Column(String(64), nullable=False))
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    delete_after: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )


class RevocationRow(SQLModel, table=True):
    """Owner side: a signed revocation on its way to a recipient, until acknowledged."""

    __tablename__ = "node_revocations"

    revocation_id: str = Field(sa_column=Column(String(36), primary_key=True))
    agreement_id: str = Field(sa_column=Column(String(36), nullable=False))
    recipient: str = Field(sa_column=Column(String(64), nullable=False))
    reason: str = Field(sa_column=Column(String(32), nullable=False))
    release_ids: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # 16 bytes each
    all_releases: bool = Field(sa_column=Column(Boolean, nullable=False))
    issued_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    signature: bytes = Field(sa_column=Column(LargeBinary(64), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))  # pending | acknowledged
    deleted_records: int | None = Field(default=None, sa_column=Column(Integer))
    acknowledged_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True))
    )
    ack_signature: bytes | None = Field(default=None, sa_column=Column(LargeBinary(64)))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
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


class SegmentRow(SQLModel, table=True):
    """A segment this node defined over its own customers (node/segments.py)."""

    __tablename__ = "node_segments"

    segment_id: str = Field(sa_column=Column(String(64), primary_key=True))
    title: str = Field(sa_column=Column(String(200), nullable=False))
    description: str = Field(sa_column=Column(Text, nullable=False))
    # SegmentFilter.canonical(): comparing the text tells whether the filter changed.
    filter: str = Field(sa_column=Column(Text, nullable=False))
    # Starts at 1 and goes up only when the filter changes (a new title does not).
    version: int = Field(sa_column=Column(Integer, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class StoreGenerationRow(SQLModel, table=True):
    """One row whose number goes up in every transaction that changes customers or their
    identifiers (import, erasure): a flow's cached consented set is still the store's
    while the number it was read at is, and needs only the customers whose
    ``changed_generation`` is newer while no customer was deleted since
    (docs/matching.md, "What a repeat costs")."""

    __tablename__ = "node_store_generation"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    generation: int = Field(sa_column=Column(BigInteger, nullable=False))
    deleted_generation: int = Field(sa_column=Column(BigInteger, nullable=False))


NODE_TABLES = (
    CustomerRow.__table__,  # type: ignore[attr-defined]
    IdentifierRow.__table__,  # type: ignore[attr-defined]
    InterestRow.__table__,  # type: ignore[attr-defined]
    PurchaseRow.__table__,  # type: ignore[attr-defined]
    AgreementRow.__table__,  # type: ignore[attr-defined]
    BlindUsageRow.__table__,  # type: ignore[attr-defined]
    FlowRow.__table__,  # type: ignore[attr-defined]
    MatchRow.__table__,  # type: ignore[attr-defined]
    BudgetRow.__table__,  # type: ignore[attr-defined]
    ReleaseRow.__table__,  # type: ignore[attr-defined]
    ReceivedRow.__table__,  # type: ignore[attr-defined]
    RevocationRow.__table__,  # type: ignore[attr-defined]
    SegmentRow.__table__,  # type: ignore[attr-defined]
    StoreGenerationRow.__table__,  # type: ignore[attr-defined]
)
