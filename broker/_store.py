"""The broker's repository: nodes, agreements, flows, the catalog, revocations in transit
and witnessed heads (never tokens, overlap sizes or release payloads).

The broker's own audit log lives in the same database (``consent.Ledger`` tables, migrated
by ``consent.migrate_ledger``); ``open_broker_store`` migrates both."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, OperationalError

from broker._tables import (
    BrokerAgreementRow,
    BrokerCatalogRow,
    BrokerFlowRow,
    BrokerNodeRow,
    BrokerRevocationRow,
    BrokerWitnessedHeadRow,
)
from broker.catalog import CatalogEntry
from broker.errors import (
    AgreementConflict,
    BrokerStoreError,
    FlowConflict,
    RevocationConflict,
    UnknownAgreement,
    UnknownFlow,
    UnknownNode,
    UnknownRevocation,
    WitnessRace,
)
from broker.witness import WitnessedHead
from consent import migrate_ledger
from consent.agreements import OutputMode, PartyKeys, SignedAgreement
from consent.records import SignedTreeHead
from consent.signed import WitnessCosignature
from kernel.db import create_db_engine, redacted

MIGRATIONS = Path(__file__).parent / "migrations"
_nodes = BrokerNodeRow.__table__  # type: ignore[attr-defined]
_agreements = BrokerAgreementRow.__table__  # type: ignore[attr-defined]
_flows = BrokerFlowRow.__table__  # type: ignore[attr-defined]
_catalog = BrokerCatalogRow.__table__  # type: ignore[attr-defined]
_revocations = BrokerRevocationRow.__table__  # type: ignore[attr-defined]
_witnessed = BrokerWitnessedHeadRow.__table__  # type: ignore[attr-defined]
PENDING: Final = "pending"
ACKNOWLEDGED: Final = "acknowledged"


def migrate_broker(engine: Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_broker_store(url: URL) -> Engine:
    """An engine on the broker's database, with its tables and its audit log's migrated."""
    engine = create_db_engine(url)
    try:
        migrate_broker(engine)
        migrate_ledger(engine)
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
    # The serialized accord.common.v1.AgreementRevocation, once a party revoked it.
    revocation: bytes | None = None


@dataclass(frozen=True, slots=True)
class AgreementSaved:
    """What ``save_agreement`` did: the record, and whether it was new or just activated
    (neither on an idempotent repeat)."""

    record: AgreementRecord
    created: bool
    activated: bool


@dataclass(frozen=True, slots=True)
class RevocationRecord:
    """A revocation in transit. ``message`` and ``ack`` are the serialized wire messages
    as signed (the broker stores what it relays, byte for byte)."""

    revocation_id: str
    agreement_id: str
    owner: str
    recipient: str
    message: bytes
    relayed_at: datetime
    ack: bytes | None
    delivery_attempts: int
    last_attempt_at: datetime | None
    state: str

    @property
    def pending(self) -> bool:
        return self.state == PENDING


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
    ) -> AgreementSaved:  # fmt: skip
        """Insert a proposed or countersigned agreement, or activate a known proposal.

        Idempotent on the agreement id and its canonical bytes; other bytes under a known
        id raise ``AgreementConflict``.
        """
        agreement_id = signed.agreement.agreement_id
        created = activated = False
        try:
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
                    created, activated = True, active
                elif bytes(row.canonical) != signed.canonical:
                    raise AgreementConflict(
                        f"another agreement is already known under the id {agreement_id}"
                    )
                elif active and row.activated_at is None and row.revoked_at is None:
                    changed = connection.execute(
                        update(_agreements)
                        .where(
                            _agreements.c.agreement_id == agreement_id,
                            _agreements.c.activated_at.is_(None),
                            _agreements.c.revoked_at.is_(None),  # a revoked proposal stays so
                        )
                        .values(recipient_signature=signed.recipient_signature, activated_at=now)
                    ).rowcount
                    activated = changed == 1
        except IntegrityError:  # another replica inserted it first: read what it stored
            return self.save_agreement(
                signed, owner=owner, recipient=recipient, now=now, active=active
            )
        return AgreementSaved(self.agreement(agreement_id), created, activated)

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

    def revoke_agreement(
        self, agreement_id: str, *, revocation: bytes, now: datetime
    ) -> tuple[AgreementRecord, bool]:
        """Mark the agreement revoked with the party's signed revocation; idempotent: a
        revoked agreement keeps its first revocation (the flag says whether this one was)."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(_agreements)
                .where(
                    _agreements.c.agreement_id == agreement_id,
                    _agreements.c.revoked_at.is_(None),
                )
                .values(revoked_at=now, revocation=revocation)
            ).rowcount
        return self.agreement(agreement_id), changed == 1

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

    # --- catalog ------------------------------------------------------------------------

    def publish(self, entry: CatalogEntry) -> CatalogEntry:
        """Create or replace the owner's entry for this segment."""
        values = _catalog_values(entry)
        key = (_catalog.c.owner_node == entry.owner_node) & (
            _catalog.c.segment_id == entry.segment_id
        )
        for _ in range(2):  # a concurrent first publish may insert between our two steps
            try:
                with self.engine.begin() as connection:
                    if connection.execute(update(_catalog).where(key).values(values)).rowcount:
                        break
                    connection.execute(insert(_catalog).values(values))
                    break
            except IntegrityError:
                continue
        return self.catalog_entry(entry.owner_node, entry.segment_id)

    def catalog_entry(self, owner_node: str, segment_id: str) -> CatalogEntry:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_catalog).where(
                    _catalog.c.owner_node == owner_node, _catalog.c.segment_id == segment_id
                )
            ).one()
        return _catalog_entry(row)

    def catalog(self, *, owner_node: str = "", purpose: str = "") -> list[CatalogEntry]:
        """Entries by owner and segment id; filtered by owner and purpose when given."""
        query = select(_catalog).order_by(_catalog.c.owner_node, _catalog.c.segment_id)
        if owner_node:
            query = query.where(_catalog.c.owner_node == owner_node)
        with self.engine.connect() as connection:
            entries = [_catalog_entry(row) for row in connection.execute(query)]
        # Purposes are a short list per entry; filtering here keeps the column portable.
        return [e for e in entries if not purpose or purpose in e.purposes]

    # --- revocations --------------------------------------------------------------------

    def add_revocation(self, record: RevocationRecord) -> tuple[RevocationRecord, bool]:
        """Store a new revocation, or return the stored one if it has the same bytes.

        Idempotent on the revocation id; other content under a known id raises
        ``RevocationConflict``.
        """
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(_revocations).values(**_revocation_values(record)))
            return record, True
        except IntegrityError:
            existing = self.revocation(record.revocation_id)
            if existing.message != record.message:
                raise RevocationConflict(
                    f"revocation {record.revocation_id} was already relayed with other content"
                ) from None
            return existing, False

    def revocation(self, revocation_id: str) -> RevocationRecord:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_revocations).where(_revocations.c.revocation_id == revocation_id)
            ).first()
        if row is None:
            raise UnknownRevocation(f"the broker relayed no revocation {revocation_id}")
        return _revocation(row)

    def record_attempt(self, revocation_id: str, *, now: datetime) -> RevocationRecord:
        """One more push to the recipient was tried at ``now``."""
        with self.engine.begin() as connection:
            connection.execute(
                update(_revocations)
                .where(_revocations.c.revocation_id == revocation_id)
                .values(delivery_attempts=_revocations.c.delivery_attempts + 1, last_attempt_at=now)
            )
        return self.revocation(revocation_id)

    def acknowledge(self, revocation_id: str, *, ack: bytes) -> tuple[RevocationRecord, bool]:
        """Store the recipient's verified acknowledgement; a revocation keeps its first one
        (the flag says whether this call stored it)."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(_revocations)
                .where(
                    _revocations.c.revocation_id == revocation_id,
                    _revocations.c.state == PENDING,
                )
                .values(ack=ack, state=ACKNOWLEDGED)
            ).rowcount
        return self.revocation(revocation_id), changed == 1

    def pending_revocations(
        self, *, recipient: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[RevocationRecord]:
        """Unacknowledged revocations, oldest first (all, or those to ``recipient``)."""
        query = (
            select(_revocations)
            .where(_revocations.c.state == PENDING)
            .order_by(_revocations.c.relayed_at, _revocations.c.revocation_id)
            .limit(limit)
            .offset(offset)
        )
        if recipient is not None:
            query = query.where(_revocations.c.recipient == recipient)
        with self.engine.connect() as connection:
            return [_revocation(row) for row in connection.execute(query)]

    # --- witnessed heads ----------------------------------------------------------------

    def latest_witnessed(self, origin: str) -> WitnessedHead | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_witnessed)
                .where(_witnessed.c.origin == origin)
                .order_by(_witnessed.c.tree_size.desc())
                .limit(1)
            ).first()
        return None if row is None else _witnessed_head(row)

    def save_witnessed(self, witnessed: WitnessedHead) -> tuple[WitnessedHead, bool]:
        """Store a witnessed head (the flag: whether this call stored it). If another head
        was witnessed after the same predecessor meanwhile, ``WitnessRace`` — unless it is
        this very head, witnessed by a concurrent call, which is returned."""
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(_witnessed).values(**_witnessed_values(witnessed)))
        except IntegrityError:
            head = witnessed.head
            with self.engine.connect() as connection:
                row = connection.execute(
                    select(_witnessed).where(
                        _witnessed.c.origin == head.origin,
                        _witnessed.c.tree_size == head.tree_size,
                    )
                ).first()
            if row is not None and bytes(row.root_hash) == head.root_hash:
                return _witnessed_head(row), False
            raise WitnessRace(
                "another head of this log was witnessed at the same time: send the latest "
                "head again, with a proof from the broker's latest witnessed head"
            ) from None
        return witnessed, True

    def witnessed_heads(self, origin: str, *, limit: int, offset: int = 0) -> list[WitnessedHead]:
        """The witnessed heads of one log, oldest (smallest) first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(_witnessed)
                .where(_witnessed.c.origin == origin)
                .order_by(_witnessed.c.tree_size)
                .limit(limit)
                .offset(offset)
            )
            return [_witnessed_head(row) for row in rows]

    def witnessed_count(self, origin: str) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    select(func.count())
                    .select_from(_witnessed)
                    .where(_witnessed.c.origin == origin)
                ).scalar_one()
            )


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
        revocation=None if row.revocation is None else bytes(row.revocation),
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


def _split(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def _catalog_values(entry: CatalogEntry) -> dict[str, Any]:
    return {
        "owner_node": entry.owner_node,
        "segment_id": entry.segment_id,
        "segment_version": entry.segment_version,
        "title": entry.title,
        "description": entry.description,
        "purposes": ",".join(entry.purposes),
        "output_modes": ",".join(mode.value for mode in entry.output_modes),
        "releasable_fields": ",".join(entry.releasable_fields),
        "size_bucket": entry.size_bucket,
        "published_at": entry.published_at,
    }


def _catalog_entry(row: Any) -> CatalogEntry:
    return CatalogEntry(
        owner_node=row.owner_node,
        segment_id=row.segment_id,
        segment_version=int(row.segment_version),
        title=row.title,
        description=row.description,
        purposes=_split(row.purposes),
        output_modes=tuple(OutputMode(mode) for mode in _split(row.output_modes)),
        releasable_fields=_split(row.releasable_fields),
        size_bucket=int(row.size_bucket),
        published_at=_utc(row.published_at) or row.published_at,
    )


def _revocation_values(record: RevocationRecord) -> dict[str, Any]:
    return {
        "revocation_id": record.revocation_id,
        "agreement_id": record.agreement_id,
        "owner": record.owner,
        "recipient": record.recipient,
        "message": record.message,
        "relayed_at": record.relayed_at,
        "ack": record.ack,
        "delivery_attempts": record.delivery_attempts,
        "last_attempt_at": record.last_attempt_at,
        "state": record.state,
    }


def _revocation(row: Any) -> RevocationRecord:
    return RevocationRecord(
        revocation_id=row.revocation_id,
        agreement_id=row.agreement_id,
        owner=row.owner,
        recipient=row.recipient,
        message=bytes(row.message),
        relayed_at=_utc(row.relayed_at) or row.relayed_at,
        ack=None if row.ack is None else bytes(row.ack),
        delivery_attempts=int(row.delivery_attempts),
        last_attempt_at=_utc(row.last_attempt_at),
        state=row.state,
    )


def _witnessed_values(witnessed: WitnessedHead) -> dict[str, Any]:
    head, cosignature = witnessed.head, witnessed.cosignature
    return {
        "origin": head.origin,
        "tree_size": head.tree_size,
        "previous_tree_size": witnessed.previous_tree_size,
        "root_hash": head.root_hash,
        "timestamp": head.timestamp,
        "key_id": head.key_id,
        "signature": head.signature,
        "witnessed_at": cosignature.witnessed_at,
        "witness_key_id": cosignature.witness_key_id,
        "witness_signature": cosignature.signature,
    }


def _witnessed_head(row: Any) -> WitnessedHead:
    head = SignedTreeHead(
        origin=row.origin,
        tree_size=int(row.tree_size),
        root_hash=bytes(row.root_hash),
        timestamp=row.timestamp,
        key_id=row.key_id,
        signature=bytes(row.signature),
    )
    cosignature = WitnessCosignature(
        origin=head.origin,
        tree_size=head.tree_size,
        root_hash=head.root_hash,
        head_timestamp=head.timestamp,
        witnessed_at=_utc(row.witnessed_at) or row.witnessed_at,
        witness_key_id=row.witness_key_id,
        signature=bytes(row.witness_signature),
    )
    return WitnessedHead(head, cosignature, int(row.previous_tree_size))
