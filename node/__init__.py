"""The partner node: customer store, import, normalization (later segments, blinding, service).

Public surface; everything else is machinery.
"""

from node._exchange import purge_expired
from node._import import DEFAULT_BATCH_SIZE, ImportSummary, Reject, SourceFormat, run_import
from node._revocations import RevocationOutbox, RevocationState
from node._segments import BUILT_IN_ALL, SegmentPreview, SegmentStore
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
from node.segments import ALL_CUSTOMERS, CustomerFacts, Segment, SegmentFilter

__all__ = [
    "ALL_CUSTOMERS",
    "BUILT_IN_ALL",
    "COLUMNS",
    "DEFAULT_BATCH_SIZE",
    "CustomerFacts",
    "CustomerRecord",
    "IdentifierKind",
    "ImportSummary",
    "NodeServer",
    "Reject",
    "RevocationOutbox",
    "RevocationState",
    "Segment",
    "SegmentFilter",
    "SegmentPreview",
    "SegmentStore",
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
    "purge_expired",
    "register_with_broker",
    "run_import",
    "store_counts",
]
