"""The broker: registry, agreements, matching, flow orchestration, witness of tree heads.

Public surface; everything else is machinery (docs/matching.md).
"""

from broker._server import BrokerServer, create_broker_server
from broker._store import BrokerStore, migrate_broker, open_broker_store

__all__ = [
    "BrokerServer",
    "BrokerStore",
    "create_broker_server",
    "migrate_broker",
    "open_broker_store",
]
