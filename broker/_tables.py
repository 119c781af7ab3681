"""SQLModel tables of the broker: nodes, agreements, flows, the catalog, revocations in
transit and witnessed tree heads. Tokens, overlap sizes and release payloads are never
stored; revocations name releases by random release ids only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
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
    # The party's signed AgreementRevocation (serialized accord.common.v1 message), kept so
    # either party can show who revoked, when and why.
    revocation: bytes | None = Field(default=None, sa_column=Column(LargeBinary))


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


class BrokerCatalogRow(SQLModel, table=True):
    """A published segment: name, offer and padded size bucket, never its members."""

    __tablename__ = "broker_catalog"
    __table_args__ = (PrimaryKeyConstraint("owner_node", "segment_id"),)

    owner_node: str = Field(sa_column=Column(String(63), nullable=False))
    segment_id: str = Field(sa_column=Column(String(64), nullable=False))
    segment_version: int = Field(sa_column=Column(Integer, nullable=False))
    title: str = Field(sa_column=Column(String(200), nullable=False))
    description: str = Field(sa_column=Column(Text, nullable=False))
    purposes: str = Field(sa_column=Column(Text, nullable=False))  # "a.b,c.d"
    output_modes: str = Field(sa_column=Column(String(64), nullable=False))  # "overlap,match"
    releasable_fields: str = Field(sa_column=Column(Text, nullable=False))
    size_bucket: int = Field(sa_column=Column(BigInteger, nullable=False))
    published_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class BrokerRevocationRow(SQLModel, table=True):
    """A revocation in transit from owner to recipient, until the recipient acknowledges."""

    __tablename__ = "broker_revocations"
    __table_args__ = (
        Index("ix_broker_revocations_recipient", "recipient", "state", "relayed_at"),
        Index("ix_broker_revocations_state", "state", "relayed_at"),
    )

    revocation_id: str = Field(sa_column=Column(String(36), primary_key=True))
    agreement_id: str = Field(sa_column=Column(String(36), nullable=False))
    owner: str = Field(sa_column=Column(String(63), nullable=False))
    recipient: str = Field(sa_column=Column(String(63), nullable=False))
    # The serialized accord.common.v1.Revocation exactly as the owner signed and sent it.
    message: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    relayed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    # The serialized accord.common.v1.RevocationAck, once it verified.
    ack: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    delivery_attempts: int = Field(sa_column=Column(Integer, nullable=False))
    last_attempt_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True))
    )
    state: str = Field(sa_column=Column(String(16), nullable=False))  # pending | acknowledged


class BrokerWitnessedHeadRow(SQLModel, table=True):
    """A node's signed tree head the broker verified and co-signed."""

    __tablename__ = "broker_witnessed_heads"
    __table_args__ = (
        PrimaryKeyConstraint("origin", "tree_size"),
        # At most one head extends any witnessed head: two heads sent at once cannot both
        # be checked against the same predecessor and fork the log (-1: the first head).
        UniqueConstraint("origin", "previous_tree_size", name="uq_broker_witnessed_heads_chain"),
    )

    origin: str = Field(sa_column=Column(String(200), nullable=False))
    tree_size: int = Field(sa_column=Column(BigInteger, nullable=False, autoincrement=False))
    previous_tree_size: int = Field(sa_column=Column(BigInteger, nullable=False))
    root_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    timestamp: str = Field(sa_column=Column(String(40), nullable=False))
    key_id: str = Field(sa_column=Column(String(64), nullable=False))
    signature: bytes = Field(sa_column=Column(LargeBinary(64), nullable=False))
    witnessed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    witness_key_id: str = Field(sa_column=Column(String(64), nullable=False))
    witness_signature: bytes = Field(sa_column=Column(LargeBinary(64), nullable=False))


BROKER_TABLES = (
    BrokerNodeRow.__table__,  # type: ignore[attr-defined]
    BrokerAgreementRow.__table__,  # type: ignore[attr-defined]
    BrokerFlowRow.__table__,  # type: ignore[attr-defined]
    BrokerCatalogRow.__table__,  # type: ignore[attr-defined]
    BrokerRevocationRow.__table__,  # type: ignore[attr-defined]
    BrokerWitnessedHeadRow.__table__,  # type: ignore[attr-defined]
)
