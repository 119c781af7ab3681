"""Consent ledger, purpose taxonomy, policies and the Merkle audit log.

Public surface; everything else is machinery. docs/consent.md and docs/audit-log.md
describe the design.
"""

from consent._ledger import ConsentPosition, ErasureResult, Ledger, NewEntry, utc_now
from consent._store import migrate_ledger
from consent._verify import VerifyReport, verify_log
from consent.model import (
    ANY_RECIPIENT,
    Channel,
    CollectionMethod,
    ConsentEvent,
    ConsentState,
    ConsentStatus,
    EventType,
    NewConsentEvent,
    Notice,
    decide,
    states_of,
)
from consent.proofs import CheckedEntry, check_subject_proof
from consent.purposes import PURPOSES, TAXONOMY_VERSION, Purpose, purpose
from consent.records import SignedTreeHead, format_time, parse_time

__all__ = [
    "ANY_RECIPIENT",
    "PURPOSES",
    "TAXONOMY_VERSION",
    "Channel",
    "CheckedEntry",
    "CollectionMethod",
    "ConsentEvent",
    "ConsentPosition",
    "ConsentState",
    "ConsentStatus",
    "ErasureResult",
    "EventType",
    "Ledger",
    "NewConsentEvent",
    "NewEntry",
    "Notice",
    "Purpose",
    "SignedTreeHead",
    "VerifyReport",
    "check_subject_proof",
    "decide",
    "format_time",
    "migrate_ledger",
    "parse_time",
    "purpose",
    "states_of",
    "utc_now",
    "verify_log",
]
