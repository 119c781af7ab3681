"""Runs flows: relays blinded sets between the two nodes, intersects, delivers.

One thread per flow. The two directions run at once — owner ``BlindSet`` → recipient
``ReblindSet`` and recipient ``BlindSet`` → owner ``ReblindSet`` — each relaying token
batches as a stream: a batch is pulled from one node only as fast as the other takes it
(gRPC flow control), so the broker holds little more than the doubly-blinded sets it
must intersect. Those live in memory for the flow's lifetime only; the database keeps
the flow's state, set sizes and, on failure, a reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import grpc

from broker._store import BrokerStore, FlowRecord
from broker.matching import intersect_handles
from consent.agreements import Agreement, OutputMode
from consent.serde import time_to_proto
from kernel.rpc import connect
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


class Orchestrator:
    def __init__(
        self,
        store: BrokerStore,
        *,
        identity: str,
        insecure_loopback: bool,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._identity = identity
        self._insecure = insecure_loopback
        self._now = now
        self._runner = ThreadPoolExecutor(max_workers=16, thread_name_prefix="accord-flow")
        self._changed = threading.Condition()
        self._running: dict[str, Future[None]] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self._channels_lock = threading.Lock()

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
        if flow.flow_id in self._running:
            return
        self._running[flow.flow_id] = self._runner.submit(self._run, flow, agreement)

    def close(self) -> None:
        self._runner.shutdown(wait=False, cancel_futures=True)
        with self._channels_lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def _run(self, flow: FlowRecord, agreement: Agreement) -> None:
        with tracer().start_as_current_span("broker.flow") as span:
            span.set_attribute("accord.flow_id", flow.flow_id)
            span.set_attribute("accord.agreement_id", flow.agreement_id)
            try:
                self._execute(flow, agreement)
                span.set_attribute("accord.flow_state", "succeeded")
            except FlowFailed as failure:
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
                self._running.pop(flow.flow_id, None)

    def _stub(self, node: str) -> node_pb2_grpc.NodeServiceStub:
        endpoint = self._store.node(node).endpoint
        with self._channels_lock:
            channel = self._channels.get(endpoint)
            if channel is None:
                channel = connect(
                    endpoint, identity=self._identity, insecure_loopback=self._insecure
                )
                self._channels[endpoint] = channel
        return node_pb2_grpc.NodeServiceStub(channel)

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
        owner = self._stub(agreement.owner.name)
        recipient = self._stub(agreement.recipient.name)
        owner_ctx = self._context(flow, flow_pb2.FLOW_ROLE_OWNER)
        recipient_ctx = self._context(flow, flow_pb2.FLOW_ROLE_RECIPIENT)
        self._set(flow.flow_id, state="blinding")
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="accord-relay") as relays:
            calls: list[Any] = []
            owner_side = relays.submit(
                self._relay, owner, owner_ctx, recipient, recipient_ctx, calls
            )
            recipient_side = relays.submit(
                self._relay, recipient, recipient_ctx, owner, owner_ctx, calls
            )
            try:
                owner_doubly = owner_side.result()
                recipient_doubly = recipient_side.result()
            except BaseException:
                for call in calls:  # stop the other direction at once
                    call.cancel()
                raise
        self._set(
            flow.flow_id,
            state="matching",
            owner_set_size=owner_doubly.sent,
            recipient_set_size=recipient_doubly.sent,
        )
        if agreement.output_mode is not OutputMode.MATCH:
            raise FlowFailed("INTERNAL", f"{agreement.output_mode} flows arrive with issue 5")
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

    def _relay(
        self,
        source: node_pb2_grpc.NodeServiceStub,
        source_ctx: flow_pb2.FlowContext,
        target_node: node_pb2_grpc.NodeServiceStub,
        target_ctx: flow_pb2.FlowContext,
        calls: list[Any],
    ) -> _Collected:
        """source's BlindSet, streamed into target's ReblindSet; collect what comes back."""
        blinded = source.BlindSet(
            node_pb2.BlindSetRequest(flow=source_ctx), timeout=FLOW_DEADLINE_S
        )
        calls.append(blinded)
        sent = [0]
        source_failed: list[grpc.RpcError] = []
        target: list[Any] = []

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
                for call in target:
                    call.cancel()

        reblinded = target_node.ReblindSet(forward(), timeout=FLOW_DEADLINE_S)
        target.append(reblinded)
        calls.append(reblinded)
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

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=FLOW_DEADLINE_S)
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
