"""Channels from the broker to the nodes' services, one per endpoint, shared by every caller
(flows, revocation pushes, agreement notices)."""

from __future__ import annotations

import threading

import grpc

from broker._store import BrokerStore
from kernel.rpc import connect
from kernel.wire.accord.node.v1 import node_pb2_grpc


class NodeChannels:
    def __init__(self, store: BrokerStore, *, identity: str, insecure_loopback: bool) -> None:
        self._store = store
        self._identity = identity
        self._insecure = insecure_loopback
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def stub(self, node: str) -> node_pb2_grpc.NodeServiceStub:
        """A stub for the node's service at the endpoint it registered last."""
        endpoint = self._store.node(node).endpoint
        with self._lock:
            channel = self._channels.get(endpoint)
            if channel is None:
                channel = connect(
                    endpoint, identity=self._identity, insecure_loopback=self._insecure
                )
                self._channels[endpoint] = channel
        return node_pb2_grpc.NodeServiceStub(channel)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
