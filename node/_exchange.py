"""A node's part in overlap and release flows, revocations and retention.

Matching itself is ``node._flows``; this module adds what the other output modes need
(docs/audiences.md): the owner's noised, budgeted, signed overlap count; the owner's
sealed and signed release batches and the recipient's checked, all-or-nothing receipt;
revocations (the owner's outbox, the recipient's deletion and signed acknowledgement);
and deletion of received data when its retention ends. Every decision is an entry in
the node's audit log.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Engine, delete, insert, select, update

from consent import Ledger
from consent.agreements import Agreement, OutputMode
from consent.errors import InvalidAgreement
from consent.records import format_time
from consent.signed import (
    AgreementRevocation,
    OverlapCount,
    ReleaseBatchSeal,
    Revocation,
    RevocationAck,
)
from consent.signed import release_context as context_of
from kernel.crypto import HpkeKeyPair, SigningKey, random_bytes, seal
from kernel.db import insert_rows, lock_rows
from kernel.errors import DecryptionFailed
from node._agreements import AgreementStore
from node._flows import FlowContext, FlowEngine
from node._revocations import RELEASE_ID_SIZE, RevocationOutbox
from node._tables import (
    BudgetRow,
    CustomerRow,
    FlowRow,
    IdentifierRow,
    InterestRow,
    MatchRow,
    ReceivedRow,
    ReleaseRow,
    RevocationRow,
)
from node.errors import BudgetExhausted, FlowRefused
from node.noise import PrivacyBudget, released_count

__all__ = ["Exchange", "ReleasedRecordData", "SealedBatch", "purge_expired"]

_budgets = BudgetRow.__table__  # type: ignore[attr-defined]
_customers = CustomerRow.__table__  # type: ignore[attr-defined]
_identifiers = IdentifierRow.__table__  # type: ignore[attr-defined]
_interests = InterestRow.__table__  # type: ignore[attr-defined]
_flows = FlowRow.__table__  # type: ignore[attr-defined]
_matches = MatchRow.__table__  # type: ignore[attr-defined]
_received = ReceivedRow.__table__  # type: ignore[attr-defined]
_releases = ReleaseRow.__table__  # type: ignore[attr-defined]
_revocations = RevocationRow.__table__  # type: ignore[attr-defined]

RELEASE_BATCH: Final = 500  # records per sealed batch
HPKE_ENC_SIZE: Final = 32  # DHKEM(X25519) encapsulated key
_SCALAR_FIELDS: Final = ("first_name", "last_name", "country", "age_band", "region",
                         "loyalty_tier")  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReleasedRecordData:
    """One released customer, as it travels inside a sealed batch."""

    release_id: bytes
    fields: dict[str, list[str]]  # only fields the agreement names
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SealedBatch:
    batch_index: int
    final: bool
    enc: bytes
    ciphertext: bytes
    owner_signature: bytes


Encode = Callable[[list[ReleasedRecordData], datetime], bytes]
Decode = Callable[[bytes], tuple[list[ReleasedRecordData], datetime | None]]


class Exchange:
    """Overlap, release, revocation and retention steps of one node."""

    def __init__(
        self,
        flows: FlowEngine,
        *,
        ledger: Ledger,
        signing_key: SigningKey,
        hpke_key: HpkeKeyPair,
        encode: Encode,
        decode: Decode,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.flows = flows
        self.engine: Engine = flows.engine
        self.agreements: AgreementStore = flows.agreements
        self._ledger = ledger
        self._key = signing_key
        self._hpke = hpke_key
        self._encode = encode
        self._decode = decode
        self._now = now
        self._budget_lock = threading.Lock()
        self.outbox = RevocationOutbox(self.engine, node_name=flows.node_name, ledger=ledger,
                                       signing_key=signing_key, now=now)  # fmt: skip

    # --- overlap --------------------------------------------------------------------------

    def noise_overlap(self, flow: FlowContext, intersection_size: int) -> OverlapCount:
        """The owner's count for the recipient: budget charged, noised, suppressed below k,
        signed. The exact size is known here (and only here); it is never logged."""
        now = self._now()
        agreement, _ = self.flows.check_flow(flow, now)
        if flow.role != "owner" or agreement.output_mode is not OutputMode.OVERLAP:
            raise FlowRefused("PEER_REJECTED", "counts are noised by an overlap agreement's owner")
        epsilon = Decimal(agreement.epsilon_per_count or "0")
        try:
            budget = self._spend(agreement, epsilon)
        except BudgetExhausted as exhausted:  # logged after the budget's transaction
            self.flows.audit(flow, "refused", reason="BUDGET_EXHAUSTED")
            raise FlowRefused("BUDGET_EXHAUSTED", str(exhausted)) from exhausted
        released = released_count(intersection_size, epsilon=epsilon, k=agreement.min_audience_k)
        count = OverlapCount(
            agreement_id=agreement.agreement_id,
            flow_id=flow.flow_id,
            suppressed=released.suppressed,
            noised_count=released.value,
            epsilon_spent=str(epsilon),
            epsilon_remaining=str(budget.remaining),
        ).signed(self._key)
        self._finish(flow, now, overlap_count=released.value,
                     overlap_suppressed=released.suppressed)  # fmt: skip
        self.flows.audit(flow, "count-released", noised_count=released.value,
                         suppressed=released.suppressed, epsilon_spent=str(epsilon),
                         epsilon_remaining=str(budget.remaining))  # fmt: skip
        return count

    def _spend(self, agreement: Agreement, epsilon: Decimal) -> PrivacyBudget:
        """Charge ``epsilon`` to the agreement's lifetime budget; ``BudgetExhausted`` (and
        nothing spent) if it would go past the total."""
        # Locked before it is read: two counts of one agreement never both spend from the
        # same balance (kernel.db.lock_rows says why the lock comes first).
        with self._budget_lock, self.engine.begin() as connection:
            this_agreement = _budgets.c.agreement_id == agreement.agreement_id
            lock_rows(connection, _budgets.c.spent, this_agreement)
            spent = connection.execute(
                select(_budgets.c.spent).where(this_agreement)
            ).scalar_one_or_none()
            budget = PrivacyBudget(Decimal(agreement.epsilon_total or "0"), Decimal(spent or "0"))
            budget = budget.spend(epsilon)  # raises before anything is written
            values = {"spent": str(budget.spent)}
            if spent is None:
                connection.execute(
                    insert(_budgets).values(agreement_id=agreement.agreement_id, **values)
                )
            else:
                connection.execute(update(_budgets).where(this_agreement).values(values))
        return budget

    def receive_overlap(self, flow: FlowContext, count: OverlapCount) -> None:
        now = self._now()
        agreement, _ = self.flows.check_flow(flow, now)
        if flow.role != "recipient" or agreement.output_mode is not OutputMode.OVERLAP:
            raise FlowRefused("PEER_REJECTED", "this node expects no overlap count here")
        if (count.agreement_id, count.flow_id) != (agreement.agreement_id, flow.flow_id):
            raise FlowRefused("PEER_REJECTED", "the count belongs to another flow")
        try:
            count.verify(agreement.owner.signing_public_key)
        except InvalidAgreement as exc:
            raise FlowRefused("PEER_REJECTED", str(exc)) from exc
        self._finish(flow, now, state="succeeded", overlap_count=count.noised_count,
                     overlap_suppressed=count.suppressed)  # fmt: skip
        self.flows.audit(flow, "count-received", noised_count=count.noised_count,
                         suppressed=count.suppressed)  # fmt: skip

    # --- release --------------------------------------------------------------------------

    def release(self, flow: FlowContext) -> Iterator[SealedBatch]:
        """The owner's release: consented segment customers' agreed fields, sealed to the
        recipient's key from the signed agreement, signed batch by batch."""
        now = self._now()
        agreement, _ = self.flows.check_flow(flow, now)
        if flow.role != "owner" or agreement.output_mode is not OutputMode.RELEASE:
            raise FlowRefused("PEER_REJECTED", "releases come from a release agreement's owner")
        consented = self._ledger.valid_subjects(
            purpose=agreement.purpose,
            recipient=agreement.recipient.name,
            now=now,
            need_channel=True,
        )
        records, customers = self._records(agreement, flow.owner_segment_id, consented)
        if len(records) < agreement.min_audience_k:
            self.flows.audit(flow, "refused", reason="BELOW_MIN_AUDIENCE")
            raise FlowRefused(
                "BELOW_MIN_AUDIENCE",
                f"the consented audience is below the agreement's minimum (k = "
                f"{agreement.min_audience_k})",
            )
        if len(records) > agreement.max_set_size:
            self.flows.audit(flow, "refused", reason="SET_TOO_LARGE", records=len(records))
            raise FlowRefused("SET_TOO_LARGE", "the audience exceeds the agreement's maximum")
        with self.engine.begin() as connection:
            insert_rows(
                connection,
                _releases.name,
                ("release_id", "agreement_id", "flow_id", "customer_id", "released_at"),
                [
                    (r.release_id, agreement.agreement_id, flow.flow_id, c, now)
                    for r, c in zip(records, customers, strict=True)
                ],  # fmt: skip
            )
        delete_after = agreement.delete_after(now)
        self._finish(flow, now, records=len(records), delete_after=delete_after)
        self.flows.audit(flow, "released", records=len(records),
                         fields=list(agreement.released_fields))  # fmt: skip
        parts = max(1, -(-len(records) // RELEASE_BATCH))
        for index in range(parts):
            chunk = records[index * RELEASE_BATCH : (index + 1) * RELEASE_BATCH]
            final = index == parts - 1
            sealed = seal(
                self._encode(chunk, delete_after),
                recipient_public_key=agreement.recipient.hpke_public_key,
                context=context_of(
                    agreement.agreement_id, flow.flow_id, agreement.recipient.name, index, final
                ),  # fmt: skip
            )
            enc, ciphertext = sealed[:HPKE_ENC_SIZE], sealed[HPKE_ENC_SIZE:]
            signature = ReleaseBatchSeal(
                agreement.agreement_id, flow.flow_id, index, final, enc, ciphertext
            ).sign(self._key)
            yield SealedBatch(index, final, enc, ciphertext, signature)

    def _records(
        self, agreement: Agreement, segment: str, consented: dict[str, Any]
    ) -> tuple[list[ReleasedRecordData], list[int]]:
        members = self.flows.segment_members(segment)
        wanted = set(agreement.released_fields)
        scalar = [f for f in _SCALAR_FIELDS if f in wanted]
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(
                    _customers.c.id,
                    _customers.c.external_id,
                    *(getattr(_customers.c, f) for f in scalar),
                )  # fmt: skip
            ).all()
            chosen = [
                row for row in rows
                if row.external_id in consented and (members is None or row.id in members)
            ]  # fmt: skip
            ids = [row.id for row in chosen]
            multi: dict[int, dict[str, list[str]]] = {i: {} for i in ids}
            kinds = [k for k in ("email", "phone") if k in wanted]
            if kinds:
                for customer_id, kind, value in connection.execute(
                    select(
                        _identifiers.c.customer_id, _identifiers.c.kind, _identifiers.c.value
                    ).where(_identifiers.c.kind.in_(kinds))
                ):
                    if customer_id in multi:
                        multi[customer_id].setdefault(kind, []).append(value)
            if "interests" in wanted:
                for customer_id, interest in connection.execute(
                    select(_interests.c.customer_id, _interests.c.interest)
                ):
                    if customer_id in multi:
                        multi[customer_id].setdefault("interests", []).append(interest)
        records = []
        for row in chosen:
            fields: dict[str, list[str]] = {
                f: [getattr(row, f)] for f in scalar if getattr(row, f) is not None
            }
            for name, values in multi[row.id].items():
                fields[name] = sorted(values)
            channels = tuple(sorted(c.value for c in consented[row.external_id]))
            records.append(ReleasedRecordData(random_bytes(RELEASE_ID_SIZE), fields, channels))
        return records, ids

    def receive_release(self, flow: FlowContext, batches: Iterable[SealedBatch]) -> int:
        """Check every batch (signature, key, context, fields) and keep all or nothing."""
        now = self._now()
        agreement, _ = self.flows.check_flow(flow, now)
        if flow.role != "recipient" or agreement.output_mode is not OutputMode.RELEASE:
            raise FlowRefused("PEER_REJECTED", "this node expects no release here")
        allowed = set(agreement.released_fields)
        records: list[ReleasedRecordData] = []
        latest: datetime | None = None
        expected = 0
        final = False
        for batch in batches:
            if final or batch.batch_index != expected:
                raise FlowRefused("PEER_REJECTED", "release batches arrived out of order")
            try:
                ReleaseBatchSeal(
                    agreement.agreement_id, flow.flow_id, batch.batch_index, batch.final,
                    batch.enc, batch.ciphertext,
                ).verify(agreement.owner.signing_public_key, batch.owner_signature)  # fmt: skip
                plaintext = self._hpke.open(
                    batch.enc + batch.ciphertext,
                    context=context_of(
                        agreement.agreement_id,
                        flow.flow_id,
                        agreement.recipient.name,
                        batch.batch_index,
                        batch.final,
                    ),  # fmt: skip
                )
            except (InvalidAgreement, DecryptionFailed) as exc:
                self.flows.audit(flow, "refused", reason="PEER_REJECTED")
                raise FlowRefused(
                    "PEER_REJECTED", f"a release batch is not genuine: {exc}"
                ) from exc
            chunk, delete_after = self._decode(plaintext)
            for record in chunk:
                extra = set(record.fields) - allowed
                if extra:
                    self.flows.audit(flow, "refused", reason="PEER_REJECTED")
                    raise FlowRefused(
                        "PEER_REJECTED",
                        f"a released record carries fields the agreement does not name: "
                        f"{', '.join(sorted(extra))}",
                    )
                if not record.channels or len(record.release_id) != RELEASE_ID_SIZE:
                    raise FlowRefused("PEER_REJECTED", "a released record is malformed")
            records.extend(chunk)
            if delete_after is not None:
                latest = delete_after if latest is None else min(latest, delete_after)
            expected += 1
            final = batch.final
        if not final:
            raise FlowRefused("PEER_REJECTED", "the release arrived incomplete")
        if len({r.release_id for r in records}) != len(records):
            raise FlowRefused("PEER_REJECTED", "a release id appears twice")
        ours = agreement.delete_after(now)
        delete_after = ours if latest is None else min(latest, ours)
        with self.engine.begin() as connection:
            insert_rows(
                connection,
                _received.name,
                (
                    "release_id",
                    "agreement_id",
                    "flow_id",
                    "fields",
                    "channels",
                    "received_at",
                    "delete_after",
                ),  # fmt: skip
                [
                    (
                        r.release_id,
                        agreement.agreement_id,
                        flow.flow_id,
                        json.dumps(r.fields, sort_keys=True),
                        ",".join(r.channels),
                        _db_time(self.engine, now),
                        _db_time(self.engine, delete_after),
                    )
                    for r in records
                ],  # fmt: skip
            )
        self._finish(flow, now, state="succeeded", records=len(records), delete_after=delete_after)
        self.flows.audit(flow, "received", records=len(records))
        return len(records)

    # --- revocation -----------------------------------------------------------------------

    def revoke_received(self, revocation: Revocation) -> RevocationAck:
        """The recipient: check the owner's signature, delete, sign the acknowledgement."""
        local = self.agreements.get(revocation.agreement_id)
        agreement = local.signed.agreement
        if (revocation.owner_node, revocation.recipient_node) != (
            agreement.owner.name,
            agreement.recipient.name,
        ) or local.role != "recipient":
            raise FlowRefused("PEER_REJECTED", "the revocation names other parties")
        try:
            revocation.verify(agreement.owner.signing_public_key)
        except InvalidAgreement as exc:
            raise FlowRefused("PEER_REJECTED", str(exc)) from exc
        now = self._now()
        deleted = self._delete_received(
            agreement.agreement_id,
            release_ids=None if revocation.all_releases else list(revocation.release_ids),
        )
        ack = RevocationAck(
            revocation_id=revocation.revocation_id,
            agreement_id=agreement.agreement_id,
            recipient_node=agreement.recipient.name,
            deleted_records=deleted,
            acknowledged_at=now,
        ).signed(self._key)
        self._ledger.append_record(
            "revocation",
            {"schema": "accord.revocation-carried-out/1",
             "revocation_id": revocation.revocation_id, "agreement_id": agreement.agreement_id,
             "owner": agreement.owner.name, "reason": revocation.reason,
             "deleted_records": ack.deleted_records},
        )  # fmt: skip
        return ack

    def agreement_revoked(self, revocation: AgreementRevocation) -> bool:
        """A party ended the agreement (this node or, through the broker, the partner).

        The revoking party's signature is checked against its key in the signed
        agreement. This node's copy is marked revoked, so every later flow is refused
        here whatever the broker says. The recipient deletes what it received under the
        agreement (records and match results); the owner issues an ``all_releases``
        revocation when it released anything, so the recipient's signed acknowledgement
        lands in the owner's log. True if this call revoked the local copy.
        """
        local = self.agreements.get(revocation.agreement_id)
        agreement = local.signed.agreement
        parties = {
            agreement.owner.name: agreement.owner,
            agreement.recipient.name: agreement.recipient,
        }
        party = parties.get(revocation.node_name)
        if party is None:
            raise FlowRefused("PEER_REJECTED", "the revocation is by no party of the agreement")
        try:
            revocation.verify(party.signing_public_key)
        except InvalidAgreement as exc:
            raise FlowRefused("PEER_REJECTED", str(exc)) from exc
        now = self._now()
        if not self.agreements.revoke(agreement.agreement_id, now=now):
            return False
        deleted = 0
        if local.role == "recipient":
            deleted = self._delete_received(agreement.agreement_id, release_ids=None)
        self._ledger.append_record(
            "agreement",
            {"schema": "accord.agreement-revoked/1", "agreement_id": agreement.agreement_id,
             "by": revocation.node_name, "role": local.role,
             "revoked_at": format_time(revocation.revoked_at), "deleted_records": deleted},
        )  # fmt: skip
        if local.role == "owner":
            self.outbox.revoke_all_releases(agreement, reason="agreement_revoked")
        return True

    def _delete_received(self, agreement_id: str, *, release_ids: list[bytes] | None) -> int:
        """Delete received records (all of the agreement's, or those named) and, for the
        whole agreement, its match results too."""
        with self.engine.begin() as connection:
            if release_ids is not None:
                return int(
                    connection.execute(
                        delete(_received).where(
                            _received.c.agreement_id == agreement_id,
                            _received.c.release_id.in_(release_ids),
                        )
                    ).rowcount
                    or 0
                )
            deleted = (
                connection.execute(
                    delete(_received).where(_received.c.agreement_id == agreement_id)
                ).rowcount
                or 0
            )
            flows = [
                f for (f,) in connection.execute(
                    select(_flows.c.flow_id).where(_flows.c.agreement_id == agreement_id)
                )
            ]  # fmt: skip
            if flows:
                deleted += (
                    connection.execute(
                        delete(_matches).where(_matches.c.flow_id.in_(flows))
                    ).rowcount
                    or 0
                )
            return int(deleted)

    # --- retention ------------------------------------------------------------------------

    def purge(self) -> tuple[int, int]:
        """Delete received records and match results whose retention has ended."""
        return purge_expired(self.engine, self._ledger, now=self._now())

    # --- bookkeeping ----------------------------------------------------------------------

    def _finish(self, flow: FlowContext, now: datetime, **values: Any) -> None:
        self.flows.record_flow(flow, "running", now)
        with self.engine.begin() as connection:
            connection.execute(
                update(_flows).where(_flows.c.flow_id == flow.flow_id)
                .values(updated_at=now, **values)
            )  # fmt: skip


def purge_expired(engine: Engine, ledger: Ledger, *, now: datetime) -> tuple[int, int]:
    """Delete received records and match results whose retention ended by ``now``; log how
    many (counts only). Returns (records, match results)."""
    with engine.begin() as connection:
        records = connection.execute(
            delete(_received).where(_received.c.delete_after <= _db_time(engine, now))
        ).rowcount
        expired = [
            f for (f,) in connection.execute(
                select(_flows.c.flow_id).where(
                    _flows.c.delete_after.is_not(None), _flows.c.delete_after <= now,
                    _flows.c.matched_customers.is_not(None),
                )
            )
        ]  # fmt: skip
        matches = 0
        if expired:
            matches = connection.execute(
                delete(_matches).where(_matches.c.flow_id.in_(expired))
            ).rowcount
            connection.execute(
                update(_flows).where(_flows.c.flow_id.in_(expired))
                .values(matched_customers=0)
            )  # fmt: skip
    if records or matches:
        ledger.append_record(
            "retention",
            {"schema": "accord.retention-deleted/1", "records": int(records or 0),
             "match_results": int(matches or 0)},
        )  # fmt: skip
    return int(records or 0), int(matches or 0)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment.astimezone(UTC)


def _db_time(engine: Engine, moment: datetime) -> Any:
    """A timestamp as raw SQL binds it (SQLite: SQLAlchemy's UTC text)."""
    processor = _received.c.delete_after.type.dialect_impl(engine.dialect).bind_processor(
        engine.dialect
    )
    value = moment.astimezone(UTC)
    return processor(value) if processor else value
