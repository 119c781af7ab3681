"""Runs flows: relays blinded sets between the two nodes, intersects, delivers; or relays a
release from owner to recipient.

One thread per flow. For ``match`` and ``overlap`` the two directions run at once — owner
``BlindSet`` → recipient ``ReblindSet`` and recipient ``BlindSet`` → owner ``ReblindSet``
— each relaying token batches as a stream: a batch is pulled from one node only as fast
as the other takes it (gRPC flow control), so the broker holds little more than the
doubly-blinded sets it must intersect. Those live in memory for the flow's lifetime only;
the database keeps the flow's state, set sizes and, on failure, a reason.

* ``match``: the recipient gets the handles of its own tokens that matched.
* ``overlap``: the owner gets the intersection size (``NoiseOverlapCount``) and returns a
  signed, noised count, which the recipient gets. The exact size exists only in this
  process's memory during that call: it is never stored, logged or put on a span.
* ``release``: no blinding. The owner's sealed, signed batches (``ReleaseSegment``) are
  relayed one by one into the recipient's ``DeliverReleaseBatch``, with the same
  back-pressure; the broker never opens them. Either side failing cancels the other.

Revoking an agreement cancels its running flows (``cancel_agreement``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import grpc

from broker._audit import BrokerAudit
from broker._channels import NodeChannels
from broker._store import BrokerStore, FlowRecord
from broker.matching import intersect_handles, overlap_size
from consent.agreements import Agreement, OutputMode
from consent.errors import InvalidAgreement
from consent.serde import overlap_count_from_proto, time_to_proto
from kernel.telemetry import tracer
from kernel.wire.accord.common.v1 import flow_pb2
from kernel.wire.accord.node.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger("accord.broker")

FLOW_DEADLINE_S: Final = 3600.0
MATCH_PART: Final = 100_000  # matched handles per delivery call (about 1.8 MB)
FAILURE_HEADER: Final = "accord-failure-reason"
_REASONS: Final = frozenset(
    name.removeprefix("FLOW_FAILURE_REASON_")
    for name in flow_pb2.FlowFailureReason.keys()  # noqa: SIM118
    if name != "FLOW_FAILURE_REASON_UNSPECIFIED"
)
_REVOKED_DETAIL: Final = "the agreement was revoked while the flow ran"


class FlowFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason if reason in _REASONS else "INTERNAL"
        self.detail = detail


@dataclass(slots=True)
class _Collected:
    tokens: list[bytes]
    handles: list[bytes]
    sent: int  # padded size of the set the first node sent


@dataclass(slots=True)
class _Running:
    """A running flow's open calls, so revoking its agreement can cancel them."""

    agreement_id: str
    calls: list[Any]
    cancelled: bool = False


class Orchestrator:
    def __init__(
        self,
        store: BrokerStore,
        channels: NodeChannels,
        audit: BrokerAudit,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._channels = channels
        self._audit = audit
        self._now = now
        self._runner = ThreadPoolExecutor(max_workers=16, thread_name_prefix="accord-flow")
        self._changed = threading.Condition()
        self._lock = threading.Lock()
        self._futures: dict[str, Future[None]] = {}
        self._running: dict[str, _Running] = {}

    # --- watching -----------------------------------------------------------------------

    def wait_for_change(self, flow_id: str, known: FlowRecord, timeout: float) -> FlowRecord:
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._store.flow(flow_id).updated_at != known.updated_at
                    or self._store.flow(flow_id).state != known.state
                ),
                timeout=timeout,
            )
        return self._store.flow(flow_id)

    def _set(self, flow_id: str, **values: Any) -> None:
        self._store.update_flow(flow_id, now=self._now(), **values)
        with self._changed:
            self._changed.notify_all()

    # --- running ------------------------------------------------------------------------

    def start(self, flow: FlowRecord, agreement: Agreement) -> None:
        with self._lock:
            if flow.flow_id in self._futures:
                return
            self._running[flow.flow_id] = _Running(flow.agreement_id, [])
            self._futures[flow.flow_id] = self._runner.submit(self._run, flow, agreement)

    def cancel_agreement(self, agreement_id: str) -> int:
        """Cancel every running flow under the agreement; how many there were."""
        with self._lock:
            running = [r for r in self._running.values() if r.agreement_id == agreement_id]
            for flow in running:
                flow.cancelled = True
                for call in flow.calls:
                    call.cancel()
        return len(running)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel running flows (they end FAILED, CANCELLED) and wait for them to record
        it, so nothing touches the database after the server stopped."""
        self._runner.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            futures = list(self._futures.values())
            for flow in self._running.values():
                flow.cancelled = True
                for call in flow.calls:
                    call.cancel()
        wait(futures, timeout=timeout)

    def _run(self, flow: FlowRecord, agreement: Agreement) -> None:
        with tracer().start_as_current_span("broker.flow") as span:
            span.set_attribute("accord.flow_id", flow.flow_id)
            span.set_attribute("accord.agreement_id", flow.agreement_id)
            span.set_attribute("accord.output_mode", agreement.output_mode.value)
            try:
                self._execute(flow, agreement)
                span.set_attribute("accord.flow_state", "succeeded")
            except FlowFailed as raised:
                failure = (
                    FlowFailed("CANCELLED", _REVOKED_DETAIL)
                    if self._cancelled(flow.flow_id)
                    else raised
                )
                log.info("flow %s failed: %s (%s)", flow.flow_id, failure.reason, failure.detail)
                self._set(
                    flow.flow_id, state="failed", failure_reason=failure.reason,
                    failure_detail=failure.detail,
                )  # fmt: skip
                span.set_attribute("accord.flow_state", "failed")
            except Exception as exc:  # anything else must still end the flow
                log.exception("flow %s failed unexpectedly", flow.flow_id)
                self._set(
                    flow.flow_id, state="failed", failure_reason="INTERNAL",
                    failure_detail=f"internal error at the broker ({type(exc).__name__})",
                )  # fmt: skip
            finally:
                with self._lock:
                    self._running.pop(flow.flow_id, None)
                self._audit_finished(flow.flow_id)
                with self._lock:  # last: ``close`` waits for the flow until here
                    self._futures.pop(flow.flow_id, None)

    def _audit_finished(self, flow_id: str) -> None:
        try:
            done = self._store.flow(flow_id)
        except Exception:
            log.exception("flow %s: could not read its final state for the audit log", flow_id)
            return
        self._audit.record(
            "flow-finished",
            flow_id=done.flow_id,
            agreement_id=done.agreement_id,
            state=done.state,
            failure_reason=done.failure_reason,
            owner_set_size=done.owner_set_size,
            recipient_set_size=done.recipient_set_size,
        )

    def _cancelled(self, flow_id: str) -> bool:
        with self._lock:
            running = self._running.get(flow_id)
            return running is not None and running.cancelled

    def _calls(self, flow_id: str) -> list[Any]:
        with self._lock:
            return list(self._running[flow_id].calls)

    def _track(self, flow_id: str, call: Any) -> None:
        """Remember an open call; cancel it at once if the flow was cancelled meanwhile."""
        with self._lock:
            running = self._running[flow_id]
            running.calls.append(call)
            cancelled = running.cancelled
        if cancelled:
            call.cancel()

    def _check_not_cancelled(self, flow_id: str) -> None:
        if self._cancelled(flow_id):
            raise FlowFailed("CANCELLED", _REVOKED_DETAIL)

    def _context(self, flow: FlowRecord, role: int) -> flow_pb2.FlowContext:
        return flow_pb2.FlowContext(
            flow_id=flow.flow_id,
            agreement_id=flow.agreement_id,
            role=role,  # type: ignore[arg-type]
            owner_segment_id=flow.owner_segment_id,
            recipient_segment_id=flow.recipient_segment_id,
            started_at=time_to_proto(flow.created_at),
        )

    def _execute(self, flow: FlowRecord, agreement: Agreement) -> None:
        owner = self._channels.stub(agreement.owner.name)
        recipient = self._channels.stub(agreement.recipient.name)
        owner_ctx = self._context(flow, flow_pb2.FLOW_ROLE_OWNER)
        recipient_ctx = self._context(flow, flow_pb2.FLOW_ROLE_RECIPIENT)
        if agreement.output_mode is OutputMode.RELEASE:
            self._set(flow.flow_id, state="delivering")
            self._relay_release(flow.flow_id, owner, owner_ctx, recipient, recipient_ctx)
            self._check_not_cancelled(flow.flow_id)
            self._set(flow.flow_id, state="succeeded")
            return

        self._set(flow.flow_id, state="blinding")
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="accord-relay") as relays:
            owner_side = relays.submit(
                self._relay, flow.flow_id, owner, owner_ctx, recipient, recipient_ctx
            )
            recipient_side = relays.submit(
                self._relay, flow.flow_id, recipient, recipient_ctx, owner, owner_ctx
            )
            try:
                owner_doubly = owner_side.result()
                recipient_doubly = recipient_side.result()
            except BaseException:
                for call in self._calls(flow.flow_id):  # stop the other direction at once
                    call.cancel()
                raise
        self._check_not_cancelled(flow.flow_id)
        self._set(
            flow.flow_id,
            state="matching",
            owner_set_size=owner_doubly.sent,
            recipient_set_size=recipient_doubly.sent,
        )
        if agreement.output_mode is OutputMode.OVERLAP:
            owner_tokens = set(owner_doubly.tokens)
            del owner_doubly
            self._deliver_overlap(
                flow, agreement, owner, owner_ctx, recipient, recipient_ctx,
                overlap_size(owner_tokens, recipient_doubly.tokens, recipient_doubly.handles),
            )  # fmt: skip
            return
        matched = intersect_handles(
            set(owner_doubly.tokens), recipient_doubly.tokens, recipient_doubly.handles
        )
        del owner_doubly, recipient_doubly
        self._set(flow.flow_id, state="delivering")
        # In parts, so no message nears the size limit; the recipient keeps nothing until
        # the final one.
        parts = max(1, -(-len(matched) // MATCH_PART))
        for index in range(parts):
            self._call(
                flow.flow_id,
                recipient.DeliverMatchResult,
                node_pb2.DeliverMatchResultRequest(
                    flow=recipient_ctx,
                    match=flow_pb2.MatchResult(
                        agreement_id=flow.agreement_id,
                        flow_id=flow.flow_id,
                        matched_handles=matched[index * MATCH_PART : (index + 1) * MATCH_PART],
                        batch_index=index,
                        final=index == parts - 1,
                        matched_total=len(matched),
                    ),
                ),
            )
        self._set(flow.flow_id, state="succeeded")

    def _deliver_overlap(
        self,
        flow: FlowRecord,
        agreement: Agreement,
        owner: node_pb2_grpc.NodeServiceStub,
        owner_ctx: flow_pb2.FlowContext,
        recipient: node_pb2_grpc.NodeServiceStub,
        recipient_ctx: flow_pb2.FlowContext,
        intersection_size: int,
    ) -> None:
        """The owner noises the exact size and signs the count; the recipient gets only the
        count. ``intersection_size`` lives in this frame only: never stored or logged."""
        noised = self._call(
            flow.flow_id,
            owner.NoiseOverlapCount,
            node_pb2.NoiseOverlapCountRequest(flow=owner_ctx, intersection_size=intersection_size),
        )
        del intersection_size
        count = noised.count
        try:
            signed = overlap_count_from_proto(count)
            if (signed.agreement_id, signed.flow_id) != (flow.agreement_id, flow.flow_id):
                raise InvalidAgreement("the overlap count names another agreement or flow")
            signed.verify(agreement.owner.signing_public_key)
        except InvalidAgreement as exc:
            log.warning("flow %s: the owner's overlap count was refused: %s", flow.flow_id, exc)
            raise FlowFailed("PEER_REJECTED", "the owner's overlap count did not verify") from None
        self._check_not_cancelled(flow.flow_id)
        self._set(flow.flow_id, state="delivering")
        self._call(
            flow.flow_id,
            recipient.DeliverMatchResult,
            node_pb2.DeliverMatchResultRequest(flow=recipient_ctx, overlap=count),
        )
        self._set(flow.flow_id, state="succeeded")

    def _relay(
        self,
        flow_id: str,
        source: node_pb2_grpc.NodeServiceStub,
        source_ctx: flow_pb2.FlowContext,
        target_node: node_pb2_grpc.NodeServiceStub,
        target_ctx: flow_pb2.FlowContext,
    ) -> _Collected:
        """source's BlindSet, streamed into target's ReblindSet; collect what comes back."""
        blinded = source.BlindSet(
            node_pb2.BlindSetRequest(flow=source_ctx), timeout=FLOW_DEADLINE_S
        )
        self._track(flow_id, blinded)
        sent = [0]
        source_failed: list[grpc.RpcError] = []
        target: list[Any] = []
        target_known = threading.Event()

        def forward() -> Iterator[node_pb2.ReblindSetRequest]:
            # Runs on gRPC's request thread: never let the source's error escape there.
            first = True
            try:
                for response in blinded:
                    sent[0] = response.batch.set_size
                    if first:
                        yield node_pb2.ReblindSetRequest(flow=target_ctx, batch=response.batch)
                        first = False
                    else:
                        yield node_pb2.ReblindSetRequest(batch=response.batch)
            except grpc.RpcError as exc:
                source_failed.append(exc)
                target_known.wait(30)
                for call in target:
                    call.cancel()

        reblinded = target_node.ReblindSet(forward(), timeout=FLOW_DEADLINE_S)
        target.append(reblinded)
        target_known.set()
        self._track(flow_id, reblinded)
        tokens: list[bytes] = []
        handles: list[bytes] = []
        try:
            for response in reblinded:
                tokens.extend(response.batch.tokens)
                handles.extend(response.batch.handles)
        except grpc.RpcError as exc:
            # The source's own failure (if any) explains the target's better.
            raise _failure(source_failed[0] if source_failed else exc) from None
        if source_failed:
            raise _failure(source_failed[0])
        if len(tokens) != sent[0]:
            raise FlowFailed("PEER_REJECTED", "a node returned a set of the wrong size")
        return _Collected(tokens, handles, sent[0])

    def _relay_release(
        self,
        flow_id: str,
        owner: node_pb2_grpc.NodeServiceStub,
        owner_ctx: flow_pb2.FlowContext,
        recipient: node_pb2_grpc.NodeServiceStub,
        recipient_ctx: flow_pb2.FlowContext,
    ) -> int:
        """The owner's ReleaseSegment streamed into the recipient's DeliverReleaseBatch,
        batch by batch; how many batches were relayed. Ciphertext is passed on unopened."""
        released = owner.ReleaseSegment(
            node_pb2.ReleaseSegmentRequest(flow=owner_ctx), timeout=FLOW_DEADLINE_S
        )
        self._track(flow_id, released)
        relayed = [0]
        source_failed: list[grpc.RpcError] = []
        unfinished: list[bool] = []
        target: list[Any] = []
        target_known = threading.Event()

        def stop_target() -> None:
            # Cancel rather than end the stream: the recipient must not mistake a cut-off
            # release for a whole one (it keeps nothing without the final batch anyway).
            target_known.wait(30)
            for call in target:
                call.cancel()

        def forward() -> Iterator[node_pb2.DeliverReleaseBatchRequest]:
            # Runs on gRPC's request thread: never let the owner's error escape there.
            final = False
            try:
                for response in released:
                    final = response.batch.final
                    if relayed[0] == 0:
                        request = node_pb2.DeliverReleaseBatchRequest(
                            flow=recipient_ctx, batch=response.batch
                        )
                    else:
                        request = node_pb2.DeliverReleaseBatchRequest(batch=response.batch)
                    relayed[0] += 1
                    yield request
            except grpc.RpcError as exc:
                source_failed.append(exc)
                stop_target()
                return
            if not final:
                unfinished.append(True)
                stop_target()

        delivered = recipient.DeliverReleaseBatch.future(forward(), timeout=FLOW_DEADLINE_S)
        target.append(delivered)
        target_known.set()
        self._track(flow_id, delivered)
        try:
            delivered.result()
        except grpc.FutureCancelledError:
            released.cancel()
            if source_failed:
                raise _failure(source_failed[0]) from None
            if unfinished:
                raise FlowFailed(
                    "PEER_REJECTED", "the owner's release ended without its final batch"
                ) from None
            raise FlowFailed("CANCELLED", "the flow was cancelled") from None
        except grpc.RpcError as exc:
            owner_failed_first = list(source_failed)  # before our cancel adds its own error
            released.cancel()  # stop the owner's stream at once
            raise _failure(owner_failed_first[0] if owner_failed_first else exc) from None
        if source_failed:
            raise _failure(source_failed[0])
        if unfinished:
            raise FlowFailed("PEER_REJECTED", "the owner's release ended without its final batch")
        return relayed[0]

    def _call(self, flow_id: str, method: Any, request: Any) -> Any:
        """A unary call to a node that revoking the agreement can cancel."""
        call = method.future(request, timeout=FLOW_DEADLINE_S)
        self._track(flow_id, call)
        try:
            return call.result()
        except grpc.FutureCancelledError:
            raise FlowFailed("CANCELLED", "the flow was cancelled") from None
        except grpc.RpcError as exc:
            raise _failure(exc) from None


def _failure(error: Any) -> FlowFailed:
    """A node's error as a flow failure: its reason header and its sentence."""
    reason = "NODE_UNAVAILABLE"
    try:
        code = error.code()
        details = error.details() or ""
        trailing = error.trailing_metadata() or ()
    except Exception:  # pragma: no cover - not an RPC error after all
        return FlowFailed("INTERNAL", "a node call failed")
    for key, value in trailing:
        if key == FAILURE_HEADER:
            reason = str(value)
    if code == grpc.StatusCode.CANCELLED:
        return FlowFailed("CANCELLED", "the other direction of the flow failed")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return FlowFailed("NODE_UNAVAILABLE", f"a node did not answer ({code.name.lower()})")
    return FlowFailed(reason if reason != "NODE_UNAVAILABLE" else "INTERNAL", details)
