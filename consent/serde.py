"""Paired conversions between consent's domain values and the wire messages.

Adapters only: the domain modules never import generated code. Each ``*_to_proto`` has a
``*_from_proto`` and a round-trip test (tests/consent/test_serde.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from consent.agreements import Agreement, AgreementState, OutputMode, PartyKeys, SignedAgreement
from consent.records import SignedTreeHead, format_time, parse_time
from consent.signed import (
    AgreementRevocation,
    OverlapCount,
    Revocation,
    RevocationAck,
    WitnessCosignature,
)
from kernel.wire.accord.broker.v1 import broker_pb2
from kernel.wire.accord.common.v1 import (
    agreement_pb2,
    audit_pb2,
    common_pb2,
    flow_pb2,
    revocation_pb2,
)

__all__ = [
    "ack_from_proto",
    "ack_to_proto",
    "agreement_revocation_from_proto",
    "agreement_revocation_to_proto",
    "agreement_to_proto",
    "overlap_count_from_proto",
    "overlap_count_to_proto",
    "revocation_from_proto",
    "revocation_to_proto",
    "keys_from_proto",
    "keys_to_proto",
    "mode_from_proto",
    "mode_to_proto",
    "signed_agreement_from_proto",
    "signed_agreement_to_proto",
    "state_to_proto",
    "time_from_proto",
    "time_to_proto",
    "tree_head_from_proto",
    "tree_head_to_proto",
    "witnessed_head_from_proto",
    "witnessed_head_to_proto",
]

_MODES = {
    OutputMode.OVERLAP: common_pb2.OUTPUT_MODE_OVERLAP,
    OutputMode.MATCH: common_pb2.OUTPUT_MODE_MATCH,
    OutputMode.RELEASE: common_pb2.OUTPUT_MODE_RELEASE,
}
_STATES = {
    AgreementState.PROPOSED: agreement_pb2.AGREEMENT_STATE_PROPOSED,
    AgreementState.ACTIVE: agreement_pb2.AGREEMENT_STATE_ACTIVE,
    AgreementState.REVOKED: agreement_pb2.AGREEMENT_STATE_REVOKED,
    AgreementState.EXPIRED: agreement_pb2.AGREEMENT_STATE_EXPIRED,
}
_KINDS = {"email": common_pb2.IDENTIFIER_KIND_EMAIL, "phone": common_pb2.IDENTIFIER_KIND_PHONE}


def time_to_proto(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def time_from_proto(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def mode_to_proto(mode: OutputMode) -> common_pb2.OutputMode.ValueType:
    return _MODES[mode]


def mode_from_proto(value: int) -> OutputMode:
    for mode, wire in _MODES.items():
        if wire == value:
            return mode
    raise ValueError("unknown output mode")


def state_to_proto(state: AgreementState) -> agreement_pb2.AgreementState.ValueType:
    return _STATES[state]


def keys_to_proto(keys: PartyKeys) -> common_pb2.NodeKeys:
    return common_pb2.NodeKeys(
        node_name=keys.name,
        signing_public_key=keys.signing_public_key,
        hpke_public_key=keys.hpke_public_key,
    )


def keys_from_proto(message: common_pb2.NodeKeys) -> PartyKeys:
    return PartyKeys(message.node_name, message.signing_public_key, message.hpke_public_key)


def agreement_to_proto(agreement: Agreement) -> agreement_pb2.Agreement:
    """For display only: the canonical bytes are authoritative."""
    message = agreement_pb2.Agreement(
        agreement_id=agreement.agreement_id,
        owner=keys_to_proto(agreement.owner),
        recipient=keys_to_proto(agreement.recipient),
        segment_ids=list(agreement.segment_ids),
        purpose=agreement.purpose,
        output_mode=mode_to_proto(agreement.output_mode),
        released_fields=list(agreement.released_fields),
        min_audience_k=agreement.min_audience_k,
        max_set_size=agreement.max_set_size,
        epoch_identifier_cap=agreement.epoch_identifier_cap,
        epoch_length_seconds=agreement.epoch_length_seconds,
        retention_days=agreement.retention_days,
        valid_from=time_to_proto(agreement.valid_from),
        valid_until=time_to_proto(agreement.valid_until),
        rate_limit_per_day=agreement.rate_limit_per_day,
    )
    if agreement.epsilon_total is not None:
        message.privacy_budget.epsilon_total = agreement.epsilon_total
        message.privacy_budget.epsilon_per_count = agreement.epsilon_per_count or ""
    message.identifier_kinds.extend(_KINDS[k] for k in agreement.identifier_kinds)
    return message


def signed_agreement_to_proto(signed: SignedAgreement) -> agreement_pb2.SignedAgreement:
    return agreement_pb2.SignedAgreement(
        canonical_agreement=signed.canonical,
        owner_signature=signed.owner_signature,
        recipient_signature=signed.recipient_signature,
    )


def signed_agreement_from_proto(message: agreement_pb2.SignedAgreement) -> SignedAgreement:
    return SignedAgreement(
        message.canonical_agreement, message.owner_signature, message.recipient_signature
    )


def tree_head_to_proto(head: SignedTreeHead) -> audit_pb2.SignedTreeHead:
    return audit_pb2.SignedTreeHead(
        origin=head.origin,
        tree_size=head.tree_size,
        root_hash=head.root_hash,
        timestamp=_timestamp_message(head.timestamp),
        key_id=head.key_id,
        signature=head.signature,
    )


def tree_head_from_proto(message: audit_pb2.SignedTreeHead) -> SignedTreeHead:
    return SignedTreeHead(
        origin=message.origin,
        tree_size=message.tree_size,
        root_hash=message.root_hash,
        timestamp=format_time(time_from_proto(message.timestamp)),
        key_id=message.key_id,
        signature=message.signature,
    )


def _timestamp_message(text: str) -> Timestamp:
    return time_to_proto(parse_time(text))


# --- signed exchange objects ---------------------------------------------------------------

_REVOCATION_REASONS = {
    "consent_withdrawn": revocation_pb2.REVOCATION_REASON_CONSENT_WITHDRAWN,
    "subject_erased": revocation_pb2.REVOCATION_REASON_SUBJECT_ERASED,
    "agreement_revoked": revocation_pb2.REVOCATION_REASON_AGREEMENT_REVOKED,
}


def overlap_count_to_proto(count: OverlapCount) -> flow_pb2.OverlapCount:
    return flow_pb2.OverlapCount(
        agreement_id=count.agreement_id,
        flow_id=count.flow_id,
        suppressed=count.suppressed,
        noised_count=count.noised_count,
        epsilon_spent=count.epsilon_spent,
        epsilon_remaining=count.epsilon_remaining,
        owner_signature=count.owner_signature,
    )


def overlap_count_from_proto(message: flow_pb2.OverlapCount) -> OverlapCount:
    return OverlapCount(
        agreement_id=message.agreement_id,
        flow_id=message.flow_id,
        suppressed=message.suppressed,
        noised_count=message.noised_count,
        epsilon_spent=message.epsilon_spent,
        epsilon_remaining=message.epsilon_remaining,
        owner_signature=message.owner_signature,
    )


def revocation_to_proto(revocation: Revocation) -> revocation_pb2.Revocation:
    return revocation_pb2.Revocation(
        revocation_id=revocation.revocation_id,
        agreement_id=revocation.agreement_id,
        owner_node=revocation.owner_node,
        recipient_node=revocation.recipient_node,
        reason=_REVOCATION_REASONS[revocation.reason],
        release_ids=list(revocation.release_ids),
        all_releases=revocation.all_releases,
        issued_at=time_to_proto(revocation.issued_at),
        owner_signature=revocation.owner_signature,
    )


def revocation_from_proto(message: revocation_pb2.Revocation) -> Revocation:
    reasons = {wire: name for name, wire in _REVOCATION_REASONS.items()}
    return Revocation(
        revocation_id=message.revocation_id,
        agreement_id=message.agreement_id,
        owner_node=message.owner_node,
        recipient_node=message.recipient_node,
        reason=reasons.get(message.reason, "unspecified"),
        release_ids=tuple(message.release_ids),
        all_releases=message.all_releases,
        issued_at=time_from_proto(message.issued_at),
        owner_signature=message.owner_signature,
    )


def ack_to_proto(ack: RevocationAck) -> revocation_pb2.RevocationAck:
    return revocation_pb2.RevocationAck(
        revocation_id=ack.revocation_id,
        agreement_id=ack.agreement_id,
        recipient_node=ack.recipient_node,
        deleted_records=ack.deleted_records,
        acknowledged_at=time_to_proto(ack.acknowledged_at),
        recipient_signature=ack.recipient_signature,
    )


def ack_from_proto(message: revocation_pb2.RevocationAck) -> RevocationAck:
    return RevocationAck(
        revocation_id=message.revocation_id,
        agreement_id=message.agreement_id,
        recipient_node=message.recipient_node,
        deleted_records=message.deleted_records,
        acknowledged_at=time_from_proto(message.acknowledged_at),
        recipient_signature=message.recipient_signature,
    )


def agreement_revocation_to_proto(
    revocation: AgreementRevocation,
) -> agreement_pb2.AgreementRevocation:
    return agreement_pb2.AgreementRevocation(
        agreement_id=revocation.agreement_id,
        node_name=revocation.node_name,
        reason=revocation.reason,
        revoked_at=time_to_proto(revocation.revoked_at),
        signature=revocation.signature,
    )


def agreement_revocation_from_proto(
    message: agreement_pb2.AgreementRevocation,
) -> AgreementRevocation:
    return AgreementRevocation(
        agreement_id=message.agreement_id,
        node_name=message.node_name,
        reason=message.reason,
        revoked_at=time_from_proto(message.revoked_at),
        signature=message.signature,
    )


# --- witnessed tree heads ------------------------------------------------------------------


def witnessed_head_to_proto(
    head: SignedTreeHead, cosignature: WitnessCosignature
) -> broker_pb2.WitnessedHead:
    """A node's head with the broker's cosignature over it (``cosignature.covers(head)``)."""
    return broker_pb2.WitnessedHead(
        tree_head=tree_head_to_proto(head),
        witnessed_at=time_to_proto(cosignature.witnessed_at),
        witness_key_id=cosignature.witness_key_id,
        witness_signature=cosignature.signature,
    )


def witnessed_head_from_proto(
    message: broker_pb2.WitnessedHead,
) -> tuple[SignedTreeHead, WitnessCosignature]:
    """The head and the cosignature as the broker sent them; verify both before trusting
    them (``head.verify(node key)``, ``cosignature.verify(broker key)``)."""
    head = tree_head_from_proto(message.tree_head)
    cosignature = WitnessCosignature(
        origin=head.origin,
        tree_size=head.tree_size,
        root_hash=head.root_hash,
        head_timestamp=head.timestamp,
        witnessed_at=time_from_proto(message.witnessed_at),
        witness_key_id=message.witness_key_id,
        signature=message.witness_signature,
    )
    return head, cosignature
