"""The node's gRPC service: broker calls (blinding, results) and operator calls.

A thin adapter: messages are converted at the edge and the work is ``FlowEngine``'s.
Broker calls are accepted only from the broker this node was started with; operator
calls only from the node's own operators (the ``operator`` identity until mutual TLS).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NoReturn

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy import select

from consent import Channel, Ledger
from consent.agreements import Agreement, PartyKeys, SignedAgreement
from consent.errors import ConsentError, InvalidAgreement
from consent.serde import (
    ack_to_proto,
    agreement_revocation_from_proto,
    agreement_revocation_to_proto,
    agreement_to_proto,
    keys_from_proto,
    mode_from_proto,
    overlap_count_from_proto,
    overlap_count_to_proto,
    revocation_from_proto,
    signed_agreement_from_proto,
    signed_agreement_to_proto,
    state_to_proto,
    time_from_proto,
    time_to_proto,
    tree_head_to_proto,
)
from consent.signed import AgreementRevocation
from kernel.crypto import sha256
from kernel.keys import KeyStore
from kernel.rpc import abort, all_pages, caller
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc
from kernel.wire.accord.common.v1 import agreement_pb2, common_pb2, flow_pb2
from kernel.wire.accord.node.v1 import node_pb2, node_pb2_grpc
from node._exchange import Exchange, ReleasedRecordData, SealedBatch
from node._flows import FlowContext, FlowEngine
from node._segments import SegmentStore
from node._tables import FlowRow
from node.blinding import size_bucket
from node.errors import (
    AgreementUnknown,
    BrokerUnavailable,
    FlowRefused,
    InvalidSegment,
    NodeError,
    SegmentUnknown,
)
from node.segments import Segment, SegmentFilter

OPERATOR: Final = "operator"
FAILURE_HEADER: Final = "accord-failure-reason"
# The most tokens a node accepts in one set before it even looks at the agreement.
HARD_SET_LIMIT: Final = 50_000_000
_ROLES = {flow_pb2.FLOW_ROLE_OWNER: "owner", flow_pb2.FLOW_ROLE_RECIPIENT: "recipient"}
# One table maps refusals to status codes (CONVENTIONS.md, "Errors").
_REFUSAL_CODES = {
    "AGREEMENT_INACTIVE": grpc.StatusCode.FAILED_PRECONDITION,
    "BELOW_MIN_AUDIENCE": grpc.StatusCode.FAILED_PRECONDITION,
    "SET_TOO_LARGE": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "BUDGET_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "PEER_REJECTED": grpc.StatusCode.INVALID_ARGUMENT,
    "SEGMENT_UNKNOWN": grpc.StatusCode.FAILED_PRECONDITION,
}
# A segment is published only when its consented part reaches this many customers (and
# then only as a size bucket, never as an exact count).
MIN_PUBLISHED_SEGMENT: Final = 50
_CHANNEL_TO_WIRE: Final = {
    Channel.EMAIL: common_pb2.CHANNEL_EMAIL,
    Channel.PHONE: common_pb2.CHANNEL_PHONE,
    Channel.POST: common_pb2.CHANNEL_POST,
    Channel.SMS: common_pb2.CHANNEL_SMS,
}
_CHANNEL_FROM_WIRE: Final = {wire: channel.value for channel, wire in _CHANNEL_TO_WIRE.items()}
_flows = FlowRow.__table__  # type: ignore[attr-defined]


def refuse(context: grpc.ServicerContext, error: FlowRefused) -> NoReturn:
    context.set_trailing_metadata(((FAILURE_HEADER, error.reason),))
    abort(context, _REFUSAL_CODES.get(error.reason, grpc.StatusCode.INTERNAL), str(error))


def flow_context(message: flow_pb2.FlowContext) -> FlowContext:
    if message.role not in _ROLES:
        raise FlowRefused("PEER_REJECTED", "the flow context names no role")
    return FlowContext(
        flow_id=message.flow_id,
        agreement_id=message.agreement_id,
        role=_ROLES[message.role],
        owner_segment_id=message.owner_segment_id,
        recipient_segment_id=message.recipient_segment_id,
        started_at=time_from_proto(message.started_at),
    )


def numbered(
    flow_id: str, size: int, parts: Iterator[tuple[list[bytes], list[bytes]]]
) -> Iterator[flow_pb2.TokenBatch]:
    """Token batches with their index, the set size and ``final`` on the last one."""
    index = 0
    held: tuple[list[bytes], list[bytes]] | None = None
    for part in parts:
        if held is not None:
            yield _batch(flow_id, index, held, size, final=False)
            index += 1
        held = part
    yield _batch(flow_id, index, held or ([], []), size, final=True)


def _batch(
    flow_id: str, index: int, part: tuple[list[bytes], list[bytes]], size: int, *, final: bool
) -> flow_pb2.TokenBatch:
    tokens, handles = part
    return flow_pb2.TokenBatch(
        flow_id=flow_id,
        batch_index=index,
        tokens=tokens,
        handles=handles,
        final=final,
        set_size=size,
    )


def received(
    first: flow_pb2.TokenBatch, rest: Iterator[Any]
) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """The partner's batches, checked as they arrive: order, sizes, completeness."""
    declared = first.set_size
    expected = 0
    total = 0
    batch = first
    while True:
        if batch.batch_index != expected or batch.set_size != declared:
            raise FlowRefused("PEER_REJECTED", "token batches arrived out of order or disagree")
        total += len(batch.tokens)
        if total > declared:
            raise FlowRefused("PEER_REJECTED", "more tokens arrived than announced")
        yield list(batch.tokens), list(batch.handles)
        if batch.final:
            break
        expected += 1
        try:
            batch = next(rest).batch
        except StopIteration:
            raise FlowRefused("PEER_REJECTED", "the partner's set arrived incomplete") from None
    if total != declared:
        raise FlowRefused("PEER_REJECTED", "the partner's set arrived incomplete")


def encode_release(records: list[ReleasedRecordData], delete_after: datetime) -> bytes:
    """A release batch's plaintext: the ``ReleasePayload`` message (sealed afterwards)."""
    payload = flow_pb2.ReleasePayload(delete_after=time_to_proto(delete_after))
    for record in records:
        message = payload.records.add(
            release_id=record.release_id,
            channels=[_CHANNEL_TO_WIRE[Channel(c)] for c in record.channels],
        )
        for name, values in sorted(record.fields.items()):
            message.fields.add(name=name, values=values)
    return payload.SerializeToString(deterministic=True)


def decode_release(plaintext: bytes) -> tuple[list[ReleasedRecordData], datetime | None]:
    """The records of an opened release batch; ``PEER_REJECTED`` if it is not one."""
    try:
        payload = flow_pb2.ReleasePayload.FromString(plaintext)
    except DecodeError:
        raise FlowRefused("PEER_REJECTED", "a release batch does not decode") from None
    records = []
    for message in payload.records:
        fields: dict[str, list[str]] = {}
        for field in message.fields:
            if field.name in fields:
                raise FlowRefused("PEER_REJECTED", "a released record names a field twice")
            fields[field.name] = list(field.values)
        try:
            channels = tuple(_CHANNEL_FROM_WIRE[c] for c in message.channels)
        except KeyError:
            raise FlowRefused("PEER_REJECTED", "a released record names no known channel") from None
        records.append(ReleasedRecordData(bytes(message.release_id), fields, channels))
    delete_after = (
        time_from_proto(payload.delete_after) if payload.HasField("delete_after") else None
    )
    return records, delete_after


def segment_to_proto(segment: Segment) -> node_pb2.Segment:
    f = segment.filter
    return node_pb2.Segment(
        segment_id=segment.segment_id,
        title=segment.title,
        description=segment.description,
        version=segment.version,
        filter=node_pb2.SegmentFilter(
            countries=f.countries,
            age_bands=f.age_bands,
            regions=f.regions,
            interests=f.interests,
            loyalty_tiers=f.loyalty_tiers,
            channels=[_CHANNEL_TO_WIRE[Channel(c)] for c in f.channels],
            purchase_categories=f.purchase_categories,
            purchased_since="" if f.purchased_since is None else f.purchased_since.isoformat(),
            min_total_spend="" if f.min_total_spend is None else str(f.min_total_spend),
        ),
    )


def segment_filter_from_proto(message: node_pb2.SegmentFilter) -> SegmentFilter:
    return SegmentFilter.from_json(
        {
            "countries": list(message.countries),
            "age_bands": list(message.age_bands),
            "regions": list(message.regions),
            "interests": list(message.interests),
            "loyalty_tiers": list(message.loyalty_tiers),
            "channels": [_CHANNEL_FROM_WIRE.get(c, "unknown") for c in message.channels],
            "purchase_categories": list(message.purchase_categories),
            "purchased_since": message.purchased_since or None,
            "min_total_spend": message.min_total_spend or None,
        }
    )


@dataclass
class BrokerLink:
    """How this node reaches the broker, and how the broker names itself."""

    stub: broker_pb2_grpc.BrokerServiceStub
    broker_name: str


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(
        self,
        flows: FlowEngine,
        *,
        exchange: Exchange,
        segments: SegmentStore,
        keys: KeyStore,
        ledger: Ledger,
        broker: BrokerLink,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._flows = flows
        self._exchange = exchange
        self._segments = segments
        self._keys = keys
        self._ledger = ledger
        self._broker = broker
        self._now = now

    # --- who may call -------------------------------------------------------------------

    def _from_broker(self, context: grpc.ServicerContext) -> None:
        if caller(context) != self._broker.broker_name:
            abort(context, grpc.StatusCode.PERMISSION_DENIED, "only the broker may call this")

    def _from_operator(self, context: grpc.ServicerContext) -> None:
        if caller(context) != OPERATOR:
            abort(context, grpc.StatusCode.PERMISSION_DENIED, "only this node's operators may")

    # --- broker calls -------------------------------------------------------------------

    def BlindSet(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._from_broker(context)
        try:
            flow = flow_context(request.flow)
            own = self._flows.blind_own_set(flow)
            for batch in numbered(flow.flow_id, own.size, own.batches):
                yield node_pb2.BlindSetResponse(batch=batch)
        except FlowRefused as exc:
            refuse(context, exc)

    def ReblindSet(self, request_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._from_broker(context)
        try:
            requests = iter(request_iterator)
            try:
                first = next(requests)
            except StopIteration:
                raise FlowRefused("PEER_REJECTED", "no set arrived") from None
            flow = flow_context(first.flow)
            size = first.batch.set_size
            if size > HARD_SET_LIMIT:
                raise FlowRefused("SET_TOO_LARGE", "the partner's set is far too large")
            out = self._flows.reblind(flow, received(first.batch, requests), size)
            for batch in numbered(flow.flow_id, size, out):
                yield node_pb2.ReblindSetResponse(batch=batch)
        except FlowRefused as exc:
            refuse(context, exc)

    def DeliverMatchResult(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_broker(context)
        try:
            flow = flow_context(request.flow)
            if request.HasField("overlap"):
                self._exchange.receive_overlap(flow, overlap_count_from_proto(request.overlap))
                return node_pb2.DeliverMatchResultResponse()
            if not request.HasField("match"):
                raise FlowRefused("PEER_REJECTED", "this node expects a match result")
            match = request.match
            self._flows.deliver_match(
                flow,
                list(match.matched_handles),
                part=match.batch_index,
                final=match.final,
                total=match.matched_total,
            )
        except FlowRefused as exc:
            refuse(context, exc)
        return node_pb2.DeliverMatchResultResponse()

    def GetTreeHead(self, request: Any, context: grpc.ServicerContext) -> Any:
        head = self._ledger.latest_head()
        if head is None:
            abort(context, grpc.StatusCode.FAILED_PRECONDITION, "the audit log has no head yet")
        return node_pb2.GetTreeHeadResponse(tree_head=tree_head_to_proto(head))

    # --- operator calls: agreements -------------------------------------------------------

    def _identity_keys(self) -> PartyKeys:
        identity = self._keys.identity
        return PartyKeys(identity.name, identity.signing_public_key, identity.hpke_public_key)

    def _submit(self, signed: SignedAgreement) -> agreement_pb2.AgreementStatus:
        try:
            response = self._broker.stub.SubmitAgreement(
                broker_pb2.SubmitAgreementRequest(
                    signed_agreement=signed_agreement_to_proto(signed)
                ),
                timeout=30,
            )
        except grpc.RpcError as exc:
            raise BrokerUnavailable(f"the broker refused the agreement: {exc.details()}") from None
        status: agreement_pb2.AgreementStatus = response.status
        return status

    def ProposeAgreement(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_operator(context)
        terms = request.agreement
        try:
            recipient = keys_from_proto(terms.recipient)
            if not recipient.signing_public_key:
                recipient = self._registered(terms.recipient.node_name)
            agreement = Agreement(
                agreement_id=terms.agreement_id or str(uuid.uuid4()),
                owner=self._identity_keys(),
                recipient=recipient,
                segment_ids=tuple(terms.segment_ids),
                purpose=terms.purpose,
                output_mode=mode_from_proto(terms.output_mode),
                released_fields=tuple(terms.released_fields),
                min_audience_k=terms.min_audience_k,
                epsilon_total=terms.privacy_budget.epsilon_total or None,
                epsilon_per_count=terms.privacy_budget.epsilon_per_count or None,
                max_set_size=terms.max_set_size,
                epoch_identifier_cap=terms.epoch_identifier_cap,
                epoch_length_seconds=terms.epoch_length_seconds,
                retention_days=terms.retention_days,
                valid_from=time_from_proto(terms.valid_from),
                valid_until=time_from_proto(terms.valid_until),
                rate_limit_per_day=terms.rate_limit_per_day,
                identifier_kinds=tuple({1: "email", 2: "phone"}[k] for k in terms.identifier_kinds)
                or ("email", "phone"),
            )
            signed = SignedAgreement.propose(agreement, self._keys.signing_key())
            self._flows.agreements.save(signed, now=self._now())
            status = self._submit(signed)
        except (ConsentError, NodeError, ValueError) as exc:
            abort(context, _operator_code(exc), str(exc))
        return node_pb2.ProposeAgreementResponse(status=status)

    def _registered(self, name: str) -> PartyKeys:
        try:
            nodes = self._broker.stub.ListNodes(broker_pb2.ListNodesRequest(), timeout=30).nodes
        except grpc.RpcError as exc:
            raise BrokerUnavailable(f"the broker cannot list nodes: {exc.details()}") from None
        for node in nodes:
            if node.keys.node_name == name:
                return keys_from_proto(node.keys)
        raise InvalidAgreement(f"no node named {name!r} is registered with the broker")

    def SignAgreement(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_operator(context)
        try:
            try:
                found = self._broker.stub.GetAgreement(
                    broker_pb2.GetAgreementRequest(agreement_id=request.agreement_id), timeout=30
                )
            except grpc.RpcError as exc:
                raise BrokerUnavailable(
                    f"the broker has no such agreement: {exc.details()}"
                ) from None
            proposed = signed_agreement_from_proto(found.status.signed_agreement)
            if proposed.agreement.recipient.name != self._keys.identity.name:
                raise InvalidAgreement("this node is not the agreement's recipient")
            signed = proposed.countersign(self._keys.signing_key(), digest=request.agreement_digest)
            self._flows.agreements.save(signed, now=self._now())
            status = self._submit(signed)
        except (ConsentError, NodeError) as exc:
            abort(context, _operator_code(exc), str(exc))
        return node_pb2.SignAgreementResponse(status=status)

    def ListAgreements(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_operator(context)
        now = self._now()
        statuses = []
        for local in self._flows.agreements.all():
            agreement = local.signed.agreement
            statuses.append(
                agreement_pb2.AgreementStatus(
                    signed_agreement=signed_agreement_to_proto(local.signed),
                    agreement=agreement_to_proto(agreement),
                    state=state_to_proto(local.state(now)),
                    agreement_digest=sha256(local.signed.canonical),
                )
            )
        return node_pb2.ListAgreementsResponse(agreements=statuses)

    # --- operator calls: audiences --------------------------------------------------------

    def RequestAudience(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_operator(context)
        flow_id = request.flow_id or str(uuid.uuid4())
        try:
            local = self._flows.agreements.get(request.agreement_id)
            if local.role != "recipient":
                raise InvalidAgreement("only the agreement's recipient requests audiences")
            requested = FlowContext(
                flow_id=flow_id,
                agreement_id=request.agreement_id,
                role="recipient",
                owner_segment_id=request.owner_segment_id,
                recipient_segment_id=request.recipient_segment_id,
                started_at=self._now(),
            )
            self._flows.audit(requested, "requested",
                              mode=local.signed.agreement.output_mode.value)  # fmt: skip
            started = self._broker.stub.StartFlow(
                broker_pb2.StartFlowRequest(
                    flow_id=flow_id,
                    agreement_id=request.agreement_id,
                    owner_segment_id=request.owner_segment_id,
                    recipient_segment_id=request.recipient_segment_id,
                ),
                timeout=30,
            )
        except grpc.RpcError as exc:
            abort(context, exc.code(), f"the broker refused the request: {exc.details()}")
        except (ConsentError, NodeError) as exc:
            abort(context, _operator_code(exc), str(exc))
        flow = started.flow
        if request.wait:
            deadline = self._now() + timedelta(hours=2)
            try:
                for update in self._broker.stub.WatchFlow(
                    broker_pb2.WatchFlowRequest(flow_id=flow_id), timeout=7200
                ):
                    flow = update.flow
                    if flow.state in (flow_pb2.FLOW_STATE_SUCCEEDED, flow_pb2.FLOW_STATE_FAILED):
                        break
                    if self._now() > deadline:
                        break
            except grpc.RpcError as exc:
                abort(context, grpc.StatusCode.UNAVAILABLE, f"lost the broker: {exc.details()}")
            if flow.state == flow_pb2.FLOW_STATE_FAILED:
                # The refusal may have been the partner's: this node's log records it too.
                reason = flow_pb2.FlowFailureReason.Name(flow.failure_reason)
                self._flows.audit(requested, "failed",
                                  reason=reason.removeprefix("FLOW_FAILURE_REASON_"))  # fmt: skip
        response = node_pb2.RequestAudienceResponse(flow=flow)
        if flow.state == flow_pb2.FLOW_STATE_SUCCEEDED:
            summary = self._summary(flow_id)
            if summary is not None:
                response.summary.CopyFrom(summary)
        return response

    def _summary(self, flow_id: str) -> node_pb2.AudienceSummary | None:
        with self._flows.engine.connect() as connection:
            row = connection.execute(select(_flows).where(_flows.c.flow_id == flow_id)).first()
        if row is None:
            return None
        summary = node_pb2.AudienceSummary()
        delete_after = None
        if row.delete_after is not None:
            moment = row.delete_after
            delete_after = moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment
        if row.overlap_suppressed is not None:
            summary.overlap.agreement_id = row.agreement_id
            summary.overlap.flow_id = row.flow_id
            summary.overlap.suppressed = bool(row.overlap_suppressed)
            summary.overlap.noised_count = row.overlap_count or 0
        elif row.records is not None:
            summary.release.records = row.records
            if delete_after is not None:
                summary.release.delete_after.FromDatetime(delete_after)
        elif row.matched_customers is not None:
            summary.match.matched_customers = row.matched_customers
            if delete_after is not None:
                summary.match.delete_after.FromDatetime(delete_after)
        else:
            return None
        return summary

    def NoiseOverlapCount(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_broker(context)
        try:
            flow = flow_context(request.flow)
            count = self._exchange.noise_overlap(flow, request.intersection_size)
        except FlowRefused as exc:
            refuse(context, exc)
        return node_pb2.NoiseOverlapCountResponse(count=overlap_count_to_proto(count))

    def ReleaseSegment(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._from_broker(context)
        try:
            flow = flow_context(request.flow)
            for batch in self._exchange.release(flow):
                yield node_pb2.ReleaseSegmentResponse(
                    batch=flow_pb2.ReleaseBatch(
                        agreement_id=flow.agreement_id,
                        flow_id=flow.flow_id,
                        batch_index=batch.batch_index,
                        final=batch.final,
                        enc=batch.enc,
                        ciphertext=batch.ciphertext,
                        owner_signature=batch.owner_signature,
                    )
                )
        except FlowRefused as exc:
            refuse(context, exc)

    def DeliverReleaseBatch(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        self._from_broker(context)
        try:
            requests = iter(request_iterator)
            try:
                first = next(requests)
            except StopIteration:
                raise FlowRefused("PEER_REJECTED", "no release batch arrived") from None
            flow = flow_context(first.flow)
            counted = [0]

            def batches() -> Iterator[SealedBatch]:
                message = first
                while True:
                    batch = message.batch
                    if (batch.agreement_id, batch.flow_id) != (flow.agreement_id, flow.flow_id):
                        raise FlowRefused("PEER_REJECTED", "a release batch of another flow")
                    counted[0] += 1
                    yield SealedBatch(
                        batch.batch_index,
                        batch.final,
                        bytes(batch.enc),
                        bytes(batch.ciphertext),
                        bytes(batch.owner_signature),
                    )
                    try:
                        message = next(requests)
                    except StopIteration:
                        return

            self._exchange.receive_release(flow, batches())
        except FlowRefused as exc:
            refuse(context, exc)
        return node_pb2.DeliverReleaseBatchResponse(batches=counted[0])

    def Revoke(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_broker(context)
        try:
            ack = self._exchange.revoke_received(revocation_from_proto(request.revocation))
        except AgreementUnknown as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except FlowRefused as exc:
            refuse(context, exc)
        return node_pb2.RevokeResponse(ack=ack_to_proto(ack))

    def AgreementRevoked(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_broker(context)
        try:
            self._exchange.agreement_revoked(agreement_revocation_from_proto(request.revocation))
        except AgreementUnknown as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except FlowRefused as exc:
            refuse(context, exc)
        return node_pb2.AgreementRevokedResponse()

    # --- operator calls: revocation -------------------------------------------------------

    def RevokeAgreement(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Revoke locally first (this node stops at once, whatever the broker does), then
        tell the broker, which tells the partner."""
        self._from_operator(context)
        try:
            local = self._flows.agreements.get(request.agreement_id)
            revocation = AgreementRevocation(
                agreement_id=request.agreement_id,
                node_name=self._keys.identity.name,
                reason=request.reason or "revoked by the operator",
                revoked_at=self._now(),
            ).signed(self._keys.signing_key())
            self._exchange.agreement_revoked(revocation)
            try:
                response = self._broker.stub.RevokeAgreement(
                    broker_pb2.RevokeAgreementRequest(
                        revocation=agreement_revocation_to_proto(revocation)
                    ),
                    timeout=30,
                )
            except grpc.RpcError as exc:
                raise BrokerUnavailable(
                    "the agreement is revoked on this node, but the broker did not take the "
                    f"revocation ({exc.details()}); run the command again to retry"
                ) from None
        except (ConsentError, NodeError) as exc:
            abort(context, _operator_code(exc), str(exc))
        del local
        return node_pb2.RevokeAgreementResponse(status=response.status)

    # --- operator calls: segments ---------------------------------------------------------

    def DefineSegment(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_operator(context)
        message = request.segment
        try:
            segment, created = self._segments.define(
                Segment(
                    segment_id=message.segment_id,
                    title=message.title,
                    description=message.description,
                    filter=segment_filter_from_proto(message.filter),
                )
            )
        except InvalidSegment as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return node_pb2.DefineSegmentResponse(segment=segment_to_proto(segment), created=created)

    def ListSegments(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_operator(context)
        return node_pb2.ListSegmentsResponse(
            segments=[segment_to_proto(s) for s in self._segments.list()]
        )

    def PreviewSegment(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._from_operator(context)
        try:
            target: str | SegmentFilter = (
                segment_filter_from_proto(request.filter)
                if request.HasField("filter")
                else request.segment_id
            )
            asked = bool(request.purpose and request.recipient_node)
            preview = self._segments.preview(
                target,
                ledger=self._ledger,
                purpose=request.purpose if asked else None,
                recipient=request.recipient_node if asked else None,
                now=self._now(),
            )
        except SegmentUnknown as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except (InvalidSegment, ValueError) as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return node_pb2.PreviewSegmentResponse(
            customers=preview.customers,
            consented_customers=preview.consented_customers or 0,
            size_bucket=preview.size_bucket,
        )

    def PublishSegment(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Publish name, description and a size bucket — the bucket of the segment's
        customers consenting to any partner for an offered purpose — never a count."""
        self._from_operator(context)
        try:
            segment = self._segments.get(request.segment_id)
            purposes = list(request.purposes)
            if not purposes:
                raise InvalidSegment("name at least one purpose the segment is offered for")
            # The largest audience any one partner could be offered: consents are given
            # to named partners or to every partner ('*'), so each registered partner
            # is asked about, as the recipient of a later flow would be.
            recipients = ["*", *self._partner_names()]
            consented = max(
                self._segments.preview(
                    segment.segment_id, ledger=self._ledger, purpose=purpose,
                    recipient=recipient, now=self._now(),
                ).consented_customers or 0
                for purpose in purposes
                for recipient in recipients
            )  # fmt: skip
            if consented < MIN_PUBLISHED_SEGMENT:
                raise InvalidSegment(
                    f"too few customers of {segment.segment_id!r} consent to partners for "
                    f"these purposes to publish it (the minimum is {MIN_PUBLISHED_SEGMENT})"
                )
            bucket = size_bucket(consented)
            try:
                self._broker.stub.PublishSegment(
                    broker_pb2.PublishSegmentRequest(
                        entry=broker_pb2.CatalogEntry(
                            owner_node=self._keys.identity.name,
                            segment_id=segment.segment_id,
                            segment_version=segment.version,
                            title=segment.title,
                            description=segment.description,
                            purposes=purposes,
                            output_modes=list(request.output_modes),
                            releasable_fields=list(request.releasable_fields),
                            size_bucket=bucket,
                        )
                    ),
                    timeout=30,
                )
            except grpc.RpcError as exc:
                raise BrokerUnavailable(
                    f"the broker did not take the segment: {exc.details()}"
                ) from None
        except SegmentUnknown as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except (ConsentError, InvalidSegment) as exc:
            abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except NodeError as exc:
            abort(context, _operator_code(exc), str(exc))
        return node_pb2.PublishSegmentResponse(size_bucket=bucket,
                                               segment_version=segment.version)  # fmt: skip

    def _partner_names(self) -> list[str]:
        """Every node registered at the broker but this one."""
        try:
            return [
                node.keys.node_name
                for page in all_pages(
                    lambda page: self._broker.stub.ListNodes(
                        broker_pb2.ListNodesRequest(page=page), timeout=30
                    )
                )
                for node in page.nodes
                if node.keys.node_name != self._keys.identity.name
            ]
        except grpc.RpcError as exc:
            raise BrokerUnavailable(
                f"the broker did not list its partners: {exc.details()}"
            ) from None

    # --- not offered over gRPC yet ----------------------------------------------------------

    def _later(self, context: grpc.ServicerContext) -> NoReturn:
        abort(
            context,
            grpc.StatusCode.UNIMPLEMENTED,
            "import runs locally with `accord node import` in this node version",
        )

    def ImportCustomers(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)

    def GetStoreSummary(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._later(context)


def _operator_code(error: Exception) -> grpc.StatusCode:
    if isinstance(error, AgreementUnknown):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, BrokerUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, FlowRefused):
        return _REFUSAL_CODES.get(error.reason, grpc.StatusCode.FAILED_PRECONDITION)
    return grpc.StatusCode.INVALID_ARGUMENT
