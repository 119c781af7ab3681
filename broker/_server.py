"""``accord broker serve``: the broker's process.

``create_broker_server`` wires the parts — store, channels to the nodes, the broker's
audit log, the flow orchestrator, the revocation courier and the gRPC service — without
starting anything; ``BrokerServer.start`` and ``stop`` run and end them together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from sqlalchemy import Engine

from broker._audit import BrokerAudit
from broker._channels import NodeChannels
from broker._courier import RevocationCourier
from broker._orchestrator import Orchestrator
from broker._service import BrokerServicer
from broker._store import BrokerStore
from consent.agreements import PartyKeys
from kernel.keys import KeyStore
from kernel.rpc import create_server
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc

log = logging.getLogger("accord.broker")
SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["BrokerService"].full_name


@dataclass
class BrokerServer:
    server: grpc.Server
    port: int
    orchestrator: Orchestrator
    courier: RevocationCourier
    channels: NodeChannels
    audit: BrokerAudit

    def start(self) -> None:
        self.server.start()
        self.courier.start()

    def stop(self, grace: float = 5.0) -> None:
        self.courier.stop()
        self.server.stop(grace).wait()
        self.orchestrator.close()
        self.channels.close()


def create_broker_server(
    engine: Engine,
    keys: KeyStore,
    *,
    bind: str,
    insecure_loopback: bool,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    revocation_sweep_interval: float = 2.0,
) -> BrokerServer:
    """A broker bound to ``bind`` (port 0 picks one), not yet started.

    ``keys`` is the broker's key directory (``kernel.keys.KeyStore`` with role "broker"):
    its name is the identity the broker calls nodes as, its signing key signs the
    broker's audit log and its cosignatures of witnessed heads.
    """
    identity = keys.identity
    signing_key = keys.signing_key()
    store = BrokerStore(engine)
    audit = BrokerAudit.open(engine, keys, now=now)
    channels = NodeChannels(store, identity=identity.name, insecure_loopback=insecure_loopback)
    orchestrator = Orchestrator(store, channels, audit, now=now)
    courier = RevocationCourier(
        store, channels, audit, now=now, sweep_interval=revocation_sweep_interval
    )
    servicer = BrokerServicer(
        store,
        orchestrator,
        courier,
        audit,
        identity=PartyKeys(identity.name, identity.signing_public_key, identity.hpke_public_key),
        witness_key=signing_key,
        now=now,
    )
    server, port, _ = create_server(
        bind=bind,
        register=[lambda s: broker_pb2_grpc.add_BrokerServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        insecure_loopback=insecure_loopback,
    )
    return BrokerServer(server, port, orchestrator, courier, channels, audit)
