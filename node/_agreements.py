"""The node's own copies of the agreements it is party to (it enforces these, not the broker's)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update

from consent.agreements import AgreementState, SignedAgreement
from node._tables import AgreementRow
from node.errors import AgreementUnknown

_agreements = AgreementRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class LocalAgreement:
    signed: SignedAgreement
    role: str
    partner: str
    rotation: int
    revoked_at: datetime | None

    def state(self, now: datetime) -> AgreementState:
        return self.signed.state_at(now=now, revoked=self.revoked_at is not None)


class AgreementStore:
    def __init__(self, engine: Engine, *, node_name: str) -> None:
        self.engine = engine
        self.node_name = node_name

    def save(self, signed: SignedAgreement, *, now: datetime) -> LocalAgreement:
        """Keep (or update with the countersignature) this node's copy of ``signed``."""
        agreement = signed.verify_owner()
        role = agreement.party(self.node_name)
        partner = agreement.recipient.name if role == "owner" else agreement.owner.name
        values = {
            "role": role,
            "partner": partner,
            "canonical": signed.canonical,
            "owner_signature": signed.owner_signature,
            "recipient_signature": signed.recipient_signature,
        }
        with self.engine.begin() as connection:
            existing = connection.execute(
                select(_agreements.c.canonical).where(
                    _agreements.c.agreement_id == agreement.agreement_id
                )
            ).scalar_one_or_none()
            if existing is None:
                connection.execute(
                    insert(_agreements).values(
                        agreement_id=agreement.agreement_id,
                        rotation=0,
                        received_at=now.astimezone(UTC),
                        **values,
                    )
                )
            elif bytes(existing) == signed.canonical:
                if signed.recipient_signature:
                    connection.execute(
                        update(_agreements)
                        .where(_agreements.c.agreement_id == agreement.agreement_id)
                        .values(recipient_signature=signed.recipient_signature)
                    )
            else:
                raise AgreementUnknown(
                    f"agreement {agreement.agreement_id} is already held with other terms"
                )
        return self.get(agreement.agreement_id)

    def get(self, agreement_id: str) -> LocalAgreement:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_agreements).where(_agreements.c.agreement_id == agreement_id)
            ).first()
        if row is None:
            raise AgreementUnknown(f"this node holds no agreement {agreement_id}")
        return _local(row)

    def all(self) -> list[LocalAgreement]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(_agreements).order_by(_agreements.c.received_at))
            return [_local(row) for row in rows]

    def revoke(self, agreement_id: str, *, now: datetime) -> bool:
        """Mark this node's copy revoked; True if this call revoked it (False: already was).

        Revocation is final: the node refuses every later flow under the agreement,
        whatever the broker says.
        """
        self.get(agreement_id)  # AgreementUnknown if there is no copy
        with self.engine.begin() as connection:
            result = connection.execute(
                update(_agreements)
                .where(
                    _agreements.c.agreement_id == agreement_id, _agreements.c.revoked_at.is_(None)
                )
                .values(revoked_at=now.astimezone(UTC))
            )
        return bool(result.rowcount)

    def rotate(self, agreement_id: str) -> int:
        """Rotate this node's blinding key early (new tokens from now on)."""
        with self.engine.begin() as connection:
            connection.execute(
                update(_agreements)
                .where(_agreements.c.agreement_id == agreement_id)
                .values(rotation=_agreements.c.rotation + 1)
            )
        return self.get(agreement_id).rotation


def _local(row: object) -> LocalAgreement:
    revoked = getattr(row, "revoked_at", None)
    return LocalAgreement(
        signed=SignedAgreement(
            bytes(row.canonical),  # type: ignore[attr-defined]
            bytes(row.owner_signature),  # type: ignore[attr-defined]
            bytes(row.recipient_signature or b""),  # type: ignore[attr-defined]
        ),
        role=row.role,  # type: ignore[attr-defined]
        partner=row.partner,  # type: ignore[attr-defined]
        rotation=int(row.rotation),  # type: ignore[attr-defined]
        revoked_at=None
        if revoked is None
        else (revoked.replace(tzinfo=UTC) if revoked.utcoffset() is None else revoked),
    )
