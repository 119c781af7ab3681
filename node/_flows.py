"""A node's part in a flow: its consented set, blinded; the partner's set, re-blinded.

Every step checks the node's own copy of the agreement and its own consent state at the
moment of the step, writes what it blinded to the node's audit log, and keeps handles
and results on the node (docs/matching.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine, insert, select, update

from consent import Ledger, NewEntry
from consent.agreements import Agreement, OutputMode, SignedAgreement
from consent.errors import AgreementInactive, InvalidAgreement
from kernel.crypto import blinding_secret, canonical_json
from kernel.errors import InvalidPoint
from kernel.telemetry import tracer
from node._agreements import AgreementStore, LocalAgreement
from node._pool import BlindingPool
from node._tables import BlindUsageRow, CustomerRow, FlowRow, IdentifierRow, MatchRow
from node.blinding import (
    BlindedSet,
    EpochCache,
    KeyScope,
    dummy_points,
    shuffle_pairs,
    shuffled_set,
    size_bucket,
)
from node.errors import FlowRefused

__all__ = ["FlowContext", "FlowEngine", "ReblindResult"]

_customers = CustomerRow.__table__  # type: ignore[attr-defined]
_identifiers = IdentifierRow.__table__  # type: ignore[attr-defined]
_usage = BlindUsageRow.__table__  # type: ignore[attr-defined]
_flows = FlowRow.__table__  # type: ignore[attr-defined]
_matches = MatchRow.__table__  # type: ignore[attr-defined]

FLOW_KIND: Final = "flow"
MAX_START_SKEW: Final = timedelta(minutes=5)
ALL_CUSTOMERS: Final = "all"  # the built-in segment: every customer of the store
_HANDLE_MAP_TTL: Final = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class FlowContext:
    """What the broker says about the flow a call belongs to (checked, never trusted)."""

    flow_id: str
    agreement_id: str
    role: str  # the called node's role: owner | recipient
    owner_segment_id: str
    recipient_segment_id: str
    started_at: datetime


@dataclass(frozen=True, slots=True)
class ReblindResult:
    tokens: list[bytes]
    handles: list[bytes]  # empty when stripped


@dataclass(slots=True)
class _HandleMap:
    owners: dict[bytes, int | None]
    created: datetime


class FlowEngine:
    """The node's flow steps; thread-safe (the gRPC server calls it from many threads)."""

    def __init__(
        self,
        engine: Engine,
        *,
        node_name: str,
        master_secret: bytes,
        ledger: Ledger,
        pool: BlindingPool,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        segment_members: Callable[[str], set[int] | None] | None = None,
        fetch_agreement: Callable[[str], SignedAgreement | None] | None = None,
    ) -> None:
        self.engine = engine
        self.node_name = node_name
        self.agreements = AgreementStore(engine, node_name=node_name)
        self._master = master_secret
        self._ledger = ledger
        self._pool = pool
        self._now = now
        self._segment_members = segment_members or (lambda segment: None)
        # Where a proposed copy gets its countersignature (the broker, in a server).
        self._fetch_agreement = fetch_agreement or (lambda agreement_id: None)
        self._cache = EpochCache()
        self._dummies: dict[KeyScope, list[bytes]] = {}
        self._handle_maps: dict[str, _HandleMap] = {}
        self._lock = threading.Lock()  # guards caches, usage counts and handle maps

    # --- checks -------------------------------------------------------------------------

    def _agreement(self, flow: FlowContext, now: datetime) -> tuple[Agreement, LocalAgreement]:
        try:
            local = self.agreements.get(flow.agreement_id)
            if not local.signed.recipient_signature:
                # The owner proposed; the recipient countersigned at the broker. Take the
                # countersigned copy only if both signatures verify over our own bytes.
                fetched = self._fetch_agreement(flow.agreement_id)
                if fetched is not None and fetched.canonical == local.signed.canonical:
                    fetched.verify()
                    local = self.agreements.save(fetched, now=now)
            agreement = local.signed.check_active(now=now, revoked=local.revoked_at is not None)
        except (AgreementInactive, InvalidAgreement) as exc:
            raise FlowRefused("AGREEMENT_INACTIVE", str(exc)) from exc
        if agreement.party(self.node_name) != flow.role:
            raise FlowRefused(
                "AGREEMENT_INACTIVE", f"this node is not the {flow.role} of the agreement"
            )
        if flow.owner_segment_id not in agreement.segment_ids:
            raise FlowRefused(
                "AGREEMENT_INACTIVE", "the flow names a segment the agreement does not cover"
            )
        if abs(flow.started_at - now) > MAX_START_SKEW:
            raise FlowRefused(
                "AGREEMENT_INACTIVE", "the flow's start time is too far from this node's clock"
            )
        return agreement, local

    def _scope(self, agreement: Agreement, local: LocalAgreement, flow: FlowContext, now: datetime
               ) -> KeyScope:  # fmt: skip
        return KeyScope(
            agreement.agreement_id, flow.owner_segment_id, agreement.epoch_at(now), local.rotation
        )

    # --- own set --------------------------------------------------------------------------

    def consented_customers(
        self, agreement: Agreement, flow: FlowContext, now: datetime
    ) -> dict[int, list[bytes]]:
        """Customer id → hash-to-curve points of the customers allowed into this flow."""
        if flow.role == "owner":
            purpose, partner = agreement.purpose, agreement.recipient.name
            segment = flow.owner_segment_id
        else:
            purpose = (
                "analytics.overlap"
                if agreement.output_mode is OutputMode.OVERLAP
                else agreement.purpose
            )
            partner, segment = agreement.owner.name, flow.recipient_segment_id or ALL_CUSTOMERS
        consented = self._ledger.valid_subjects(
            purpose=purpose,
            recipient=partner,
            now=now,
            need_channel=agreement.output_mode is OutputMode.RELEASE and flow.role == "owner",
        )
        members = None if segment == ALL_CUSTOMERS else self._segment_members(segment)
        points: dict[int, list[bytes]] = {}
        query = (
            select(_customers.c.id, _customers.c.external_id, _identifiers.c.point)
            .join(_identifiers, _identifiers.c.customer_id == _customers.c.id)
            .where(_identifiers.c.kind.in_(list(agreement.identifier_kinds)))
        )
        with self.engine.connect() as connection:
            rows = connection.execution_options(stream_results=True, yield_per=50_000).execute(
                query
            )
            for customer_id, external_id, point in rows:
                if external_id in consented and (members is None or customer_id in members):
                    points.setdefault(customer_id, []).append(bytes(point))
        return points

    def blind_own_set(self, flow: FlowContext) -> BlindedSet:
        """This node's consented set for ``flow``: blinded, padded, shuffled, with handles."""
        now = self._now()
        agreement, local = self._agreement(flow, now)
        with tracer().start_as_current_span("node.blind_own_set") as span:
            span.set_attribute("accord.flow_id", flow.flow_id)
            span.set_attribute("accord.agreement_id", flow.agreement_id)
            customers = self.consented_customers(agreement, flow, now)
            if len(customers) < agreement.min_audience_k:
                self._audit(flow, "refused", reason="BELOW_MIN_AUDIENCE")
                raise FlowRefused(
                    "BELOW_MIN_AUDIENCE",
                    f"the consented set is below the agreement's minimum audience "
                    f"(k = {agreement.min_audience_k})",
                )
            real = [(cid, point) for cid, points in customers.items() for point in points]
            padded_size = size_bucket(len(real))
            if padded_size > agreement.max_set_size:
                self._audit(flow, "refused", reason="SET_TOO_LARGE", tokens=padded_size)
                raise FlowRefused(
                    "SET_TOO_LARGE",
                    f"the padded set ({padded_size} tokens) exceeds the agreement's maximum "
                    f"({agreement.max_set_size})",
                )
            scope = self._scope(agreement, local, flow, now)
            dummies = self._dummy_points(scope, padded_size - len(real))
            inputs = [point for _, point in real] + dummies
            blinded, new = self._blind(scope, agreement, inputs)
            result = shuffled_set(
                [(cid, token) for (cid, _), token in zip(real, blinded, strict=False)],
                blinded[len(real) :],
            )
            span.set_attribute("accord.set_size", result.size)
            span.set_attribute("accord.newly_blinded", new)
        if flow.role == "recipient":
            with self._lock:
                self._expire_handle_maps(now)
                self._handle_maps[flow.flow_id] = _HandleMap(result.owners, now)
            self._record_flow(flow, "running", now)
        self._audit(
            flow,
            "blinded",
            customers=len(customers),
            tokens=len(real),
            padded=result.size,
            newly_blinded=new,
            epoch=scope.epoch,
        )
        return result

    def _dummy_points(self, scope: KeyScope, count: int) -> list[bytes]:
        with self._lock:
            have = self._dummies.setdefault(scope, [])
            for stale in [s for s in self._dummies if s.agreement_id == scope.agreement_id]:
                if stale != scope:
                    del self._dummies[stale]
            missing = count - len(have)
        if missing > 0:
            more = dummy_points(self._master, scope, len(have), missing)
            with self._lock:
                have = self._dummies.setdefault(scope, [])
                if len(have) < count:
                    have.extend(more[len(have) - (count - missing) :])
        return list(self._dummies[scope][:count])

    def _blind(
        self, scope: KeyScope, agreement: Agreement, inputs: Sequence[bytes]
    ) -> tuple[list[bytes], int]:
        """``[k]·x`` for every input, from the epoch cache where possible; counts the cap."""
        with self._lock:
            cached = self._cache.map_for(scope)
            missing = list(dict.fromkeys(x for x in inputs if x not in cached))
            self._charge(agreement, scope, len(missing))
        if missing:
            secret = blinding_secret(
                self._master, scope=scope.hkdf_scope, segment=scope.segment_id, epoch=scope.epoch
            )
            try:
                fresh = self._pool.blind(secret, missing)
            except InvalidPoint as exc:
                raise FlowRefused("PEER_REJECTED", f"a received token is invalid: {exc}") from exc
            with self._lock:
                cached = self._cache.map_for(scope)
                cached.update(zip(missing, fresh, strict=True))
        with self._lock:
            cached = self._cache.map_for(scope)
            return [cached[x] for x in inputs], len(missing)

    def _charge(self, agreement: Agreement, scope: KeyScope, count: int) -> None:
        """Count ``count`` newly blinded identifiers against the epoch cap, or refuse."""
        if count == 0:
            return
        key = {"agreement_id": scope.agreement_id, "epoch": scope.epoch, "rotation": scope.rotation}
        with self.engine.begin() as connection:
            used = connection.execute(
                select(_usage.c.identifiers).where(
                    *(getattr(_usage.c, k) == v for k, v in key.items())
                )
            ).scalar_one_or_none()
            total = (used or 0) + count
            if total > agreement.epoch_identifier_cap:
                raise FlowRefused(
                    "SET_TOO_LARGE",
                    f"blinding {count} more identifiers would pass the agreement's cap of "
                    f"{agreement.epoch_identifier_cap} per epoch",
                )
            if used is None:
                connection.execute(insert(_usage).values(identifiers=total, **key))
            else:
                connection.execute(
                    update(_usage)
                    .where(*(getattr(_usage.c, k) == v for k, v in key.items()))
                    .values(identifiers=total)
                )

    # --- the partner's set ----------------------------------------------------------------

    def reblind(
        self, flow: FlowContext, tokens: list[bytes], handles: list[bytes]
    ) -> ReblindResult:
        """The partner's blinded set, blinded again with this node's key."""
        now = self._now()
        agreement, local = self._agreement(flow, now)
        if len(tokens) > agreement.max_set_size:
            raise FlowRefused(
                "SET_TOO_LARGE",
                f"the partner's set ({len(tokens)} tokens) exceeds the agreement's maximum",
            )
        if handles and len(handles) != len(tokens):
            raise FlowRefused("PEER_REJECTED", "the partner's set has handles for some tokens only")
        scope = self._scope(agreement, local, flow, now)
        blinded, new = self._blind(scope, agreement, tokens)
        # The partner may map results back to its rows only if it is the recipient of a
        # match agreement; otherwise nobody may, so order and handles go.
        entitled = agreement.output_mode is OutputMode.MATCH and flow.role == "owner"
        self._audit(flow, "reblinded", tokens=len(tokens), newly_blinded=new, epoch=scope.epoch)
        if entitled:
            return ReblindResult(blinded, list(handles))
        return ReblindResult(shuffle_pairs(blinded), [])

    # --- results --------------------------------------------------------------------------

    def deliver_match(self, flow: FlowContext, matched_handles: Sequence[bytes]) -> int:
        """Record which own customers matched; return how many (customers, not tokens)."""
        now = self._now()
        agreement, _ = self._agreement(flow, now)
        if flow.role != "recipient" or agreement.output_mode is not OutputMode.MATCH:
            raise FlowRefused("PEER_REJECTED", "match results go to a match agreement's recipient")
        with self._lock:
            handle_map = self._handle_maps.pop(flow.flow_id, None)
        if handle_map is None:
            raise FlowRefused("PEER_REJECTED", "no set of this node belongs to that flow")
        customers: set[int] = set()
        for handle in matched_handles:
            if handle not in handle_map.owners:
                raise FlowRefused("PEER_REJECTED", "a matched handle is not one this node sent")
            owner = handle_map.owners[handle]
            if owner is not None:  # a padding dummy never matches, but never count one
                customers.add(owner)
        delete_after = agreement.delete_after(now)
        with self.engine.begin() as connection:
            connection.execute(
                update(_flows)
                .where(_flows.c.flow_id == flow.flow_id)
                .values(
                    state="succeeded",
                    matched_customers=len(customers),
                    delete_after=delete_after,
                    updated_at=now,
                )
            )
            if customers:
                connection.execute(
                    insert(_matches),
                    [{"flow_id": flow.flow_id, "customer_id": c} for c in sorted(customers)],
                )
        self._audit(flow, "delivered", matched_customers=len(customers))
        return len(customers)

    def forget(self, flow_id: str) -> None:
        with self._lock:
            self._handle_maps.pop(flow_id, None)

    # --- bookkeeping ----------------------------------------------------------------------

    def _record_flow(self, flow: FlowContext, state: str, now: datetime) -> None:
        with self.engine.begin() as connection:
            exists = connection.execute(
                select(_flows.c.flow_id).where(_flows.c.flow_id == flow.flow_id)
            ).first()
            if exists is None:
                connection.execute(
                    insert(_flows).values(
                        flow_id=flow.flow_id,
                        agreement_id=flow.agreement_id,
                        role=flow.role,
                        state=state,
                        created_at=now,
                        updated_at=now,
                    )
                )

    def _expire_handle_maps(self, now: datetime) -> None:
        for flow_id in [
            f for f, m in self._handle_maps.items() if now - m.created > _HANDLE_MAP_TTL
        ]:
            del self._handle_maps[flow_id]

    def _audit(self, flow: FlowContext, step: str, **counts: Any) -> None:
        """One audit-log entry per step: ids and counts, never tokens or identifiers."""
        record = {
            "schema": "accord.flow-step/1",
            "flow_id": flow.flow_id,
            "agreement_id": flow.agreement_id,
            "role": flow.role,
            "step": step,
            **counts,
        }
        self._ledger.append([NewEntry(FLOW_KIND, canonical_json(record))])
