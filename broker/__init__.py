"""The broker: registry, catalog, agreements, matching, flow orchestration, revocation
relay, witness of tree heads, and its own audit log.

Public surface; everything else is machinery (docs/matching.md, docs/broker.md).
"""

from broker._keys import open_broker_keys
from broker._server import BrokerServer, create_broker_server
from broker._store import BrokerStore, migrate_broker, open_broker_store

__all__ = [
    "BrokerServer",
    "BrokerStore",
    "create_broker_server",
    "migrate_broker",
    "open_broker_keys",
    "open_broker_store",
]
