"""What the audit log commits to: canonical records, commitments, leaf entries, tree heads.

Plain Python over the kernel's recipes; no storage. A log entry is:

* a **record** — the RFC 8785 canonical JSON of the event (a consent event, an erasure,
  later a flow decision), kept in a deletable table;
* a **salt** — 32 random bytes, kept beside the record and deleted with it;
* a **commitment** — ``HMAC-SHA256(salt, "accord/commitment/v1\\n" ‖ leaf_index as 8
  bytes ‖ record)``: binds the record to its position, reveals nothing without the salt;
* the **leaf data** — ``canonical_json({"commitment": hex, "kind": kind})``, hashed into
  the RFC 9162 tree as ``SHA-256(0x00 ‖ leaf data)``.

Erasure deletes record and salt; the leaf data, and so every proof, stays valid.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from consent.errors import LedgerTampered, ProofBundleInvalid
from consent.merkle import HASH_SIZE, leaf_hash
from consent.model import (
    Channel,
    CollectionMethod,
    ConsentEvent,
    EventType,
    Notice,
)
from consent.purposes import TAXONOMY_VERSION
from kernel.crypto import SigningKey, canonical_json, commitment, verify_signature
from kernel.errors import SignatureInvalid

__all__ = [
    "CONSENT_SCHEMA",
    "SignedTreeHead",
    "consent_record",
    "event_from_record",
    "format_time",
    "leaf_data",
    "parse_time",
    "record_commitment",
]

CONSENT_SCHEMA: Final = "accord.consent-event/1"
ERASURE_SCHEMA: Final = "accord.erasure/1"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``: one spelling per instant."""
    if moment.utcoffset() is None:
        raise ValueError("timestamps must carry a time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Inverse of ``format_time`` (also accepts any RFC 3339 offset)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.utcoffset() is None:
        raise ValueError("timestamps must carry a time zone")
    return moment.astimezone(UTC)


def record_commitment(salt: bytes, leaf_index: int, record: bytes) -> bytes:
    """The commitment of ``record`` at ``leaf_index`` under ``salt`` (module docstring)."""
    return commitment(salt, leaf_index.to_bytes(8, "big") + record)


_KIND = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")


def leaf_data(kind: str, entry_commitment: bytes) -> bytes:
    """The bytes the tree hashes for an entry: its kind and commitment, nothing else.

    ``canonical_json({"commitment": hex, "kind": kind})``, written out directly: for a
    kind of lower-case letters, digits and hyphens the two are byte-identical (a test
    checks), and this runs once per entry on append and on every verification.
    """
    if not _KIND.match(kind):
        raise ValueError(f"an entry kind is a short lower-case word, not {kind!r}")
    return b'{"commitment":"%s","kind":"%s"}' % (entry_commitment.hex().encode(), kind.encode())


def commitment_from_leaf_data(data: bytes) -> tuple[str, bytes] | None:
    """``(kind, commitment)`` if ``data`` is exactly a ``leaf_data`` output, else None."""
    prefix, middle = b'{"commitment":"', b'","kind":"'
    if not data.startswith(prefix) or not data.endswith(b'"}'):
        return None
    hex_end = len(prefix) + 2 * HASH_SIZE
    if data[hex_end : hex_end + len(middle)] != middle:
        return None
    kind = data[hex_end + len(middle) : -2].decode("ascii", "replace")
    try:
        value = bytes.fromhex(data[len(prefix) : hex_end].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not _KIND.match(kind) or leaf_data(kind, value) != data:
        return None
    return kind, value


def entry_leaf_hash(kind: str, salt: bytes, leaf_index: int, record: bytes) -> bytes:
    return leaf_hash(leaf_data(kind, record_commitment(salt, leaf_index, record)))


def consent_record(event: ConsentEvent, *, controller: str) -> bytes:
    """The canonical record of a consent event (27560 field names where they apply)."""
    notice = event.notice
    return canonical_json(
        {
            "schema": CONSENT_SCHEMA,
            "controller": controller,
            "event_id": event.event_id,
            "subject": event.subject,
            "event_type": event.event_type.value,
            "purpose": event.purpose,
            "purpose_version": event.purpose_version,
            "taxonomy": TAXONOMY_VERSION,
            "legal_basis": "consent",
            "recipient": event.recipient,
            "channels": sorted(c.value for c in event.channels),
            "collected_at": format_time(event.collected_at),
            "collection_method": event.collection_method.value,
            "actor": event.actor,
            "recorded_at": format_time(event.recorded_at),
            "notice": None
            if notice is None
            else {
                "reference": notice.reference,
                "version": notice.version,
                "sha256": notice.sha256,
                "language": notice.language,
            },
            "expires_at": None if event.expires_at is None else format_time(event.expires_at),
            "supersedes": event.supersedes,
        }
    )


def event_from_record(record: bytes, *, leaf_index: int) -> ConsentEvent:
    """Read a consent event back from its canonical record."""
    data = json.loads(record)
    notice = data["notice"]
    return ConsentEvent(
        event_id=data["event_id"],
        subject=data["subject"],
        event_type=EventType(data["event_type"]),
        purpose=data["purpose"],
        purpose_version=int(data["purpose_version"]),
        recipient=data["recipient"],
        channels=tuple(Channel(c) for c in data["channels"]),
        collected_at=parse_time(data["collected_at"]),
        collection_method=CollectionMethod(data["collection_method"]),
        actor=data["actor"],
        recorded_at=parse_time(data["recorded_at"]),
        leaf_index=leaf_index,
        notice=None if notice is None else Notice(**notice),
        expires_at=None if data["expires_at"] is None else parse_time(data["expires_at"]),
        supersedes=data["supersedes"],
    )


def erasure_record(
    *, subject: str, erased_entries: int, actor: str, reason: str, erased_at: datetime
) -> bytes:
    return canonical_json(
        {
            "schema": ERASURE_SCHEMA,
            "subject": subject,
            "erased_entries": erased_entries,
            "actor": actor,
            "reason": reason,
            "erased_at": format_time(erased_at),
        }
    )


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A signed checkpoint of a log: origin, size, root, time, key id and signature."""

    origin: str
    tree_size: int
    root_hash: bytes
    timestamp: str
    key_id: str
    signature: bytes

    def signed_fields(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "timestamp": self.timestamp,
            "key_id": self.key_id,
        }

    @classmethod
    def sign(
        cls, key: SigningKey, *, origin: str, tree_size: int, root_hash: bytes, timestamp: str
    ) -> SignedTreeHead:
        unsigned = cls(origin, tree_size, root_hash, timestamp, key.key_id, b"")
        return cls(
            origin,
            tree_size,
            root_hash,
            timestamp,
            key.key_id,
            key.sign("tree-head", unsigned.signed_fields()),
        )

    def verify(self, public_key: bytes) -> None:
        """Raise ``LedgerTampered`` unless the signature verifies under ``public_key``."""
        try:
            verify_signature(public_key, "tree-head", self.signed_fields(), self.signature)
        except SignatureInvalid as exc:
            raise LedgerTampered(
                f"the signed tree head of size {self.tree_size} does not verify "
                f"under key {self.key_id[:16]}…"
            ) from exc

    def to_json(self) -> dict[str, Any]:
        return {
            **self.signed_fields(),
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SignedTreeHead:
        try:
            head = cls(
                origin=str(data["origin"]),
                tree_size=int(data["tree_size"]),
                root_hash=bytes.fromhex(data["root_hash"]),
                timestamp=str(data["timestamp"]),
                key_id=str(data["key_id"]),
                signature=base64.b64decode(data["signature"], validate=True),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofBundleInvalid("a signed tree head is incomplete or malformed") from exc
        if len(head.root_hash) != HASH_SIZE or head.tree_size < 0:
            raise ProofBundleInvalid("a signed tree head is incomplete or malformed")
        return head
