"""The broker's gRPC service: a thin adapter over the store, the orchestrator, the
revocation courier, the witness checks and the broker's audit log.

Every RPC names its caller (``kernel.rpc.caller``); the table ``_STATUS`` maps domain
errors to status codes; docs/broker.md lists each RPC's semantics and idempotency."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NoReturn

import grpc

from broker._audit import BrokerAudit
from broker._courier import RevocationCourier
from broker._orchestrator import Orchestrator
from broker._store import (
    PENDING,
    AgreementRecord,
    BrokerStore,
    FlowRecord,
    NodeRecord,
    RevocationRecord,
)
from broker.catalog import CatalogEntry, check_entry
from broker.errors import (
    AgreementConflict,
    BrokerError,
    CatalogEntryInvalid,
    FlowConflict,
    LogInconsistent,
    LogShrank,
    NotAuthorized,
    RevocationConflict,
    RevocationInvalid,
    TreeHeadInvalid,
    UnknownAgreement,
    UnknownFlow,
    UnknownNode,
    UnknownRevocation,
    WitnessRace,
)
from broker.revocations import check_agreement_revocation, check_revocation, next_attempt_at
from broker.witness import ConsistencyClaim, Decision, WitnessedHead, check_head, decide
from consent.agreements import PartyKeys
from consent.errors import AgreementInactive, ConsentError, InvalidAgreement
from consent.serde import (
    agreement_revocation_from_proto,
    agreement_to_proto,
    keys_from_proto,
    keys_to_proto,
    mode_from_proto,
    mode_to_proto,
    revocation_from_proto,
    signed_agreement_from_proto,
    signed_agreement_to_proto,
    state_to_proto,
    time_to_proto,
    tree_head_from_proto,
    tree_head_to_proto,
    witnessed_head_to_proto,
)
from consent.signed import WitnessCosignature
from kernel.crypto import SigningKey, sha256
from kernel.errors import ConfigurationError
from kernel.rpc import abort, caller, parse_address
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc
from kernel.wire.accord.common.v1 import (
    agreement_pb2,
    audit_pb2,
    common_pb2,
    flow_pb2,
    revocation_pb2,
)

DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000

# One table maps domain errors to gRPC status codes (CONVENTIONS.md, "Errors").
_STATUS: dict[type[Exception], grpc.StatusCode] = {
    UnknownNode: grpc.StatusCode.NOT_FOUND,
    UnknownAgreement: grpc.StatusCode.NOT_FOUND,
    UnknownFlow: grpc.StatusCode.NOT_FOUND,
    UnknownRevocation: grpc.StatusCode.NOT_FOUND,
    FlowConflict: grpc.StatusCode.ALREADY_EXISTS,
    AgreementConflict: grpc.StatusCode.ALREADY_EXISTS,
    RevocationConflict: grpc.StatusCode.ALREADY_EXISTS,
    NotAuthorized: grpc.StatusCode.PERMISSION_DENIED,
    CatalogEntryInvalid: grpc.StatusCode.INVALID_ARGUMENT,
    RevocationInvalid: grpc.StatusCode.INVALID_ARGUMENT,  # AcknowledgementInvalid too
    TreeHeadInvalid: grpc.StatusCode.INVALID_ARGUMENT,
    LogShrank: grpc.StatusCode.FAILED_PRECONDITION,
    LogInconsistent: grpc.StatusCode.FAILED_PRECONDITION,
    WitnessRace: grpc.StatusCode.ABORTED,
    InvalidAgreement: grpc.StatusCode.INVALID_ARGUMENT,
    AgreementInactive: grpc.StatusCode.FAILED_PRECONDITION,
}
_FLOW_STATES = {
    "pending": flow_pb2.FLOW_STATE_PENDING,
    "blinding": flow_pb2.FLOW_STATE_BLINDING,
    "reblinding": flow_pb2.FLOW_STATE_REBLINDING,
    "matching": flow_pb2.FLOW_STATE_MATCHING,
    "delivering": flow_pb2.FLOW_STATE_DELIVERING,
    "succeeded": flow_pb2.FLOW_STATE_SUCCEEDED,
    "failed": flow_pb2.FLOW_STATE_FAILED,
}


def fail(context: grpc.ServicerContext, error: Exception) -> NoReturn:
    for kind, code in _STATUS.items():
        if isinstance(error, kind):
            abort(context, code, str(error))
    abort(context, grpc.StatusCode.INTERNAL, "the broker could not complete the request")


def flow_to_proto(flow: FlowRecord) -> flow_pb2.Flow:
    message = flow_pb2.Flow(
        flow_id=flow.flow_id,
        agreement_id=flow.agreement_id,
        owner_segment_id=flow.owner_segment_id,
        recipient_segment_id=flow.recipient_segment_id,
        state=_FLOW_STATES[flow.state],
        created_at=time_to_proto(flow.created_at),
        updated_at=time_to_proto(flow.updated_at),
        owner_set_size=flow.owner_set_size,
        recipient_set_size=flow.recipient_set_size,
    )
    if flow.failure_reason:
        message.failure_reason = flow_pb2.FlowFailureReason.Value(
            f"FLOW_FAILURE_REASON_{flow.failure_reason}"
        )
        message.failure_detail = flow.failure_detail or ""
    return message


class BrokerServicer(broker_pb2_grpc.BrokerServiceServicer):
    def __init__(
        self,
        store: BrokerStore,
        orchestrator: Orchestrator,
        courier: RevocationCourier,
        audit: BrokerAudit,
        *,
        identity: PartyKeys,
        witness_key: SigningKey,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._orchestrator = orchestrator
        self._courier = courier
        self._audit = audit
        self._identity = identity
        self._witness_key = witness_key
        self._now = now

    def _caller(self, context: grpc.ServicerContext) -> str:
        name = caller(context)
        if not name:
            abort(context, grpc.StatusCode.UNAUTHENTICATED, "the caller did not name itself")
        return name

    # --- registry -----------------------------------------------------------------------

    def RegisterNode(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        try:
            keys = keys_from_proto(request.keys)
            keys.check()
            parse_address(request.endpoint)
        except (InvalidAgreement, ConfigurationError) as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"bad registration: {exc}")
        if keys.name != name:
            abort(context, grpc.StatusCode.PERMISSION_DENIED, "a node registers its own name only")
        record = self._store.register(
            keys, endpoint=request.endpoint, display_name=request.display_name, now=self._now()
        )
        return broker_pb2.RegisterNodeResponse(node=_node(record))

    def ListNodes(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._caller(context)
        return broker_pb2.ListNodesResponse(nodes=[_node(n) for n in self._store.nodes()])

    # --- agreements ---------------------------------------------------------------------

    def SubmitAgreement(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        try:
            signed = signed_agreement_from_proto(request.signed_agreement)
            agreement = signed.verify_owner()
            agreement.party(name)
            for party in (agreement.owner, agreement.recipient):
                registered = self._store.node(party.name).keys
                if registered != party:
                    raise InvalidAgreement(
                        f"the agreement names keys for {party.name} that differ from the "
                        "keys it registered"
                    )
            active = bool(signed.recipient_signature)
            if active:
                signed.verify()
            saved = self._store.save_agreement(
                signed,
                owner=agreement.owner.name,
                recipient=agreement.recipient.name,
                now=self._now(),
                active=active,
            )
        except (ConsentError, BrokerError) as exc:
            fail(context, exc)
        terms = {
            "agreement_id": agreement.agreement_id,
            "owner": agreement.owner.name,
            "recipient": agreement.recipient.name,
            "output_mode": agreement.output_mode.value,
            "purpose": agreement.purpose,
        }
        if saved.created:
            self._audit.record("agreement-submitted", **terms)
        if saved.activated:
            self._audit.record("agreement-activated", **terms)
        return broker_pb2.SubmitAgreementResponse(status=self._status(saved.record))

    def GetAgreement(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        try:
            record = self._store.agreement(request.agreement_id)
            if name not in (record.owner, record.recipient):
                raise NotAuthorized("only the agreement's parties may read it")
        except BrokerError as exc:
            fail(context, exc)
        return broker_pb2.GetAgreementResponse(status=self._status(record))

    def ListAgreements(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        return broker_pb2.ListAgreementsResponse(
            agreements=[self._status(r) for r in self._store.agreements_of(name)]
        )

    def _status(self, record: AgreementRecord) -> agreement_pb2.AgreementStatus:
        signed = record.signed
        agreement = signed.agreement
        state = signed.state_at(now=self._now(), revoked=record.revoked_at is not None)
        status = agreement_pb2.AgreementStatus(
            signed_agreement=signed_agreement_to_proto(signed),
            agreement=agreement_to_proto(agreement),
            state=state_to_proto(state),
            agreement_digest=sha256(signed.canonical),
        )
        if record.activated_at is not None:
            status.activated_at.CopyFrom(time_to_proto(record.activated_at))
        if record.revocation is not None:
            status.revocation.CopyFrom(
                agreement_pb2.AgreementRevocation.FromString(record.revocation)
            )
        return status

    # --- flows --------------------------------------------------------------------------

    def StartFlow(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        now = self._now()
        try:
            canonical = str(uuid.UUID(request.flow_id)) == request.flow_id
        except ValueError:
            canonical = False
        if not canonical:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "flow_id must be a canonical UUID")
        try:
            record = self._store.agreement(request.agreement_id)
            agreement = record.signed.check_active(now=now, revoked=record.revoked_at is not None)
            if name != agreement.recipient.name:
                raise NotAuthorized("only the agreement's recipient may request an audience")
            segment = request.owner_segment_id
            if not segment and len(agreement.segment_ids) == 1:
                segment = agreement.segment_ids[0]
            if segment not in agreement.segment_ids:
                raise InvalidAgreement("the agreement does not cover that segment")
            flow, created = self._store.create_flow(
                FlowRecord(
                    flow_id=request.flow_id,
                    agreement_id=agreement.agreement_id,
                    requester=name,
                    owner_segment_id=segment,
                    recipient_segment_id=request.recipient_segment_id,
                    state="pending",
                    failure_reason=None,
                    failure_detail=None,
                    owner_set_size=0,
                    recipient_set_size=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            if created:
                self._audit.record(
                    "flow-started",
                    flow_id=flow.flow_id,
                    agreement_id=flow.agreement_id,
                    requester=name,
                    output_mode=agreement.output_mode.value,
                    owner_segment_id=flow.owner_segment_id,
                )
                day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
                started_today = self._store.flows_started_since(agreement.agreement_id, day_start)
                if started_today > agreement.rate_limit_per_day:
                    flow = self._store.update_flow(
                        flow.flow_id,
                        now=now,
                        state="failed",
                        failure_reason="RATE_LIMITED",
                        failure_detail=(
                            f"the agreement allows {agreement.rate_limit_per_day} flows per "
                            "day (UTC)"
                        ),
                    )
                    self._audit.record(
                        "flow-finished",
                        flow_id=flow.flow_id,
                        agreement_id=flow.agreement_id,
                        state=flow.state,
                        failure_reason=flow.failure_reason,
                        owner_set_size=0,
                        recipient_set_size=0,
                    )
                else:
                    self._orchestrator.start(flow, agreement)
        except (ConsentError, BrokerError) as exc:
            fail(context, exc)
        return broker_pb2.StartFlowResponse(flow=flow_to_proto(flow))

    def _flow_for(self, flow_id: str, name: str, context: grpc.ServicerContext) -> FlowRecord:
        try:
            flow = self._store.flow(flow_id)
            record = self._store.agreement(flow.agreement_id)
            if name not in (record.owner, record.recipient):
                raise NotAuthorized("only the agreement's parties may read its flows")
        except BrokerError as exc:
            fail(context, exc)
        return flow

    def GetFlow(self, request: Any, context: grpc.ServicerContext) -> Any:
        flow = self._flow_for(request.flow_id, self._caller(context), context)
        return broker_pb2.GetFlowResponse(flow=flow_to_proto(flow))

    def WatchFlow(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        flow = self._flow_for(request.flow_id, self._caller(context), context)
        yield broker_pb2.WatchFlowResponse(flow=flow_to_proto(flow))
        deadline = self._now() + timedelta(hours=2)
        while not flow.terminal and context.is_active() and self._now() < deadline:
            changed = self._orchestrator.wait_for_change(flow.flow_id, flow, timeout=1.0)
            if (changed.state, changed.updated_at) != (flow.state, flow.updated_at):
                flow = changed
                yield broker_pb2.WatchFlowResponse(flow=flow_to_proto(flow))

    # --- agreement revocation -----------------------------------------------------------

    def RevokeAgreement(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        message = request.revocation
        try:
            revocation = agreement_revocation_from_proto(message)
            record = self._store.agreement(revocation.agreement_id)
            agreement = record.signed.agreement
            check_agreement_revocation(revocation, agreement, caller=name)
            record, revoked_now = self._store.revoke_agreement(
                agreement.agreement_id,
                revocation=message.SerializeToString(deterministic=True),
                now=self._now(),
            )
        except (ConsentError, BrokerError) as exc:
            fail(context, exc)
        if revoked_now:
            cancelled = self._orchestrator.cancel_agreement(agreement.agreement_id)
            self._audit.record(
                "agreement-revoked",
                agreement_id=agreement.agreement_id,
                revoked_by=revocation.node_name,
                role=agreement.party(revocation.node_name),
                reason=revocation.reason,
                flows_cancelled=cancelled,
            )
            self._courier.announce_agreement_revoked(
                message, [agreement.owner.name, agreement.recipient.name]
            )
        return broker_pb2.RevokeAgreementResponse(status=self._status(record))

    # --- catalog ------------------------------------------------------------------------

    def PublishSegment(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        try:
            self._registered(name, "publishes segments")
            entry = check_entry(
                catalog_entry_from_proto(request.entry, published_at=self._now()), caller=name
            )
            stored = self._store.publish(entry)
        except BrokerError as exc:
            fail(context, exc)
        return broker_pb2.PublishSegmentResponse(entry=catalog_entry_to_proto(stored))

    def ListCatalog(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._caller(context)
        limit, offset = _page(request.page, context)
        entries = self._store.catalog(owner_node=request.owner_node, purpose=request.purpose)
        page = entries[offset : offset + limit]
        return broker_pb2.ListCatalogResponse(
            entries=[catalog_entry_to_proto(e) for e in page],
            page=_next_page(offset, limit, more=len(entries) > offset + limit),
        )

    # --- revocations --------------------------------------------------------------------

    def RelayRevocation(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        message = request.revocation
        now = self._now()
        try:
            revocation = revocation_from_proto(message)
            record = self._store.agreement(revocation.agreement_id)
            check_revocation(revocation, record.signed.agreement, caller=name)
            stored, created = self._store.add_revocation(
                RevocationRecord(
                    revocation_id=revocation.revocation_id,
                    agreement_id=revocation.agreement_id,
                    owner=revocation.owner_node,
                    recipient=revocation.recipient_node,
                    message=message.SerializeToString(deterministic=True),
                    relayed_at=now,
                    ack=None,
                    delivery_attempts=0,
                    last_attempt_at=None,
                    state=PENDING,
                )
            )
        except (ConsentError, BrokerError) as exc:
            fail(context, exc)
        if created:
            self._audit.record(
                "revocation-relayed",
                revocation_id=revocation.revocation_id,
                agreement_id=revocation.agreement_id,
                owner=revocation.owner_node,
                recipient=revocation.recipient_node,
                reason=revocation.reason,
                releases=len(revocation.release_ids),
                all_releases=revocation.all_releases,
            )
        due = next_attempt_at(stored.delivery_attempts, stored.last_attempt_at)
        if stored.pending and (due is None or due <= now):
            # At once, so a reachable recipient deletes now; a failure leaves it pending
            # for the retry sweep and is not the owner's error.
            stored = self._courier.push(stored)
        return broker_pb2.RelayRevocationResponse(status=_revocation_status(stored))

    def AcknowledgeRevocation(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        ack = request.ack
        try:
            if ack.recipient_node != name:
                raise NotAuthorized("a node acknowledges revocations in its own name only")
            stored = self._store.revocation(ack.revocation_id)
            if stored.recipient != name:
                raise NotAuthorized("a node acknowledges revocations addressed to it only")
            stored = self._courier.accept_ack(stored, ack)
        except (ConsentError, BrokerError) as exc:
            fail(context, exc)
        return broker_pb2.AcknowledgeRevocationResponse(status=_revocation_status(stored))

    def ListPendingRevocations(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        limit, offset = _page(request.page, context)
        pending = self._store.pending_revocations(recipient=name, limit=limit + 1, offset=offset)
        return broker_pb2.ListPendingRevocationsResponse(
            revocations=[revocation_pb2.Revocation.FromString(r.message) for r in pending[:limit]],
            page=_next_page(offset, limit, more=len(pending) > limit),
        )

    def GetRevocation(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        try:
            stored = self._store.revocation(request.revocation_id)
            if name not in (stored.owner, stored.recipient):
                raise NotAuthorized("only the revocation's owner and recipient may read it")
        except BrokerError as exc:
            fail(context, exc)
        return broker_pb2.GetRevocationResponse(status=_revocation_status(stored))

    # --- witnessing and the broker's own log --------------------------------------------

    def WitnessTreeHead(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        try:
            node = self._registered(name, "sends tree heads to witness")
            if not request.HasField("tree_head"):
                raise TreeHeadInvalid("send the signed tree head to witness")
            head = tree_head_from_proto(request.tree_head)
            check_head(head, caller=name, signing_public_key=node.keys.signing_public_key)
            latest = self._store.latest_witnessed(head.origin)
            proof = (
                _consistency_from_proto(request.consistency)
                if request.HasField("consistency")
                else None
            )
            decision = decide(head, latest=None if latest is None else latest.head, proof=proof)
            if decision is Decision.REPEAT and latest is not None:
                witnessed, created = latest, False
            else:
                cosignature = WitnessCosignature.cosign(
                    head, self._witness_key, witnessed_at=self._now()
                )
                previous = -1 if latest is None else latest.head.tree_size
                witnessed, created = self._store.save_witnessed(
                    WitnessedHead(head, cosignature, previous)
                )
        except (ConsentError, BrokerError) as exc:
            fail(context, exc)
        if created:
            self._audit.record(
                "head-witnessed", origin=head.origin, tree_size=head.tree_size, node=name
            )
        return broker_pb2.WitnessTreeHeadResponse(
            witnessed=witnessed_head_to_proto(witnessed.head, witnessed.cosignature)
        )

    def ListWitnessedHeads(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = self._caller(context)
        try:
            self._registered(name, "reads witnessed heads")
        except BrokerError as exc:
            fail(context, exc)
        if not request.origin:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "name the log (its origin)")
        limit, offset = _page(request.page, context)
        heads = self._store.witnessed_heads(request.origin, limit=limit + 1, offset=offset)
        return broker_pb2.ListWitnessedHeadsResponse(
            heads=[witnessed_head_to_proto(w.head, w.cosignature) for w in heads[:limit]],
            page=_next_page(offset, limit, more=len(heads) > limit),
        )

    def GetTreeHead(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._caller(context)
        head = self._audit.latest_head()
        if head is None:  # the server signs the empty head before it starts
            abort(context, grpc.StatusCode.UNAVAILABLE, "the broker's audit log is not ready")
        return broker_pb2.GetTreeHeadResponse(tree_head=tree_head_to_proto(head))

    def GetBrokerInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return broker_pb2.GetBrokerInfoResponse(keys=keys_to_proto(self._identity))

    def _registered(self, name: str, doing: str) -> NodeRecord:
        try:
            return self._store.node(name)
        except UnknownNode:
            raise NotAuthorized(f"a node registers with the broker before it {doing}") from None


def _page(page: common_pb2.PageRequest, context: grpc.ServicerContext) -> tuple[int, int]:
    """(limit, offset) of a page request. The token is an offset the server handed out:
    simple, and good enough for lists that change slowly (catalog, heads, revocations)."""
    limit = min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    token = page.page_token
    if token and not (token.isdigit() and len(token) <= 12):
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the page token is not one we issued")
    return limit, int(token or 0)


def _next_page(offset: int, limit: int, *, more: bool) -> common_pb2.PageInfo:
    return common_pb2.PageInfo(next_page_token=str(offset + limit) if more else "")


def _consistency_from_proto(message: audit_pb2.ConsistencyProof) -> ConsistencyClaim:
    return ConsistencyClaim(
        origin=message.origin,
        first_tree_size=message.first_tree_size,
        second_tree_size=message.second_tree_size,
        path=tuple(message.path),
    )


def _revocation_status(stored: RevocationRecord) -> broker_pb2.RevocationStatus:
    status = broker_pb2.RevocationStatus(
        revocation=revocation_pb2.Revocation.FromString(stored.message),
        relayed_at=time_to_proto(stored.relayed_at),
        delivery_attempts=stored.delivery_attempts,
    )
    if stored.ack is not None:
        status.ack.CopyFrom(revocation_pb2.RevocationAck.FromString(stored.ack))
    return status


def catalog_entry_to_proto(entry: CatalogEntry) -> broker_pb2.CatalogEntry:
    return broker_pb2.CatalogEntry(
        owner_node=entry.owner_node,
        segment_id=entry.segment_id,
        segment_version=entry.segment_version,
        title=entry.title,
        description=entry.description,
        purposes=list(entry.purposes),
        output_modes=[mode_to_proto(m) for m in entry.output_modes],
        releasable_fields=list(entry.releasable_fields),
        size_bucket=entry.size_bucket,
        published_at=time_to_proto(entry.published_at),
    )


def catalog_entry_from_proto(
    message: broker_pb2.CatalogEntry, *, published_at: datetime
) -> CatalogEntry:
    """The entry a node sent; ``published_at`` is the broker's, never the caller's."""
    try:
        modes = tuple(mode_from_proto(m) for m in message.output_modes)
    except ValueError:
        raise CatalogEntryInvalid("an output mode is unknown") from None
    return CatalogEntry(
        owner_node=message.owner_node,
        segment_id=message.segment_id,
        segment_version=message.segment_version,
        title=message.title,
        description=message.description,
        purposes=tuple(message.purposes),
        output_modes=modes,
        releasable_fields=tuple(message.releasable_fields),
        size_bucket=message.size_bucket,
        published_at=published_at,
    )


def _node(record: Any) -> broker_pb2.RegisteredNode:
    return broker_pb2.RegisteredNode(
        keys=keys_to_proto(record.keys),
        endpoint=record.endpoint,
        display_name=record.display_name,
        registered_at=time_to_proto(record.registered_at),
        updated_at=time_to_proto(record.updated_at),
    )
