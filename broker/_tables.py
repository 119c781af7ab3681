"""SQLModel tables of the broker: nodes, agreements, flows. Tokens are never stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, String, Text
from sqlmodel import Field, SQLModel

import kernel.db  # noqa: F401  (sets the shared naming convention before tables exist)


class BrokerNodeRow(SQLModel, table=True):
    __tablename__ = "broker_nodes"

    name: str = Field(sa_column=Column(String(63), primary_key=True))
    signing_public_key: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    hpke_public_key: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    endpoint: str = Field(sa_column=Column(String(255), nullable=False))
    display_name: str = Field(sa_column=Column(String(200), nullable=False))
    registered_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class BrokerAgreementRow(SQLModel, table=True):
    __tablename__ = "broker_agreements"
    __table_args__ = (
        Index("ix_broker_agreements_owner", "owner"),
        Index("ix_broker_agreements_recipient", "recipient"),
    )

    agreement_id: str = Field(sa_column=Column(String(36), primary_key=True))
    owner: str = Field(sa_column=Column(String(63), nullable=False))
    recipient: str = Field(sa_column=Column(String(63), nullable=False))
    canonical: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    owner_signature: bytes = Field(sa_column=Column(LargeBinary(64), nullable=False))
    recipient_signature: bytes = Field(sa_column=Column(LargeBinary(64), nullable=False))
    submitted_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    activated_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class BrokerFlowRow(SQLModel, table=True):
    __tablename__ = "broker_flows"
    __table_args__ = (Index("ix_broker_flows_agreement", "agreement_id", "created_at"),)

    flow_id: str = Field(sa_column=Column(String(36), primary_key=True))
    agreement_id: str = Field(sa_column=Column(String(36), nullable=False))
    requester: str = Field(sa_column=Column(String(63), nullable=False))
    owner_segment_id: str = Field(sa_column=Column(String(64), nullable=False))
    recipient_segment_id: str = Field(sa_column=Column(String(64), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    failure_reason: str | None = Field(default=None, sa_column=Column(String(32)))
    failure_detail: str | None = Field(default=None, sa_column=Column(Text))
    owner_set_size: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    recipient_set_size: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


BROKER_TABLES = (
    BrokerNodeRow.__table__,  # type: ignore[attr-defined]
    BrokerAgreementRow.__table__,  # type: ignore[attr-defined]
    BrokerFlowRow.__table__,  # type: ignore[attr-defined]
)
