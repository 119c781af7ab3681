"""The broker's gRPC service: a thin adapter over the store and the orchestrator."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import grpc

from broker._orchestrator import Orchestrator
from broker._store import AgreementRecord, BrokerStore, FlowRecord
from broker.errors import (
    BrokerError,
    FlowConflict,
    NotAuthorized,
    UnknownAgreement,
    UnknownFlow,
    UnknownNode,
)
from consent.errors import AgreementInactive, ConsentError, InvalidAgreement
from consent.serde import (
    agreement_to_proto,
    keys_from_proto,
    keys_to_proto,
    signed_agreement_from_proto,
    signed_agreement_to_proto,
    state_to_proto,
    time_to_proto,
)
from kernel.crypto import sha256
from kernel.errors import ConfigurationError
from kernel.rpc import abort, caller, parse_address
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc
from kernel.wire.accord.common.v1 import agreement_pb2, flow_pb2

# One table maps domain errors to gRPC status codes (CONVENTIONS.md, "Errors").
_STATUS: dict[type[Exception], grpc.StatusCode] = {
    UnknownNode: grpc.StatusCode.NOT_FOUND,
    UnknownAgreement: grpc.StatusCode.NOT_FOUND,
    UnknownFlow: grpc.StatusCode.NOT_FOUND,
    FlowConflict: grpc.StatusCode.ALREADY_EXISTS,
    NotAuthorized: grpc.StatusCode.PERMISSION_DENIED,
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
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._orchestrator = orchestrator
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
            record = self._store.save_agreement(
                signed,
                owner=agreement.owner.name,
                recipient=agreement.recipient.name,
                now=self._now(),
                active=active,
            )
        except (ConsentError, BrokerError) as exc:
            fail(context, exc)
        return broker_pb2.SubmitAgreementResponse(status=self._status(record))

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

    # --- not yet: these arrive with issue 5 (catalog, revocation, witnessing) ------------

    def _later(self, context: grpc.ServicerContext) -> NoReturn:
        abort(context, grpc.StatusCode.UNIMPLEMENTED, "not available in this broker version")

    def PublishSegment(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)

    def ListCatalog(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)

    def RevokeAgreement(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)

    def RelayRevocation(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)

    def AcknowledgeRevocation(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)

    def ListPendingRevocations(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)

    def GetRevocation(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)

    def WitnessTreeHead(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)

    def ListWitnessedHeads(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)

    def GetTreeHead(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)


def _node(record: Any) -> broker_pb2.RegisteredNode:
    return broker_pb2.RegisteredNode(
        keys=keys_to_proto(record.keys),
        endpoint=record.endpoint,
        display_name=record.display_name,
        registered_at=time_to_proto(record.registered_at),
        updated_at=time_to_proto(record.updated_at),
    )
