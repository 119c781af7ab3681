"""SQLModel tables of the consent ledger and audit log. They never leave the repository layer.

Two kinds of table: the **log** (entries, signed heads, the append state), append-only and
never holding personal data; and the **records** (canonical records with their salts,
the consent-event columns flows query, the subject map), deletable for erasure.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
)
from sqlmodel import Field, SQLModel

import kernel.db  # noqa: F401  (sets the shared naming convention before tables exist)


class LogStateRow(SQLModel, table=True):
    """The one row that serializes appends: size and right edge (frontier) of the tree."""

    __tablename__ = "audit_log_state"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    origin: str | None = Field(default=None, sa_column=Column(String(200)))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The frontier's hashes, 32 bytes each, concatenated (MerkleFrontier.to_hashes).
    frontier: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # Goes up with every append of consent events or erasures: equal numbers, the same
    # consent decisions (Ledger.consent_version), whatever else the log gained.
    consent_generation: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )


class EntryRow(SQLModel, table=True):
    """One leaf of the log: its kind and leaf data (a commitment, never a record)."""

    __tablename__ = "audit_entries"

    leaf_index: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class RecordRow(SQLModel, table=True):
    """The canonical record and salt behind one entry; deleted on erasure."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_records_subject", "subject"),)

    leaf_index: int = Field(
        sa_column=Column(
            BigInteger,
            ForeignKey("audit_entries.leaf_index"),
            primary_key=True,
            autoincrement=False,
        )
    )
    subject: str | None = Field(default=None, sa_column=Column(String(64)))
    record: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    salt: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))


class TreeHeadRow(SQLModel, table=True):
    __tablename__ = "audit_tree_heads"

    tree_size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    origin: str = Field(sa_column=Column(String(200), nullable=False))
    root_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    timestamp: str = Field(sa_column=Column(String(40), nullable=False))
    key_id: str = Field(sa_column=Column(String(64), nullable=False))
    signature: bytes = Field(sa_column=Column(LargeBinary(64), nullable=False))


class SubjectRow(SQLModel, table=True):
    """A consent subject: random pseudonym ↔ the CRM's external id (cleared on erasure)."""

    __tablename__ = "consent_subjects"
    # Flows join a purpose's events (in pseudonym order) to external ids: covered here.
    __table_args__ = (Index("ix_consent_subjects_pseudonym_external", "pseudonym", "external_id"),)

    pseudonym: str = Field(sa_column=Column(String(64), primary_key=True))
    external_id: str | None = Field(default=None, sa_column=Column(String(128), unique=True))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    erased_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class ConsentEventRow(SQLModel, table=True):
    """A consent event's fields as columns, for flow-time queries; deleted on erasure."""

    __tablename__ = "consent_events"
    __table_args__ = (
        Index("ix_consent_events_subject", "subject"),
        # The flow-time decision reads a purpose's events per subject, in decision order:
        # this index covers that query, so it needs neither a sort nor the table.
        Index(
            "ix_consent_events_decision",
            "purpose",
            "subject",
            "collected_at",
            "leaf_index",
            "recipient",
            "event_type",
            "purpose_version",
            "channels",
            "expires_at",
        ),
    )

    event_id: str = Field(sa_column=Column(String(36), primary_key=True))
    leaf_index: int = Field(
        sa_column=Column(
            BigInteger, ForeignKey("audit_entries.leaf_index"), nullable=False, unique=True
        )
    )
    subject: str = Field(
        sa_column=Column(String(64), ForeignKey("consent_subjects.pseudonym"), nullable=False)
    )
    event_type: str = Field(sa_column=Column(String(16), nullable=False))
    purpose: str = Field(sa_column=Column(String(64), nullable=False))
    purpose_version: int = Field(sa_column=Column(Integer, nullable=False))
    recipient: str = Field(sa_column=Column(String(64), nullable=False))
    channels: str = Field(sa_column=Column(String(64), nullable=False))  # "email,post"
    collected_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    recorded_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    # SHA-256 of the event as submitted (pseudonym, not external id): a retry with the
    # same event id must carry the same content (idempotency), else EventConflict.
    content_digest: str = Field(sa_column=Column(String(64), nullable=False))


CONSENT_TABLES = (
    LogStateRow.__table__,  # type: ignore[attr-defined]
    EntryRow.__table__,  # type: ignore[attr-defined]
    RecordRow.__table__,  # type: ignore[attr-defined]
    TreeHeadRow.__table__,  # type: ignore[attr-defined]
    SubjectRow.__table__,  # type: ignore[attr-defined]
    ConsentEventRow.__table__,  # type: ignore[attr-defined]
)
