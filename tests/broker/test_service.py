"""The broker's service over real gRPC, with stand-in nodes (no node package needed).

The stand-ins implement just enough of ``NodeService`` to drive the broker: their
"blinding" XORs a per-node secret into 32-byte tokens, which commutes like X25519 does,
so the broker's relays, intersection and deliveries are exercised for real. Overlap,
match and release flows, catalog, agreement revocation, the revocation relay, witnessing
and the broker's own audit log are all checked through the wire.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import Engine, text

from broker import BrokerServer, create_broker_server
from consent import verify_log
from consent.agreements import Agreement, OutputMode
from consent.merkle import consistency_proof, leaf_hash, root_hash
from consent.records import SignedTreeHead, format_time
from consent.serde import (
    ack_to_proto,
    agreement_revocation_to_proto,
    keys_to_proto,
    overlap_count_from_proto,
    overlap_count_to_proto,
    revocation_to_proto,
    signed_agreement_to_proto,
    tree_head_from_proto,
    tree_head_to_proto,
    witnessed_head_from_proto,
)
from consent.signed import AgreementRevocation, OverlapCount, Revocation, RevocationAck
from kernel.crypto import SigningKey, random_bytes
from kernel.keys import KeyStore
from kernel.rpc import connect
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc
from kernel.wire.accord.common.v1 import (
    agreement_pb2,
    audit_pb2,
    common_pb2,
    flow_pb2,
)
from kernel.wire.accord.node.v1 import node_pb2, node_pb2_grpc

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
FAILURE_HEADER = "accord-failure-reason"


class Clock:
    def __init__(self) -> None:
        self.moment = NOW

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


def xor(token: bytes, secret: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(token, secret, strict=True))


@dataclass
class StandIn(node_pb2_grpc.NodeServiceServicer):  # type: ignore[misc]
    """A node as far as the broker can tell: sets, counts, releases, acks."""

    party: Any
    points: list[bytes] = field(default_factory=list)
    secret: bytes = field(default_factory=lambda: random_bytes(32))
    mode: OutputMode = OutputMode.MATCH
    # Overlap
    noise: int = 1
    count_key: SigningKey | None = None
    intersection_sizes: list[int] = field(default_factory=list)
    # Deliveries
    overlaps: list[flow_pb2.OverlapCount] = field(default_factory=list)
    matches: list[flow_pb2.MatchResult] = field(default_factory=list)
    # Release (owner side)
    batches: list[flow_pb2.ReleaseBatch] = field(default_factory=list)
    release_fails_after: int | None = None
    release_delay: float = 0.0
    released: int = 0
    # Release (recipient side)
    received: list[node_pb2.DeliverReleaseBatchRequest] = field(default_factory=list)
    refuse_release: bool = False
    release_kept: bool = False
    # Revocations
    revoke_failures: int = 0
    revoked: list[str] = field(default_factory=list)
    agreement_revoked: threading.Event = field(default_factory=threading.Event)

    # One handle per token as sent (default: all distinct).
    handles: list[bytes] = field(default_factory=list)

    def own_tokens(self) -> list[bytes]:
        return [xor(p, self.secret) for p in self.points]

    def BlindSet(self, request: Any, context: Any) -> Iterator[Any]:
        tokens = self.own_tokens()
        handles = self.handles or [i.to_bytes(16, "big") for i in range(len(tokens))]
        for index, start in enumerate(range(0, len(tokens), 3)):
            yield node_pb2.BlindSetResponse(
                batch=flow_pb2.TokenBatch(
                    flow_id=request.flow.flow_id,
                    batch_index=index,
                    tokens=tokens[start : start + 3],
                    handles=handles[start : start + 3],
                    final=start + 3 >= len(tokens),
                    set_size=len(tokens),
                )
            )

    def ReblindSet(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        flow = None
        tokens: list[bytes] = []
        handles: list[bytes] = []
        for request in request_iterator:
            flow = flow or request.flow
            tokens.extend(request.batch.tokens)
            handles.extend(request.batch.handles)
        assert flow is not None
        # Only the owner, re-blinding the recipient's set in match or overlap mode, keeps
        # handles (overlap counts the recipient's distinct, per-customer handles).
        keep = self.mode in (OutputMode.MATCH, OutputMode.OVERLAP) and (
            flow.role == flow_pb2.FLOW_ROLE_OWNER
        )
        yield node_pb2.ReblindSetResponse(
            batch=flow_pb2.TokenBatch(
                flow_id=flow.flow_id,
                tokens=[xor(t, self.secret) for t in tokens],
                handles=handles if keep else [],
                final=True,
                set_size=len(tokens),
            )
        )

    def NoiseOverlapCount(self, request: Any, context: Any) -> Any:
        self.intersection_sizes.append(request.intersection_size)
        count = OverlapCount(
            request.flow.agreement_id,
            request.flow.flow_id,
            False,
            request.intersection_size + self.noise,
            "0.5",
            "3.5",
        ).signed(self.count_key or self.party.key)
        return node_pb2.NoiseOverlapCountResponse(count=overlap_count_to_proto(count))

    def DeliverMatchResult(self, request: Any, context: Any) -> Any:
        if request.HasField("overlap"):
            self.overlaps.append(request.overlap)
        else:
            self.matches.append(request.match)
        return node_pb2.DeliverMatchResultResponse()

    def ReleaseSegment(self, request: Any, context: Any) -> Iterator[Any]:
        for batch in self.batches:
            if self.release_fails_after is not None and self.released >= self.release_fails_after:
                context.set_trailing_metadata(((FAILURE_HEADER, "BELOW_MIN_AUDIENCE"),))
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "too few consented customers")
            time.sleep(self.release_delay)
            self.released += 1
            yield node_pb2.ReleaseSegmentResponse(batch=batch)

    def DeliverReleaseBatch(self, request_iterator: Any, context: Any) -> Any:
        for request in request_iterator:
            self.received.append(request)
            if self.refuse_release:
                context.set_trailing_metadata(((FAILURE_HEADER, "PEER_REJECTED"),))
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a batch did not verify")
        if not self.received or not self.received[-1].batch.final:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the release is incomplete")
        self.release_kept = True
        return node_pb2.DeliverReleaseBatchResponse(batches=len(self.received))

    def Revoke(self, request: Any, context: Any) -> Any:
        if self.revoke_failures:
            self.revoke_failures -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "not now")
        revocation = request.revocation
        self.revoked.append(revocation.revocation_id)
        ack = RevocationAck(
            revocation.revocation_id,
            revocation.agreement_id,
            revocation.recipient_node,
            len(revocation.release_ids),
            NOW,
        ).signed(self.party.key)
        return node_pb2.RevokeResponse(ack=ack_to_proto(ack))

    def AgreementRevoked(self, request: Any, context: Any) -> Any:
        self.agreement_revoked.set()
        return node_pb2.AgreementRevokedResponse()


@dataclass
class Exchange:
    broker: BrokerServer
    engine: Engine
    owner: StandIn
    recipient: StandIn
    parties: Any
    clock: Clock
    keys: KeyStore
    servers: list[grpc.Server]
    channels: list[grpc.Channel] = field(default_factory=list)

    def stub(self, name: str) -> broker_pb2_grpc.BrokerServiceStub:
        channel = connect(f"127.0.0.1:{self.broker.port}", identity=name, insecure_loopback=True)
        self.channels.append(channel)
        return broker_pb2_grpc.BrokerServiceStub(channel)

    def agree(self, agreement: Agreement) -> None:
        self.owner.mode = self.recipient.mode = agreement.output_mode
        signed = self.parties.signed(agreement)
        proposed = dataclasses.replace(signed, recipient_signature=b"")
        owner, recipient = (
            self.stub(self.parties.owner.name),
            self.stub(self.parties.recipient.name),
        )
        owner.SubmitAgreement(
            broker_pb2.SubmitAgreementRequest(signed_agreement=signed_agreement_to_proto(proposed))
        )
        status = recipient.SubmitAgreement(
            broker_pb2.SubmitAgreementRequest(signed_agreement=signed_agreement_to_proto(signed))
        ).status
        assert status.state == agreement_pb2.AGREEMENT_STATE_ACTIVE

    def run_flow(self, agreement: Agreement) -> flow_pb2.Flow:
        recipient = self.stub(self.parties.recipient.name)
        flow_id = str(uuid.uuid4())
        recipient.StartFlow(
            broker_pb2.StartFlowRequest(flow_id=flow_id, agreement_id=agreement.agreement_id)
        )
        return self.wait(flow_id)

    def wait(self, flow_id: str) -> flow_pb2.Flow:
        recipient = self.stub(self.parties.recipient.name)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            flow = recipient.GetFlow(broker_pb2.GetFlowRequest(flow_id=flow_id)).flow
            if flow.state in (flow_pb2.FLOW_STATE_SUCCEEDED, flow_pb2.FLOW_STATE_FAILED):
                return flow
            time.sleep(0.05)
        raise AssertionError("the flow did not end")

    def audit_records(self) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT r.record FROM audit_records r JOIN audit_entries e "
                    "ON e.leaf_index = r.leaf_index ORDER BY e.leaf_index"
                )
            ).all()
        return [json.loads(bytes(row[0])) for row in rows]


def _serve(servicer: StandIn) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def exchange(engine: Engine, parties: Any, tmp_path: Path) -> Iterator[Exchange]:
    clock = Clock()
    keys = KeyStore.create(tmp_path / "broker-keys", name="broker", role="broker")
    broker = create_broker_server(
        engine,
        keys,
        bind="127.0.0.1:0",
        insecure_loopback=True,
        now=clock,
        revocation_sweep_interval=3600,  # the tests sweep by hand
    )
    broker.start()
    owner, recipient = StandIn(parties.owner), StandIn(parties.recipient)
    servers = []
    world = Exchange(broker, engine, owner, recipient, parties, clock, keys, servers)
    for stand_in in (owner, recipient):
        server, port = _serve(stand_in)
        servers.append(server)
        world.stub(stand_in.party.name).RegisterNode(
            broker_pb2.RegisterNodeRequest(
                keys=keys_to_proto(stand_in.party.keys),
                endpoint=f"127.0.0.1:{port}",
                display_name=stand_in.party.name,
            )
        )
    try:
        yield world
    finally:
        for channel in world.channels:
            channel.close()
        broker.stop(0)
        for server in servers:
            server.stop(0)


def _points(count: int) -> list[bytes]:
    return [random_bytes(32) for _ in range(count)]


# --- flows ----------------------------------------------------------------------------------


def test_an_overlap_flow_gives_the_owner_the_size_and_the_recipient_a_signed_count(
    exchange: Exchange,
) -> None:
    shared = _points(5)
    exchange.owner.points = shared + _points(7)
    exchange.recipient.points = _points(4) + shared
    agreement = exchange.parties.agreement(OutputMode.OVERLAP)
    exchange.agree(agreement)
    flow = exchange.run_flow(agreement)
    assert flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, flow.failure_detail
    assert (flow.owner_set_size, flow.recipient_set_size) == (12, 9)
    assert exchange.owner.intersection_sizes == [5]
    (count,) = exchange.recipient.overlaps
    overlap_count_from_proto(count).verify(exchange.parties.owner.key.public_key)
    assert count.noised_count == 6 and count.flow_id == flow.flow_id
    assert exchange.recipient.matches == [] and exchange.owner.overlaps == []
    finished = [r for r in exchange.audit_records() if r["event"] == "flow-finished"]
    assert finished[-1] == {
        "schema": "accord.broker-event/1",
        "event": "flow-finished",
        "at": format_time(NOW),
        "flow_id": flow.flow_id,
        "agreement_id": agreement.agreement_id,
        "state": "succeeded",
        "failure_reason": None,
        "owner_set_size": 12,
        "recipient_set_size": 9,
    }


def test_an_overlap_counts_the_recipients_customers_not_their_identifiers(
    exchange: Exchange,
) -> None:
    shared = _points(6)
    exchange.owner.points = shared + _points(2)
    # Three recipient customers with two identifiers each, all shared, and one unshared.
    exchange.recipient.points = [*shared, *_points(1)]
    exchange.recipient.handles = [bytes([c]) * 16 for c in (1, 1, 2, 2, 3, 3, 4)]
    agreement = exchange.parties.agreement(OutputMode.OVERLAP)
    exchange.agree(agreement)
    flow = exchange.run_flow(agreement)
    assert flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, flow.failure_detail
    assert exchange.owner.intersection_sizes == [3]


def test_an_overlap_count_the_owner_did_not_sign_is_not_delivered(exchange: Exchange) -> None:
    exchange.owner.points = exchange.recipient.points = _points(6)
    exchange.owner.count_key = SigningKey.generate()
    agreement = exchange.parties.agreement(OutputMode.OVERLAP)
    exchange.agree(agreement)
    flow = exchange.run_flow(agreement)
    assert flow.state == flow_pb2.FLOW_STATE_FAILED
    assert flow.failure_reason == flow_pb2.FLOW_FAILURE_REASON_PEER_REJECTED
    assert exchange.recipient.overlaps == []


def test_a_match_flow_still_delivers_the_recipients_own_handles(exchange: Exchange) -> None:
    shared = _points(4)
    exchange.owner.points = _points(3) + shared
    exchange.recipient.points = shared + _points(5)
    agreement = exchange.parties.agreement(OutputMode.MATCH)
    exchange.agree(agreement)
    flow = exchange.run_flow(agreement)
    assert flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, flow.failure_detail
    (match,) = exchange.recipient.matches
    assert sorted(match.matched_handles) == [i.to_bytes(16, "big") for i in range(4)]
    assert match.final and match.matched_total == 4


def _release_batches(agreement: Agreement, count: int) -> list[flow_pb2.ReleaseBatch]:
    return [
        flow_pb2.ReleaseBatch(
            agreement_id=agreement.agreement_id,
            batch_index=i,
            final=i == count - 1,
            enc=random_bytes(32),
            ciphertext=random_bytes(200),
            owner_signature=random_bytes(64),
        )
        for i in range(count)
    ]


def test_a_release_is_relayed_batch_by_batch_unopened(exchange: Exchange) -> None:
    agreement = exchange.parties.agreement(OutputMode.RELEASE)
    exchange.agree(agreement)
    exchange.owner.batches = _release_batches(agreement, 3)
    flow = exchange.run_flow(agreement)
    assert flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, flow.failure_detail
    received = exchange.recipient.received
    assert [r.batch for r in received] == exchange.owner.batches  # byte for byte
    assert received[0].flow.role == flow_pb2.FLOW_ROLE_RECIPIENT
    assert received[0].flow.flow_id == flow.flow_id
    assert all(not r.HasField("flow") for r in received[1:])
    assert exchange.recipient.release_kept
    assert exchange.owner.intersection_sizes == []  # no blinding, no matching


def test_an_owner_failing_mid_release_fails_the_flow_with_its_reason(exchange: Exchange) -> None:
    agreement = exchange.parties.agreement(OutputMode.RELEASE)
    exchange.agree(agreement)
    exchange.owner.batches = _release_batches(agreement, 4)
    exchange.owner.release_fails_after = 1
    flow = exchange.run_flow(agreement)
    assert flow.state == flow_pb2.FLOW_STATE_FAILED
    assert flow.failure_reason == flow_pb2.FLOW_FAILURE_REASON_BELOW_MIN_AUDIENCE
    assert "too few" in flow.failure_detail
    assert not exchange.recipient.release_kept


def test_a_release_without_its_final_batch_is_cut_off(exchange: Exchange) -> None:
    agreement = exchange.parties.agreement(OutputMode.RELEASE)
    exchange.agree(agreement)
    exchange.owner.batches = _release_batches(agreement, 3)[:2]
    flow = exchange.run_flow(agreement)
    assert flow.state == flow_pb2.FLOW_STATE_FAILED
    assert flow.failure_reason == flow_pb2.FLOW_FAILURE_REASON_PEER_REJECTED
    assert "final batch" in flow.failure_detail
    assert not exchange.recipient.release_kept


def test_a_recipient_refusing_a_release_stops_the_owner(exchange: Exchange) -> None:
    agreement = exchange.parties.agreement(OutputMode.RELEASE)
    exchange.agree(agreement)
    exchange.owner.batches = _release_batches(agreement, 40)
    exchange.owner.release_delay = 0.05
    exchange.recipient.refuse_release = True
    flow = exchange.run_flow(agreement)
    assert flow.state == flow_pb2.FLOW_STATE_FAILED
    assert flow.failure_reason == flow_pb2.FLOW_FAILURE_REASON_PEER_REJECTED
    time.sleep(0.3)
    assert exchange.owner.released < 40


# --- agreements -----------------------------------------------------------------------------


def _agreement_revocation(party: Any, agreement: Agreement) -> agreement_pb2.AgreementRevocation:
    signed = AgreementRevocation(agreement.agreement_id, party.name, "contract ended", NOW)
    return agreement_revocation_to_proto(signed.signed(party.key))


def test_a_party_revokes_an_agreement_and_both_nodes_hear_of_it(exchange: Exchange) -> None:
    agreement = exchange.parties.agreement()
    exchange.agree(agreement)
    parties = exchange.parties
    recipient = exchange.stub(parties.recipient.name)
    revocation = _agreement_revocation(parties.recipient, agreement)

    with pytest.raises(grpc.RpcError) as refused:  # a party revokes in its own name only
        exchange.stub(parties.owner.name).RevokeAgreement(
            broker_pb2.RevokeAgreementRequest(revocation=revocation)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as refused:
        exchange.stub(parties.stranger.name).RevokeAgreement(
            broker_pb2.RevokeAgreementRequest(
                revocation=_agreement_revocation(parties.stranger, agreement)
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    status = recipient.RevokeAgreement(
        broker_pb2.RevokeAgreementRequest(revocation=revocation)
    ).status
    assert status.state == agreement_pb2.AGREEMENT_STATE_REVOKED
    assert status.revocation == revocation
    again = recipient.RevokeAgreement(broker_pb2.RevokeAgreementRequest(revocation=revocation))
    assert again.status == status  # idempotent
    assert exchange.owner.agreement_revoked.wait(10)
    assert exchange.recipient.agreement_revoked.wait(10)

    with pytest.raises(grpc.RpcError) as refused:
        recipient.StartFlow(
            broker_pb2.StartFlowRequest(
                flow_id=str(uuid.uuid4()), agreement_id=agreement.agreement_id
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [r["event"] for r in exchange.audit_records()].count("agreement-revoked") == 1


def test_revoking_an_agreement_cancels_its_running_flow(exchange: Exchange) -> None:
    agreement = exchange.parties.agreement(OutputMode.RELEASE)
    exchange.agree(agreement)
    exchange.owner.batches = _release_batches(agreement, 100)
    exchange.owner.release_delay = 0.05
    recipient = exchange.stub(exchange.parties.recipient.name)
    flow_id = str(uuid.uuid4())
    recipient.StartFlow(
        broker_pb2.StartFlowRequest(flow_id=flow_id, agreement_id=agreement.agreement_id)
    )
    deadline = time.monotonic() + 10
    while exchange.owner.released < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    exchange.stub(exchange.parties.owner.name).RevokeAgreement(
        broker_pb2.RevokeAgreementRequest(
            revocation=_agreement_revocation(exchange.parties.owner, agreement)
        )
    )
    flow = exchange.wait(flow_id)
    assert flow.state == flow_pb2.FLOW_STATE_FAILED
    assert flow.failure_reason == flow_pb2.FLOW_FAILURE_REASON_CANCELLED
    assert "revoked" in flow.failure_detail
    assert not exchange.recipient.release_kept


# --- catalog --------------------------------------------------------------------------------


def test_nodes_publish_buckets_and_partners_list_them(exchange: Exchange) -> None:
    owner = exchange.stub(exchange.parties.owner.name)
    entry = broker_pb2.CatalogEntry(
        segment_id="sailors",
        segment_version=1,
        title="Sailors",
        purposes=["analytics.overlap"],
        output_modes=[common_pb2.OUTPUT_MODE_OVERLAP],
        size_bucket=1088,
    )
    published = owner.PublishSegment(broker_pb2.PublishSegmentRequest(entry=entry)).entry
    assert published.owner_node == exchange.parties.owner.name
    assert published.published_at.ToDatetime(tzinfo=UTC) == NOW
    owner.PublishSegment(
        broker_pb2.PublishSegmentRequest(
            entry=broker_pb2.CatalogEntry(
                segment_id="anglers",
                segment_version=3,
                title="Anglers",
                purposes=["marketing.cross_sell"],
                output_modes=[common_pb2.OUTPUT_MODE_MATCH],
                size_bucket=64,
            )
        )
    )
    for bad, code in [
        (_with(entry, size_bucket=1089), "INVALID_ARGUMENT"),
        (_with(entry, owner_node=exchange.parties.recipient.name), "PERMISSION_DENIED"),
        (_with(entry, output_modes=[common_pb2.OUTPUT_MODE_UNSPECIFIED]), "INVALID_ARGUMENT"),
    ]:
        with pytest.raises(grpc.RpcError) as refused:
            owner.PublishSegment(broker_pb2.PublishSegmentRequest(entry=bad))
        assert refused.value.code().name == code
    with pytest.raises(grpc.RpcError) as refused:
        exchange.stub(exchange.parties.stranger.name).PublishSegment(
            broker_pb2.PublishSegmentRequest(entry=entry)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED  # not registered

    partner = exchange.stub(exchange.parties.recipient.name)
    listed = partner.ListCatalog(broker_pb2.ListCatalogRequest(purpose="analytics.overlap"))
    assert [e.segment_id for e in listed.entries] == ["sailors"]
    first = partner.ListCatalog(
        broker_pb2.ListCatalogRequest(page=common_pb2.PageRequest(page_size=1))
    )
    assert [e.segment_id for e in first.entries] == ["anglers"] and first.page.next_page_token
    rest = partner.ListCatalog(
        broker_pb2.ListCatalogRequest(
            page=common_pb2.PageRequest(page_size=1, page_token=first.page.next_page_token)
        )
    )
    assert [e.segment_id for e in rest.entries] == ["sailors"]
    assert not rest.page.next_page_token


def _with(entry: broker_pb2.CatalogEntry, **changes: Any) -> broker_pb2.CatalogEntry:
    copy = broker_pb2.CatalogEntry()
    copy.CopyFrom(entry)
    for name, value in changes.items():
        if isinstance(value, list):
            del getattr(copy, name)[:]
            getattr(copy, name).extend(value)
        else:
            setattr(copy, name, value)
    return copy


# --- revocations ----------------------------------------------------------------------------


def _revocation(exchange: Exchange, agreement: Agreement, **changes: Any) -> Revocation:
    unsigned = Revocation(
        str(uuid.uuid4()),
        agreement.agreement_id,
        agreement.owner.name,
        agreement.recipient.name,
        "consent_withdrawn",
        (random_bytes(16),),
        False,
        NOW,
    )
    return dataclasses.replace(unsigned, **changes).signed(exchange.parties.owner.key)


def test_a_revocation_is_pushed_and_acknowledged_at_once(exchange: Exchange) -> None:
    agreement = exchange.parties.agreement(OutputMode.RELEASE)
    exchange.agree(agreement)
    owner = exchange.stub(exchange.parties.owner.name)
    revocation = revocation_to_proto(_revocation(exchange, agreement))
    status = owner.RelayRevocation(broker_pb2.RelayRevocationRequest(revocation=revocation)).status
    assert status.HasField("ack") and status.ack.revocation_id == revocation.revocation_id
    assert status.delivery_attempts == 1 and status.revocation == revocation
    assert exchange.recipient.revoked == [revocation.revocation_id]
    again = owner.RelayRevocation(broker_pb2.RelayRevocationRequest(revocation=revocation))
    assert again.status == status and exchange.recipient.revoked == [revocation.revocation_id]
    read = owner.GetRevocation(
        broker_pb2.GetRevocationRequest(revocation_id=revocation.revocation_id)
    )
    assert read.status == status

    other = revocation_to_proto(
        _revocation(exchange, agreement, revocation_id=revocation.revocation_id)
    )
    for caller, message, code in [
        (exchange.parties.owner.name, other, grpc.StatusCode.ALREADY_EXISTS),
        (exchange.parties.recipient.name, revocation, grpc.StatusCode.PERMISSION_DENIED),
    ]:
        with pytest.raises(grpc.RpcError) as refused:
            exchange.stub(caller).RelayRevocation(
                broker_pb2.RelayRevocationRequest(revocation=message)
            )
        assert refused.value.code() == code
    forged = revocation_to_proto(
        dataclasses.replace(_revocation(exchange, agreement), owner_signature=b"").signed(
            exchange.parties.stranger.key
        )
    )
    with pytest.raises(grpc.RpcError) as refused:
        owner.RelayRevocation(broker_pb2.RelayRevocationRequest(revocation=forged))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as refused:
        exchange.stub(exchange.parties.stranger.name).GetRevocation(
            broker_pb2.GetRevocationRequest(revocation_id=revocation.revocation_id)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as refused:
        owner.GetRevocation(broker_pb2.GetRevocationRequest(revocation_id=str(uuid.uuid4())))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_unreachable_recipient_gets_the_revocation_on_a_later_sweep(
    exchange: Exchange,
) -> None:
    agreement = exchange.parties.agreement(OutputMode.RELEASE)
    exchange.agree(agreement)
    exchange.recipient.revoke_failures = 1
    owner = exchange.stub(exchange.parties.owner.name)
    revocation = revocation_to_proto(_revocation(exchange, agreement))
    status = owner.RelayRevocation(broker_pb2.RelayRevocationRequest(revocation=revocation)).status
    assert not status.HasField("ack") and status.delivery_attempts == 1  # pending, no error
    pending = exchange.stub(exchange.parties.recipient.name).ListPendingRevocations(
        broker_pb2.ListPendingRevocationsRequest()
    )
    assert list(pending.revocations) == [revocation]
    assert exchange.broker.courier.sweep() == 0  # backing off: not due for 2 s
    exchange.clock.advance(3)
    assert exchange.broker.courier.sweep() == 1
    read = owner.GetRevocation(
        broker_pb2.GetRevocationRequest(revocation_id=revocation.revocation_id)
    )
    assert read.status.HasField("ack") and read.status.delivery_attempts == 2
    events = [r["event"] for r in exchange.audit_records()]
    assert events.count("revocation-relayed") == events.count("revocation-acknowledged") == 1


def test_the_recipient_may_acknowledge_directly(exchange: Exchange) -> None:
    agreement = exchange.parties.agreement(OutputMode.RELEASE)
    exchange.agree(agreement)
    exchange.recipient.revoke_failures = 100
    revoked = _revocation(exchange, agreement)
    exchange.stub(exchange.parties.owner.name).RelayRevocation(
        broker_pb2.RelayRevocationRequest(revocation=revocation_to_proto(revoked))
    )
    recipient = exchange.stub(exchange.parties.recipient.name)
    good = RevocationAck(
        revoked.revocation_id, agreement.agreement_id, agreement.recipient.name, 1, NOW
    ).signed(exchange.parties.recipient.key)
    forged = dataclasses.replace(good, deleted_records=0)
    with pytest.raises(grpc.RpcError) as refused:
        recipient.AcknowledgeRevocation(
            broker_pb2.AcknowledgeRevocationRequest(ack=ack_to_proto(forged))
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as refused:
        exchange.stub(exchange.parties.owner.name).AcknowledgeRevocation(
            broker_pb2.AcknowledgeRevocationRequest(ack=ack_to_proto(good))
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = recipient.AcknowledgeRevocation(
        broker_pb2.AcknowledgeRevocationRequest(ack=ack_to_proto(good))
    ).status
    assert status.ack == ack_to_proto(good)
    assert not recipient.ListPendingRevocations(
        broker_pb2.ListPendingRevocationsRequest()
    ).revocations


# --- witnessing and the broker's own log ----------------------------------------------------


def test_the_broker_witnesses_a_growing_log_and_refuses_a_shrunk_one(exchange: Exchange) -> None:
    parties = exchange.parties
    owner = exchange.stub(parties.owner.name)
    origin = f"accord/node/{parties.owner.name}"
    leaves = [leaf_hash(b"entry %d" % i) for i in range(20)]

    def head(size: int) -> audit_pb2.SignedTreeHead:
        return tree_head_to_proto(
            SignedTreeHead.sign(
                parties.owner.key,
                origin=origin,
                tree_size=size,
                root_hash=root_hash(leaves[:size]),
                timestamp=format_time(NOW),
            )
        )

    def proof(old: int, new: int) -> audit_pb2.ConsistencyProof:
        path = consistency_proof(leaves[:new], old)
        return audit_pb2.ConsistencyProof(
            origin=origin, first_tree_size=old, second_tree_size=new, path=path
        )

    first = owner.WitnessTreeHead(broker_pb2.WitnessTreeHeadRequest(tree_head=head(3))).witnessed
    grown = owner.WitnessTreeHead(
        broker_pb2.WitnessTreeHeadRequest(tree_head=head(9), consistency=proof(3, 9))
    ).witnessed
    repeat = owner.WitnessTreeHead(broker_pb2.WitnessTreeHeadRequest(tree_head=head(9))).witnessed
    assert repeat == grown

    broker_keys = (
        exchange.stub(parties.recipient.name).GetBrokerInfo(broker_pb2.GetBrokerInfoRequest()).keys
    )
    assert broker_keys.node_name == "broker"
    listed = (
        exchange.stub(parties.recipient.name)
        .ListWitnessedHeads(broker_pb2.ListWitnessedHeadsRequest(origin=origin))
        .heads
    )
    assert list(listed) == [first, grown]  # oldest first
    for witnessed in listed:
        node_head, cosignature = witnessed_head_from_proto(witnessed)
        node_head.verify(parties.owner.key.public_key)
        cosignature.verify(broker_keys.signing_public_key)

    for request, code, words in [
        (broker_pb2.WitnessTreeHeadRequest(tree_head=head(5)), "FAILED_PRECONDITION", "shrank"),
        (broker_pb2.WitnessTreeHeadRequest(tree_head=head(12)), "FAILED_PRECONDITION", "proof"),
        (
            broker_pb2.WitnessTreeHeadRequest(tree_head=head(12), consistency=proof(3, 12)),
            "FAILED_PRECONDITION",
            "starts at size 3",
        ),
    ]:
        with pytest.raises(grpc.RpcError) as refused:
            owner.WitnessTreeHead(request)
        assert refused.value.code().name == code and words in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:  # another node's log
        exchange.stub(parties.recipient.name).WitnessTreeHead(
            broker_pb2.WitnessTreeHeadRequest(tree_head=head(12))
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_brokers_own_log_records_what_it_did_and_verifies(exchange: Exchange) -> None:
    shared = _points(3)
    exchange.owner.points = shared + _points(2)
    exchange.recipient.points = shared
    agreement = exchange.parties.agreement(OutputMode.OVERLAP)
    exchange.agree(agreement)
    exchange.run_flow(agreement)
    exchange.stub(exchange.parties.owner.name).RevokeAgreement(
        broker_pb2.RevokeAgreementRequest(
            revocation=_agreement_revocation(exchange.parties.owner, agreement)
        )
    )
    head = tree_head_from_proto(
        exchange.stub(exchange.parties.owner.name)
        .GetTreeHead(broker_pb2.GetTreeHeadRequest())
        .tree_head
    )
    assert head.origin == "accord/broker/broker"
    head.verify(exchange.keys.identity.signing_public_key)
    report = verify_log(exchange.engine, public_key=exchange.keys.identity.signing_public_key)
    assert report.entries == head.tree_size == 5
    records = exchange.audit_records()
    assert [r["event"] for r in records] == [
        "agreement-submitted",
        "agreement-activated",
        "flow-started",
        "flow-finished",
        "agreement-revoked",
    ]
    # Ids, names, states, reasons and padded sizes only: never the exact overlap (3).
    for record in records:
        assert not {"intersection_size", "overlap", "noised_count", "tokens"} & set(record)
