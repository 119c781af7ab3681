"""The small signed objects of the exchange: counts, release batches, revocations, acks.

Each is signed by one party over ``"accord/<kind>/v1\\n" ‖ RFC 8785(fields)`` (the kernel's
``signed_message``), so the broker that relays it can neither alter nor forge it, and a
signature over one kind can never pass for another. Plain Python; ``consent.serde``-style
conversion to the wire happens in the services.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from consent.errors import InvalidAgreement
from consent.records import SignedTreeHead, format_time
from kernel.crypto import SigningKey, sha256, verify_signature
from kernel.errors import SignatureInvalid

__all__ = [
    "AgreementRevocation",
    "OverlapCount",
    "ReleaseBatchSeal",
    "Revocation",
    "RevocationAck",
    "WitnessCosignature",
    "release_context",
]


def _verify(kind: str, public_key: bytes, fields: dict[str, Any], signature: bytes) -> None:
    try:
        verify_signature(public_key, kind, fields, signature)
    except SignatureInvalid as exc:
        raise InvalidAgreement(f"the {kind} signature does not verify") from exc


@dataclass(frozen=True, slots=True)
class OverlapCount:
    agreement_id: str
    flow_id: str
    suppressed: bool
    noised_count: int
    epsilon_spent: str
    epsilon_remaining: str
    owner_signature: bytes = b""

    def fields(self) -> dict[str, Any]:
        return {
            "agreement_id": self.agreement_id,
            "flow_id": self.flow_id,
            "suppressed": self.suppressed,
            "noised_count": self.noised_count,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_remaining": self.epsilon_remaining,
        }

    def signed(self, key: SigningKey) -> OverlapCount:
        return replace(self, owner_signature=key.sign("overlap-count", self.fields()))

    def verify(self, owner_public_key: bytes) -> None:
        _verify("overlap-count", owner_public_key, self.fields(), self.owner_signature)


def release_context(agreement_id: str, flow_id: str, recipient: str, batch_index: int,
                    final: bool) -> bytes:  # fmt: skip
    """The HPKE ``info`` of a release batch: a batch opens only for its own agreement, flow,
    recipient and position (our HPKE recipe has no AAD, so the position goes in here)."""
    return b"\x1f".join(
        [b"accord/release/v1", agreement_id.encode(), flow_id.encode(), recipient.encode(),
         str(batch_index).encode(), b"final" if final else b"more"]
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReleaseBatchSeal:
    """What the owner signs for one sealed release batch (the ciphertext by its hash)."""

    agreement_id: str
    flow_id: str
    batch_index: int
    final: bool
    enc: bytes
    ciphertext: bytes

    def fields(self) -> dict[str, Any]:
        return {
            "agreement_id": self.agreement_id,
            "flow_id": self.flow_id,
            "batch_index": self.batch_index,
            "final": self.final,
            "enc": self.enc.hex(),
            "ciphertext_sha256": sha256(self.ciphertext).hex(),
        }

    def sign(self, key: SigningKey) -> bytes:
        return key.sign("release-batch", self.fields())

    def verify(self, owner_public_key: bytes, signature: bytes) -> None:
        _verify("release-batch", owner_public_key, self.fields(), signature)


@dataclass(frozen=True, slots=True)
class Revocation:
    """The owner's instruction to a recipient: delete these releases (by release id)."""

    revocation_id: str
    agreement_id: str
    owner_node: str
    recipient_node: str
    reason: str  # consent_withdrawn | subject_erased | agreement_revoked
    release_ids: tuple[bytes, ...]
    all_releases: bool
    issued_at: datetime
    owner_signature: bytes = b""

    def fields(self) -> dict[str, Any]:
        return {
            "revocation_id": self.revocation_id,
            "agreement_id": self.agreement_id,
            "owner_node": self.owner_node,
            "recipient_node": self.recipient_node,
            "reason": self.reason,
            "release_ids": [r.hex() for r in self.release_ids],
            "all_releases": self.all_releases,
            "issued_at": format_time(self.issued_at),
        }

    def signed(self, key: SigningKey) -> Revocation:
        return replace(self, owner_signature=key.sign("revocation", self.fields()))

    def verify(self, owner_public_key: bytes) -> None:
        _verify("revocation", owner_public_key, self.fields(), self.owner_signature)


@dataclass(frozen=True, slots=True)
class RevocationAck:
    """The recipient's signed statement that it carried out a revocation."""

    revocation_id: str
    agreement_id: str
    recipient_node: str
    deleted_records: int
    acknowledged_at: datetime
    recipient_signature: bytes = b""

    def fields(self) -> dict[str, Any]:
        return {
            "revocation_id": self.revocation_id,
            "agreement_id": self.agreement_id,
            "recipient_node": self.recipient_node,
            "deleted_records": self.deleted_records,
            "acknowledged_at": format_time(self.acknowledged_at),
        }

    def signed(self, key: SigningKey) -> RevocationAck:
        return replace(self, recipient_signature=key.sign("revocation-ack", self.fields()))

    def verify(self, recipient_public_key: bytes) -> None:
        _verify("revocation-ack", recipient_public_key, self.fields(), self.recipient_signature)


@dataclass(frozen=True, slots=True)
class AgreementRevocation:
    """A party's signed statement that it ends an agreement."""

    agreement_id: str
    node_name: str
    reason: str
    revoked_at: datetime
    signature: bytes = b""

    def fields(self) -> dict[str, Any]:
        return {
            "agreement_id": self.agreement_id,
            "node_name": self.node_name,
            "reason": self.reason,
            "revoked_at": format_time(self.revoked_at),
        }

    def signed(self, key: SigningKey) -> AgreementRevocation:
        return replace(self, signature=key.sign("agreement-revocation", self.fields()))

    def verify(self, public_key: bytes) -> None:
        _verify("agreement-revocation", public_key, self.fields(), self.signature)


@dataclass(frozen=True, slots=True)
class WitnessCosignature:
    """The broker's signed statement that it saw a node's signed tree head, consistent
    with every head of that log it saw before (RFC 9162 consistency proof checked)."""

    origin: str
    tree_size: int
    root_hash: bytes
    head_timestamp: str
    witnessed_at: datetime
    witness_key_id: str
    signature: bytes = b""

    def fields(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "head_timestamp": self.head_timestamp,
            "witnessed_at": format_time(self.witnessed_at),
            "witness_key_id": self.witness_key_id,
        }

    @classmethod
    def cosign(
        cls, head: SignedTreeHead, key: SigningKey, *, witnessed_at: datetime
    ) -> WitnessCosignature:
        unsigned = cls(head.origin, head.tree_size, head.root_hash, head.timestamp,
                       witnessed_at, key.key_id)  # fmt: skip
        return replace(unsigned, signature=key.sign("witness-cosignature", unsigned.fields()))

    def covers(self, head: SignedTreeHead) -> bool:
        """Whether this cosignature is over ``head`` (same log, size, root and time)."""
        return (self.origin, self.tree_size, self.root_hash, self.head_timestamp) == (
            head.origin, head.tree_size, head.root_hash, head.timestamp)  # fmt: skip

    def verify(self, witness_public_key: bytes) -> None:
        _verify("witness-cosignature", witness_public_key, self.fields(), self.signature)
