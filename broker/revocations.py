"""What the broker checks before it relays a revocation or records an acknowledgement.

Plain Python over ``consent.signed``. The broker relays revocations it can verify but
not read: they name releases by random 16-byte release ids only, never customers. Every
signature is checked against the keys in the signed agreement (not the registry), since
those are the keys both parties agreed to be bound by.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Final

from broker.errors import AcknowledgementInvalid, NotAuthorized, RevocationInvalid
from consent.agreements import Agreement
from consent.errors import InvalidAgreement
from consent.signed import AgreementRevocation, Revocation, RevocationAck

__all__ = [
    "MAX_RETRY_DELAY",
    "check_ack",
    "check_agreement_revocation",
    "check_revocation",
    "next_attempt_at",
]

RELEASE_ID_SIZE: Final = 16
MAX_REASON_LENGTH: Final = 500
REASONS: Final = frozenset({"consent_withdrawn", "subject_erased", "agreement_revoked"})
FIRST_RETRY_DELAY: Final = timedelta(seconds=2)
MAX_RETRY_DELAY: Final = timedelta(minutes=1)


def _canonical_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def check_revocation(revocation: Revocation, agreement: Agreement, *, caller: str) -> None:
    """A revocation the caller may hand to the broker: its own, under its own agreement as
    owner, well formed, and signed with the owner key the agreement names."""
    if revocation.owner_node != caller:
        raise NotAuthorized("a node relays revocations it issued itself only")
    if caller != agreement.owner.name:
        raise NotAuthorized("only the agreement's owner revokes what it released")
    if not _canonical_uuid(revocation.revocation_id):
        raise RevocationInvalid("revocation_id must be a UUID in its canonical form")
    if revocation.agreement_id != agreement.agreement_id:
        raise RevocationInvalid("the revocation names another agreement")
    if revocation.recipient_node != agreement.recipient.name:
        raise RevocationInvalid("the revocation must be addressed to the agreement's recipient")
    if revocation.reason not in REASONS:
        raise RevocationInvalid("the revocation gives no known reason")
    if revocation.all_releases:
        if revocation.reason != "agreement_revoked":
            raise RevocationInvalid("only a revoked agreement revokes all releases at once")
        if revocation.release_ids:
            raise RevocationInvalid("a revocation of all releases lists no release ids")
    elif not revocation.release_ids:
        raise RevocationInvalid("the revocation names no release to delete")
    if any(len(r) != RELEASE_ID_SIZE for r in revocation.release_ids):
        raise RevocationInvalid(f"release ids are {RELEASE_ID_SIZE} random bytes each")
    if len(set(revocation.release_ids)) != len(revocation.release_ids):
        raise RevocationInvalid("the revocation names a release id twice")
    try:
        revocation.verify(agreement.owner.signing_public_key)
    except InvalidAgreement:
        raise RevocationInvalid(
            "the revocation's signature does not verify under the owner key of the agreement"
        ) from None


def check_ack(ack: RevocationAck, revocation: Revocation, agreement: Agreement) -> None:
    """An acknowledgement of exactly this revocation, signed with the recipient key the
    agreement names."""
    if (ack.revocation_id, ack.agreement_id, ack.recipient_node) != (
        revocation.revocation_id,
        revocation.agreement_id,
        revocation.recipient_node,
    ):
        raise AcknowledgementInvalid(
            "the acknowledgement names another revocation, agreement or recipient"
        )
    if ack.deleted_records < 0:
        raise AcknowledgementInvalid("the acknowledgement counts a negative number of records")
    try:
        ack.verify(agreement.recipient.signing_public_key)
    except InvalidAgreement:
        raise AcknowledgementInvalid(
            "the acknowledgement's signature does not verify under the recipient key of the "
            "agreement"
        ) from None


def check_agreement_revocation(
    revocation: AgreementRevocation, agreement: Agreement, *, caller: str
) -> None:
    """A party's revocation of its own agreement, signed with its key in the agreement."""
    if revocation.agreement_id != agreement.agreement_id:
        raise RevocationInvalid("the revocation names another agreement")
    try:
        role = agreement.party(revocation.node_name)
    except InvalidAgreement:
        raise RevocationInvalid("only a party to the agreement can revoke it") from None
    if caller != revocation.node_name:
        raise NotAuthorized("a node revokes agreements in its own name only")
    if len(revocation.reason) > MAX_REASON_LENGTH:
        raise RevocationInvalid(f"the reason is at most {MAX_REASON_LENGTH} characters")
    party = agreement.owner if role == "owner" else agreement.recipient
    try:
        revocation.verify(party.signing_public_key)
    except InvalidAgreement:
        raise RevocationInvalid(
            f"the revocation's signature does not verify under the {role} key of the agreement"
        ) from None


def next_attempt_at(attempts: int, last_attempt_at: datetime | None) -> datetime | None:
    """When a pending revocation is due again: at once if never tried, then after 2 s,
    4 s, 8 s … doubling up to a minute, so a node that is down is not hammered."""
    if attempts <= 0 or last_attempt_at is None:
        return None
    delay = min(FIRST_RETRY_DELAY * (1 << min(attempts - 1, 16)), MAX_RETRY_DELAY)
    return last_attempt_at + delay
