"""The partner node: customer store, import, normalization (later segments, blinding, service).

Public surface; everything else is machinery.
"""

from node._import import DEFAULT_BATCH_SIZE, ImportSummary, Reject, SourceFormat, run_import
from node._server import NodeServer, create_node_server, register_with_broker
from node._store import (
    StoreCounts,
    customer_exists,
    delete_customer,
    find_customer,
    open_store,
    store_counts,
)
from node.normalize import IdentifierKind, normalize_email, normalize_phone
from node.records import COLUMNS, CustomerRecord, parse_record

__all__ = [
    "COLUMNS",
    "DEFAULT_BATCH_SIZE",
    "CustomerRecord",
    "IdentifierKind",
    "ImportSummary",
    "NodeServer",
    "Reject",
    "SourceFormat",
    "StoreCounts",
    "create_node_server",
    "customer_exists",
    "delete_customer",
    "find_customer",
    "normalize_email",
    "normalize_phone",
    "open_store",
    "parse_record",
    "register_with_broker",
    "run_import",
    "store_counts",
]
