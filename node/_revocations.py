"""The owner's revocation outbox: signed revocations waiting for the recipient's ack.

When a customer withdraws (or is erased), every recipient that holds a record released
for that customer must delete it. The owner knows, per release, which customer it was
and under which agreement (``node_releases``); it signs one revocation per agreement,
naming the releases only by their random release ids, and keeps it here until the
broker brings back the recipient's signed acknowledgement. The running node relays the
outbox (``node._housekeeping``); CLI commands that record withdrawals fill it. Each
issue and each acknowledgement is an audit-log entry.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Engine, insert, select, update

from consent import ConsentStatus, Ledger, decide
from consent.agreements import Agreement
from consent.errors import InvalidAgreement, SubjectNotFound
from consent.signed import Revocation, RevocationAck
from kernel.crypto import SigningKey
from node._agreements import AgreementStore
from node._tables import CustomerRow, ReleaseRow, RevocationRow
from node.errors import FlowRefused

__all__ = ["REVOCATION_REASONS", "RevocationOutbox", "RevocationState"]

_customers = CustomerRow.__table__  # type: ignore[attr-defined]
_releases = ReleaseRow.__table__  # type: ignore[attr-defined]
_revocations = RevocationRow.__table__  # type: ignore[attr-defined]

REVOCATION_REASONS: Final = ("consent_withdrawn", "subject_erased", "agreement_revoked")
RELEASE_ID_SIZE: Final = 16


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class RevocationState:
    """One outbox row as compliance sees it (no customer data: ids and counts)."""

    revocation_id: str
    agreement_id: str
    recipient: str
    reason: str
    releases: int
    all_releases: bool
    state: str
    attempts: int
    issued_at: datetime
    acknowledged_at: datetime | None
    deleted_records: int | None

    @classmethod
    def of(cls, row: Any) -> RevocationState:
        return cls(
            revocation_id=row.revocation_id,
            agreement_id=row.agreement_id,
            recipient=row.recipient,
            reason=row.reason,
            releases=len(bytes(row.release_ids)) // RELEASE_ID_SIZE,
            all_releases=bool(row.all_releases),
            state=row.state,
            attempts=int(row.attempts),
            issued_at=_utc(row.issued_at),
            acknowledged_at=None if row.acknowledged_at is None else _utc(row.acknowledged_at),
            deleted_records=row.deleted_records,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in self.__dataclass_fields__},
            "issued_at": self.issued_at.isoformat(),
            "acknowledged_at": None
            if self.acknowledged_at is None
            else self.acknowledged_at.isoformat(),
        }


class RevocationOutbox:
    """Issue, keep and settle the owner's revocations."""

    def __init__(
        self,
        engine: Engine,
        *,
        node_name: str,
        ledger: Ledger,
        signing_key: SigningKey | None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.agreements = AgreementStore(engine, node_name=node_name)
        self._ledger = ledger
        self._key = signing_key
        self._now = now

    # --- issuing --------------------------------------------------------------------------

    def revoke_unconsented(self, external_id: str, *, reason: str) -> list[str]:
        """Revoke every live release of this customer whose consent no longer holds.

        Called after a withdrawal (or before an erasure, with ``subject_erased``, when
        nothing holds any more). Consent is decided exactly as a release decides it: for
        the agreement's purpose, to its recipient, with at least one channel, now.
        """
        with self.engine.connect() as connection:
            customer_id = connection.execute(
                select(_customers.c.id).where(_customers.c.external_id == external_id)
            ).scalar_one_or_none()
        if customer_id is None:
            return []
        now = self._now()
        events = []
        if reason != "subject_erased":
            try:
                events = self._ledger.events_of(self._ledger.pseudonym_for(external_id))
            except SubjectNotFound:
                events = []

        def still_consented(agreement: Agreement) -> bool:
            state = decide(events, purpose=agreement.purpose,
                           recipient=agreement.recipient.name, now=now)  # fmt: skip
            return state.status is ConsentStatus.VALID and bool(state.channels)

        return self._issue([customer_id], still_consented=still_consented, reason=reason, now=now)

    def revoke_unconsented_all(self, *, reason: str = "consent_withdrawn") -> list[str]:
        """The same check for every live release (after a bulk consent import)."""
        now = self._now()
        valid: dict[tuple[str, str], set[str]] = {}

        def still_consented_by_id(agreement: Agreement, external_id: str) -> bool:
            key = (agreement.purpose, agreement.recipient.name)
            if key not in valid:
                valid[key] = set(
                    self._ledger.valid_subjects(
                        purpose=key[0], recipient=key[1], now=now, need_channel=True
                    )  # fmt: skip
                )
            return external_id in valid[key]

        with self.engine.connect() as connection:
            live = connection.execute(
                select(_releases.c.customer_id, _customers.c.external_id)
                .join(_customers, _customers.c.id == _releases.c.customer_id)
                .where(_releases.c.revoked_at.is_(None))
                .distinct()
            ).all()
        issued: list[str] = []
        for customer_id, external_id in live:

            def still_consented(agreement: Agreement, subject: str = external_id) -> bool:
                return still_consented_by_id(agreement, subject)

            issued += self._issue(
                [customer_id], still_consented=still_consented, reason=reason, now=now
            )
        return issued

    def revoke_all_releases(self, agreement: Agreement, *, reason: str) -> str | None:
        """One ``all_releases`` revocation for the agreement, if anything was released."""
        now = self._now()
        with self.engine.connect() as connection:
            live = connection.execute(
                select(_releases.c.release_id)
                .where(_releases.c.agreement_id == agreement.agreement_id,
                       _releases.c.revoked_at.is_(None))
                .limit(1)
            ).first()  # fmt: skip
        if live is None:
            return None
        revocation = self._sign(agreement, (), reason=reason, all_releases=True, now=now)
        self._store(revocation, now)
        return revocation.revocation_id

    def _issue(
        self,
        customer_ids: Iterable[int],
        *,
        still_consented: Callable[[Agreement], bool],
        reason: str,
        now: datetime,
    ) -> list[str]:
        with self.engine.connect() as connection:
            released = connection.execute(
                select(_releases.c.release_id, _releases.c.agreement_id).where(
                    _releases.c.customer_id.in_(list(customer_ids)),
                    _releases.c.revoked_at.is_(None),
                )
            ).all()
        by_agreement: dict[str, list[bytes]] = {}
        for release_id, agreement_id in released:
            by_agreement.setdefault(agreement_id, []).append(bytes(release_id))
        issued = []
        for agreement_id, release_ids in sorted(by_agreement.items()):
            agreement = self.agreements.get(agreement_id).signed.agreement
            if still_consented(agreement):
                continue
            revocation = self._sign(agreement, tuple(sorted(release_ids)), reason=reason,
                                    all_releases=False, now=now)  # fmt: skip
            self._store(revocation, now)
            issued.append(revocation.revocation_id)
        return issued

    def _sign(self, agreement: Agreement, release_ids: tuple[bytes, ...], *, reason: str,
              all_releases: bool, now: datetime) -> Revocation:  # fmt: skip
        if reason not in REVOCATION_REASONS:
            raise ValueError(f"unknown revocation reason {reason!r}")
        if self._key is None:
            raise ValueError("issuing a revocation needs the node's signing key")
        return Revocation(
            revocation_id=str(uuid.uuid4()),
            agreement_id=agreement.agreement_id,
            owner_node=agreement.owner.name,
            recipient_node=agreement.recipient.name,
            reason=reason,
            release_ids=release_ids,
            all_releases=all_releases,
            issued_at=now,
        ).signed(self._key)

    def _store(self, revocation: Revocation, now: datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(_revocations).values(
                    revocation_id=revocation.revocation_id,
                    agreement_id=revocation.agreement_id,
                    recipient=revocation.recipient_node,
                    reason=revocation.reason,
                    release_ids=b"".join(revocation.release_ids),
                    all_releases=revocation.all_releases,
                    issued_at=revocation.issued_at,
                    signature=revocation.owner_signature,
                    state="pending",
                    attempts=0,
                    updated_at=now,
                )
            )
            revoked = update(_releases).values(revoked_at=now)
            if revocation.all_releases:
                revoked = revoked.where(
                    _releases.c.agreement_id == revocation.agreement_id,
                    _releases.c.revoked_at.is_(None),
                )
            else:
                revoked = revoked.where(_releases.c.release_id.in_(list(revocation.release_ids)))
            connection.execute(revoked)
        self._ledger.append_record(
            "revocation",
            {"schema": "accord.revocation-issued/1", "revocation_id": revocation.revocation_id,
             "agreement_id": revocation.agreement_id, "recipient": revocation.recipient_node,
             "reason": revocation.reason, "releases": len(revocation.release_ids),
             "all_releases": revocation.all_releases},
        )  # fmt: skip

    # --- relaying and settling ------------------------------------------------------------

    def pending(self) -> list[Revocation]:
        """Revocations still waiting for their acknowledgement, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(_revocations).where(_revocations.c.state == "pending")
                .order_by(_revocations.c.issued_at)
            ).all()  # fmt: skip
        out = []
        for row in rows:
            agreement = self.agreements.get(row.agreement_id).signed.agreement
            ids = bytes(row.release_ids)
            out.append(
                Revocation(
                    revocation_id=row.revocation_id,
                    agreement_id=row.agreement_id,
                    owner_node=agreement.owner.name,
                    recipient_node=row.recipient,
                    reason=row.reason,
                    release_ids=tuple(
                        ids[i : i + RELEASE_ID_SIZE] for i in range(0, len(ids), RELEASE_ID_SIZE)
                    ),
                    all_releases=bool(row.all_releases),
                    issued_at=_utc(row.issued_at),
                    owner_signature=bytes(row.signature),
                )
            )
        return out

    def states(self, *, pending_only: bool = False) -> list[RevocationState]:
        query = select(_revocations).order_by(_revocations.c.issued_at)
        if pending_only:
            query = query.where(_revocations.c.state == "pending")
        with self.engine.connect() as connection:
            return [RevocationState.of(row) for row in connection.execute(query)]

    def record_attempt(self, revocation_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(_revocations)
                .where(_revocations.c.revocation_id == revocation_id)
                .values(attempts=_revocations.c.attempts + 1, updated_at=self._now())
            )

    def acknowledged(self, ack: RevocationAck) -> bool:
        """Check the recipient's signed ack and record it (and log it); True if new."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_revocations).where(_revocations.c.revocation_id == ack.revocation_id)
            ).first()
        if row is None:
            raise FlowRefused("PEER_REJECTED", "an acknowledgement for no revocation of ours")
        agreement = self.agreements.get(row.agreement_id).signed.agreement
        if ack.recipient_node != agreement.recipient.name or ack.agreement_id != row.agreement_id:
            raise FlowRefused("PEER_REJECTED", "the acknowledgement names another party")
        try:
            ack.verify(agreement.recipient.signing_public_key)
        except InvalidAgreement as exc:
            raise FlowRefused("PEER_REJECTED", str(exc)) from exc
        if row.state == "acknowledged":
            return False
        with self.engine.begin() as connection:
            connection.execute(
                update(_revocations)
                .where(_revocations.c.revocation_id == ack.revocation_id)
                .values(
                    state="acknowledged",
                    deleted_records=ack.deleted_records,
                    acknowledged_at=ack.acknowledged_at,
                    ack_signature=ack.recipient_signature,
                    updated_at=self._now(),
                )
            )
        self._ledger.append_record(
            "revocation",
            {"schema": "accord.revocation-acknowledged/1", "revocation_id": ack.revocation_id,
             "agreement_id": ack.agreement_id, "recipient": ack.recipient_node,
             "deleted_records": ack.deleted_records,
             "acknowledged_at": ack.acknowledged_at.isoformat()},
        )  # fmt: skip
        return True
