"""``accord node serve``: the node's process (gRPC service, blinding pool, broker link)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from sqlalchemy import Engine

from consent import Ledger
from consent.agreements import PartyKeys, SignedAgreement
from consent.serde import keys_to_proto, signed_agreement_from_proto
from kernel.keys import KeyStore
from kernel.rpc import connect, create_server
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc
from kernel.wire.accord.node.v1 import node_pb2, node_pb2_grpc
from node._exchange import Exchange
from node._flows import FlowEngine
from node._housekeeping import Housekeeper
from node._pool import BlindingPool
from node._segments import SegmentStore
from node._service import BrokerLink, NodeServicer, decode_release, encode_release
from node.errors import BrokerUnavailable

SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name


@dataclass
class NodeServer:
    server: grpc.Server
    port: int
    pool: BlindingPool
    flows: FlowEngine
    exchange: Exchange
    housekeeper: Housekeeper
    broker_channel: grpc.Channel

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float = 5.0) -> None:
        self.housekeeper.stop()
        self.server.stop(grace).wait()
        self.pool.close()
        self.broker_channel.close()


def create_node_server(
    engine: Engine,
    keys: KeyStore,
    *,
    bind: str,
    broker_address: str,
    broker_name: str,
    insecure_loopback: bool,
    workers: int | None = None,
    housekeeping_interval: float = 2.0,
) -> NodeServer:
    """A node bound to ``bind`` (port 0 picks one), not yet started or registered."""
    identity = keys.identity
    ledger = Ledger(
        engine,
        origin=identity.origin,
        controller=identity.name,
        signing_key=keys.signing_key(),
    )
    channel = connect(broker_address, identity=identity.name, insecure_loopback=insecure_loopback)
    link = BrokerLink(broker_pb2_grpc.BrokerServiceStub(channel), broker_name)

    def fetch_agreement(agreement_id: str) -> SignedAgreement | None:
        try:
            found = link.stub.GetAgreement(
                broker_pb2.GetAgreementRequest(agreement_id=agreement_id), timeout=30
            )
        except grpc.RpcError:
            return None
        return signed_agreement_from_proto(found.status.signed_agreement)

    segments = SegmentStore(engine)
    pool = BlindingPool(workers)
    flows = FlowEngine(
        engine,
        node_name=identity.name,
        master_secret=keys.master_secret(),
        ledger=ledger,
        pool=pool,
        fetch_agreement=fetch_agreement,
        segment_members=segments.members,
    )
    exchange = Exchange(
        flows,
        ledger=ledger,
        signing_key=keys.signing_key(),
        hpke_key=keys.hpke_key(),
        encode=encode_release,
        decode=decode_release,
    )
    housekeeper = Housekeeper(
        exchange, ledger, link.stub, origin=identity.origin, interval=housekeeping_interval
    )
    servicer = NodeServicer(
        flows, exchange=exchange, segments=segments, keys=keys, ledger=ledger, broker=link
    )
    server, port, _ = create_server(
        bind=bind,
        register=[lambda s: node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        insecure_loopback=insecure_loopback,
    )
    return NodeServer(server, port, pool, flows, exchange, housekeeper, channel)


def register_with_broker(
    server: NodeServer, keys: KeyStore, *, endpoint: str, display_name: str
) -> None:
    """Tell the broker where this node listens and which keys it holds, then start the
    node's housekeeping (revocations, retention, witnessing)."""
    identity = keys.identity
    stub = broker_pb2_grpc.BrokerServiceStub(server.broker_channel)
    request = broker_pb2.RegisterNodeRequest(
        keys=keys_to_proto(
            PartyKeys(identity.name, identity.signing_public_key, identity.hpke_public_key)
        ),
        endpoint=endpoint,
        display_name=display_name,
    )  # fmt: skip
    try:
        stub.RegisterNode(request, timeout=30, wait_for_ready=True)
    except grpc.RpcError as exc:
        raise BrokerUnavailable(f"cannot register with the broker: {exc.details()}") from None
    # Registered: the broker can now take this node's revocations and tree heads.
    server.housekeeper.start()
