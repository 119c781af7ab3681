"""The broker's repository: registered nodes, agreements, flows (never tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, OperationalError

from broker._tables import BrokerAgreementRow, BrokerFlowRow, BrokerNodeRow
from broker.errors import (
    BrokerStoreError,
    FlowConflict,
    UnknownAgreement,
    UnknownFlow,
    UnknownNode,
)
from consent.agreements import PartyKeys, SignedAgreement
from kernel.db import create_db_engine, redacted

MIGRATIONS = Path(__file__).parent / "migrations"
_nodes = BrokerNodeRow.__table__  # type: ignore[attr-defined]
_agreements = BrokerAgreementRow.__table__  # type: ignore[attr-defined]
_flows = BrokerFlowRow.__table__  # type: ignore[attr-defined]


def migrate_broker(engine: Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_broker_store(url: URL) -> Engine:
    engine = create_db_engine(url)
    try:
        migrate_broker(engine)
    except OperationalError as exc:
        engine.dispose()
        raise BrokerStoreError(f"cannot open the broker's database at {redacted(url)}") from exc
    return engine


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    keys: PartyKeys
    endpoint: str
    display_name: str
    registered_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AgreementRecord:
    signed: SignedAgreement
    owner: str
    recipient: str
    submitted_at: datetime
    activated_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class FlowRecord:
    flow_id: str
    agreement_id: str
    requester: str
    owner_segment_id: str
    recipient_segment_id: str
    state: str
    failure_reason: str | None
    failure_detail: str | None
    owner_set_size: int
    recipient_set_size: int
    created_at: datetime
    updated_at: datetime

    @property
    def terminal(self) -> bool:
        return self.state in ("succeeded", "failed")


class BrokerStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- nodes --------------------------------------------------------------------------

    def register(self, keys: PartyKeys, *, endpoint: str, display_name: str, now: datetime
                 ) -> NodeRecord:  # fmt: skip
        values = {
            "signing_public_key": keys.signing_public_key,
            "hpke_public_key": keys.hpke_public_key,
            "endpoint": endpoint,
            "display_name": display_name,
            "updated_at": now,
        }
        with self.engine.begin() as connection:
            found = connection.execute(
                select(_nodes.c.name).where(_nodes.c.name == keys.name)
            ).first()
            if found is None:
                connection.execute(
                    insert(_nodes).values(name=keys.name, registered_at=now, **values)
                )
            else:
                connection.execute(update(_nodes).where(_nodes.c.name == keys.name).values(values))
        return self.node(keys.name)

    def node(self, name: str) -> NodeRecord:
        with self.engine.connect() as connection:
            row = connection.execute(select(_nodes).where(_nodes.c.name == name)).first()
        if row is None:
            raise UnknownNode(f"no node named {name!r} is registered")
        return _node(row)

    def nodes(self) -> list[NodeRecord]:
        with self.engine.connect() as connection:
            return [_node(r) for r in connection.execute(select(_nodes).order_by(_nodes.c.name))]

    # --- agreements ---------------------------------------------------------------------

    def save_agreement(
        self, signed: SignedAgreement, *, owner: str, recipient: str, now: datetime,
        active: bool,
    ) -> AgreementRecord:  # fmt: skip
        agreement_id = signed.agreement.agreement_id
        with self.engine.begin() as connection:
            row = connection.execute(
                select(_agreements).where(_agreements.c.agreement_id == agreement_id)
            ).first()
            if row is None:
                connection.execute(
                    insert(_agreements).values(
                        agreement_id=agreement_id,
                        owner=owner,
                        recipient=recipient,
                        canonical=signed.canonical,
                        owner_signature=signed.owner_signature,
                        recipient_signature=signed.recipient_signature,
                        submitted_at=now,
                        activated_at=now if active else None,
                    )
                )
            elif active and row.activated_at is None:
                connection.execute(
                    update(_agreements)
                    .where(_agreements.c.agreement_id == agreement_id)
                    .values(recipient_signature=signed.recipient_signature, activated_at=now)
                )
        return self.agreement(agreement_id)

    def agreement(self, agreement_id: str) -> AgreementRecord:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_agreements).where(_agreements.c.agreement_id == agreement_id)
            ).first()
        if row is None:
            raise UnknownAgreement(f"the broker holds no agreement {agreement_id}")
        return _agreement(row)

    def agreements_of(self, node: str) -> list[AgreementRecord]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(_agreements)
                .where((_agreements.c.owner == node) | (_agreements.c.recipient == node))
                .order_by(_agreements.c.submitted_at)
            )
            return [_agreement(r) for r in rows]

    # --- flows --------------------------------------------------------------------------

    def create_flow(self, record: FlowRecord) -> tuple[FlowRecord, bool]:
        """Insert a new flow, or return the existing one with the same id and parameters."""
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(_flows).values(**_flow_values(record)))
            return record, True
        except IntegrityError:
            existing = self.flow(record.flow_id)
            same = (
                existing.agreement_id,
                existing.requester,
                existing.owner_segment_id,
                existing.recipient_segment_id,
            ) == (
                record.agreement_id,
                record.requester,
                record.owner_segment_id,
                record.recipient_segment_id,
            )
            if not same:
                raise FlowConflict(
                    f"flow {record.flow_id} already exists with other parameters"
                ) from None
            return existing, False

    def flow(self, flow_id: str) -> FlowRecord:
        with self.engine.connect() as connection:
            row = connection.execute(select(_flows).where(_flows.c.flow_id == flow_id)).first()
        if row is None:
            raise UnknownFlow(f"the broker knows no flow {flow_id}")
        return _flow(row)

    def update_flow(self, flow_id: str, *, now: datetime, **values: Any) -> FlowRecord:
        with self.engine.begin() as connection:
            connection.execute(
                update(_flows).where(_flows.c.flow_id == flow_id).values(updated_at=now, **values)
            )
        return self.flow(flow_id)

    def flows_started_since(self, agreement_id: str, since: datetime) -> int:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(_flows.c.flow_id).where(
                    _flows.c.agreement_id == agreement_id, _flows.c.created_at >= since
                )
            ).all()
        return len(rows)


def _node(row: Any) -> NodeRecord:
    return NodeRecord(
        keys=PartyKeys(row.name, bytes(row.signing_public_key), bytes(row.hpke_public_key)),
        endpoint=row.endpoint,
        display_name=row.display_name,
        registered_at=_utc(row.registered_at) or row.registered_at,
        updated_at=_utc(row.updated_at) or row.updated_at,
    )


def _agreement(row: Any) -> AgreementRecord:
    return AgreementRecord(
        signed=SignedAgreement(
            bytes(row.canonical), bytes(row.owner_signature), bytes(row.recipient_signature)
        ),
        owner=row.owner,
        recipient=row.recipient,
        submitted_at=_utc(row.submitted_at) or row.submitted_at,
        activated_at=_utc(row.activated_at),
        revoked_at=_utc(row.revoked_at),
    )


def _flow(row: Any) -> FlowRecord:
    return FlowRecord(
        flow_id=row.flow_id,
        agreement_id=row.agreement_id,
        requester=row.requester,
        owner_segment_id=row.owner_segment_id,
        recipient_segment_id=row.recipient_segment_id,
        state=row.state,
        failure_reason=row.failure_reason,
        failure_detail=row.failure_detail,
        owner_set_size=int(row.owner_set_size),
        recipient_set_size=int(row.recipient_set_size),
        created_at=_utc(row.created_at) or row.created_at,
        updated_at=_utc(row.updated_at) or row.updated_at,
    )


def _flow_values(record: FlowRecord) -> dict[str, Any]:
    return {
        "flow_id": record.flow_id,
        "agreement_id": record.agreement_id,
        "requester": record.requester,
        "owner_segment_id": record.owner_segment_id,
        "recipient_segment_id": record.recipient_segment_id,
        "state": record.state,
        "failure_reason": record.failure_reason,
        "failure_detail": record.failure_detail,
        "owner_set_size": record.owner_set_size,
        "recipient_set_size": record.recipient_set_size,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
