"""``accord broker serve``: the broker's process."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from sqlalchemy import Engine

from broker._orchestrator import Orchestrator
from broker._service import BrokerServicer
from broker._store import BrokerStore
from kernel.rpc import create_server
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc

log = logging.getLogger("accord.broker")
SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["BrokerService"].full_name


@dataclass
class BrokerServer:
    server: grpc.Server
    port: int
    orchestrator: Orchestrator

    def stop(self, grace: float = 5.0) -> None:
        self.server.stop(grace).wait()
        self.orchestrator.close()


def create_broker_server(
    engine: Engine, *, bind: str, name: str, insecure_loopback: bool
) -> BrokerServer:
    """A broker bound to ``bind`` (port 0 picks one), not yet started."""
    store = BrokerStore(engine)
    orchestrator = Orchestrator(store, identity=name, insecure_loopback=insecure_loopback)
    servicer = BrokerServicer(store, orchestrator)
    server, port, _ = create_server(
        bind=bind,
        register=[lambda s: broker_pb2_grpc.add_BrokerServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        insecure_loopback=insecure_loopback,
    )
    return BrokerServer(server, port, orchestrator)
