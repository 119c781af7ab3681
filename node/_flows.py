"""A node's part in a flow: its consented set, blinded; the partner's set, re-blinded.

Every step checks the node's own copy of the agreement and its own consent state at the
moment of the step, writes what it blinded to the node's audit log, and keeps handles
and results on the node (docs/matching.md).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain, compress, repeat
from operator import is_, itemgetter, not_
from typing import Any, Final, NamedTuple, TypeVar, cast

from sqlalchemy import Connection, Engine, func, insert, select, update

from consent import ConsentPosition, Ledger, NewEntry
from consent.agreements import Agreement, OutputMode, SignedAgreement
from consent.errors import AgreementInactive, InvalidAgreement
from kernel.crypto import blinding_secret, canonical_json
from kernel.db import foreign_keys_trusted, insert_rows, lock_rows
from kernel.errors import InvalidPoint, UnknownHandle
from kernel.telemetry import tracer
from node._agreements import AgreementStore, LocalAgreement
from node._pool import BlindingPool
from node._store import StoreGeneration, store_generation
from node._tables import BlindUsageRow, CustomerRow, FlowRow, IdentifierRow, MatchRow
from node.blinding import (
    EpochCache,
    HandleOwners,
    KeyScope,
    dummy_points,
    per_customer_handles,
    regrouped,
    shuffled_set,
    size_bucket,
)
from node.errors import FlowRefused, SegmentUnknown

__all__ = ["FlowContext", "FlowEngine", "OwnSet"]

_customers = CustomerRow.__table__  # type: ignore[attr-defined]
_identifiers = IdentifierRow.__table__  # type: ignore[attr-defined]
_usage = BlindUsageRow.__table__  # type: ignore[attr-defined]
_flows = FlowRow.__table__  # type: ignore[attr-defined]
_matches = MatchRow.__table__  # type: ignore[attr-defined]

FLOW_KIND: Final = "flow"
MAX_START_SKEW: Final = timedelta(minutes=5)
ALL_CUSTOMERS: Final = "all"  # the built-in segment: every customer of the store
_HANDLE_MAP_TTL: Final = timedelta(hours=1)
_CONSENTED_CACHED: Final = 4  # consented sets kept (each costs ~150 bytes per identifier)
# Past this share of changed customers (and this many), re-reading the whole set is cheaper.
_PATCH_SHARE: Final = 0.2
_PATCH_ALWAYS: Final = 1_000
_ID_CHUNK: Final = 500  # ids per IN (...)
STREAM_BATCH: Final = 8192  # tokens per streamed batch
POOL_TASK: Final = 2048  # tokens per task of the blinding pool
PIPELINE_DEPTH: Final = 4  # batches whose blinding is in flight at once


@dataclass(frozen=True, slots=True)
class FlowContext:
    """What the broker says about the flow a call belongs to (checked, never trusted)."""

    flow_id: str
    agreement_id: str
    role: str  # the called node's role: owner | recipient
    owner_segment_id: str
    recipient_segment_id: str
    started_at: datetime


@dataclass(slots=True)
class OwnSet:
    """A set on its way out: its size (known first) and its batches (blinded lazily)."""

    size: int
    batches: Iterator[tuple[list[bytes], list[bytes]]]


_Item = TypeVar("_Item")


def _chunks(items: list[_Item], size: int) -> Iterator[list[_Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _holes(looked: list[bytes | None]) -> list[int]:
    """Where ``looked`` has None. By identity, in C: ``None in looked`` would compare
    every token with None, and reading each token's type from a heap of millions of
    scattered objects costs a cache miss per token."""
    return list(compress(range(len(looked)), map(is_, looked, repeat(None))))


def _external_ids(connection: Connection, column: Any, values: Sequence[Any]) -> dict[int, str]:
    """Customer id → external id of the customers whose ``column`` is among ``values``."""
    found: dict[int, str] = {}
    for start in range(0, len(values), _ID_CHUNK):
        for customer_id, external_id in connection.execute(
            select(_customers.c.id, _customers.c.external_id).where(
                column.in_(values[start : start + _ID_CHUNK])
            )
        ):
            found[customer_id] = external_id
    return found


def _with_handles(
    tokens: Iterator[list[bytes]], handles: list[bytes]
) -> Iterator[tuple[list[bytes], list[bytes]]]:
    offset = 0
    for chunk in tokens:
        yield chunk, handles[offset : offset + len(chunk)]
        offset += len(chunk)


class _ConsentedKey(NamedTuple):
    purpose: str
    partner: str
    need_channel: bool
    kinds: tuple[str, ...]


class _Position(NamedTuple):
    """Where the store and the consent events stood when a consented set was read."""

    store: StoreGeneration
    consent: ConsentPosition

    def same_answer(self, other: _Position) -> bool:
        """No customer, identifier or consent event changed between the two (flows append
        audit entries too, so the log's size alone says nothing)."""
        return (
            self.store.generation == other.store.generation
            and self.consent.version == other.consent.version
        )


@dataclass(frozen=True, slots=True)
class _Consented:
    """A consented set as read at ``read_at``, with the position it was read at."""

    position: _Position
    read_at: datetime
    changes_at: datetime | None  # when time alone could change the answer
    customers: int
    pairs: list[tuple[int, bytes]]  # never mutated: flows shuffle a copy
    # Whether each customer the read saw (with an identifier of the kinds) had valid
    # consent: a customer whose identifiers changed but whose consent events did not
    # keeps its decision, so a patch need not ask the ledger (or the disk) again.
    decisions: dict[int, bool]


@dataclass(slots=True)
class _HandleMap:
    owners: HandleOwners
    created: datetime
    # The store generation read before the set: every customer in it existed then, and
    # a deletion since raises ``deleted_generation`` past it.
    generation: int


def _still_timely(cached: _Consented, now: datetime) -> bool:
    """Time alone has not changed ``cached`` by ``now``: the clock has not gone back before
    it was read, and no consent has expired or come into effect in between."""
    if now < cached.read_at:
        return False
    return cached.changes_at is None or now < cached.changes_at


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
        self._pending_matches: dict[str, list[list[bytes]]] = {}
        # The last few consented sets (whole-store segments): a repeated flow in an epoch
        # skips re-deciding every consent when nothing changed (docs/matching.md).
        self._consented: dict[_ConsentedKey, _Consented] = {}
        self._lock = threading.Lock()  # guards caches and handle maps (never held for I/O)
        # Serializes the flow row and epoch cap writes in the database, apart from
        # ``_lock``: a charge must not stall every other stream's cache lookups.
        self._bookkeeping_lock = threading.Lock()

    def segment_members(self, segment_id: str) -> set[int] | None:
        """Customer ids of a segment; None for the built-in segment of every customer."""
        if segment_id == ALL_CUSTOMERS:
            return None
        try:
            return self._segment_members(segment_id)
        except SegmentUnknown as exc:
            raise FlowRefused("SEGMENT_UNKNOWN", str(exc)) from exc

    # --- checks -------------------------------------------------------------------------

    def check_flow(self, flow: FlowContext, now: datetime) -> tuple[Agreement, LocalAgreement]:
        """This node's own checks of a flow under its copy of the agreement; a refusal is
        written to the audit log with its reason before it is raised."""
        try:
            return self._check_flow(flow, now)
        except FlowRefused as refusal:
            self.audit(flow, "refused", reason=refusal.reason)
            raise

    def _check_flow(self, flow: FlowContext, now: datetime) -> tuple[Agreement, LocalAgreement]:
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
        self._check_rate(agreement, flow, now)
        return agreement, local

    def _check_rate(self, agreement: Agreement, flow: FlowContext, now: datetime) -> None:
        """Each node counts the agreement's flows itself (UTC days), whatever the broker says."""
        self.record_flow(flow, "running", now)
        day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        with self.engine.connect() as connection:
            today = connection.execute(
                select(func.count())
                .select_from(_flows)
                .where(_flows.c.agreement_id == agreement.agreement_id, _flows.c.created_at >= day)
            ).scalar_one()
        if today > agreement.rate_limit_per_day:
            raise FlowRefused(
                "RATE_LIMITED",
                f"the agreement allows {agreement.rate_limit_per_day} flows per day (UTC)",
            )

    def _scope(self, agreement: Agreement, local: LocalAgreement, flow: FlowContext, now: datetime
               ) -> KeyScope:  # fmt: skip
        return KeyScope(
            agreement.agreement_id, flow.owner_segment_id, agreement.epoch_at(now), local.rotation
        )

    # --- own set --------------------------------------------------------------------------

    def consented_customers(
        self, agreement: Agreement, flow: FlowContext, now: datetime
    ) -> tuple[int, list[tuple[int, bytes]]]:
        """The customers allowed into this flow: how many, and their (customer, point) pairs."""
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
        try:
            members = self.segment_members(segment)
        except FlowRefused as refusal:
            self.audit(flow, "refused", reason=refusal.reason)
            raise
        need_channel = agreement.output_mode is OutputMode.RELEASE and flow.role == "owner"
        key = _ConsentedKey(
            purpose, partner, need_channel, tuple(sorted(agreement.identifier_kinds))
        )
        found = self._whole_consented(key, now)
        if members is None:
            return found.customers, found.pairs
        # A segment is the store's consented set (cached, patched) cut to its members.
        inside = list(
            compress(found.pairs, map(members.__contains__, map(itemgetter(0), found.pairs)))
        )
        return len(set(map(itemgetter(0), inside))), inside

    def _whole_consented(self, key: _ConsentedKey, now: datetime) -> _Consented:
        """The whole store's consented set under ``key``: cached, patched after small
        changes, read afresh otherwise."""
        with self._lock:
            cached = self._consented.get(key)
        position = self._position()
        found: _Consented | None = None
        if cached is not None and _still_timely(cached, now):
            if position.same_answer(cached.position):
                return cached
            found = self._patched(key, cached, position, now)
        if found is None:
            customers, changes_at, pairs, decisions = self._read_consented(key, now)
            found = _Consented(position, now, changes_at, customers, pairs, decisions)
        # Keep the answer only if nothing changed while it was read (a change commits
        # between the two reads: the positions differ and the next flow reads afresh).
        if self._position().same_answer(position):
            with self._lock:
                self._consented.pop(key, None)
                while len(self._consented) >= _CONSENTED_CACHED:
                    del self._consented[next(iter(self._consented))]
                self._consented[key] = found
        return found

    def _read_consented(
        self, key: _ConsentedKey, now: datetime
    ) -> tuple[int, datetime | None, list[tuple[int, bytes]], dict[int, bool]]:
        """The store's consented set, read afresh: how many customers, when time alone
        could change it, its pairs and each customer's consent decision."""
        consented, changes_at = self._ledger.valid_subjects_until(
            purpose=key.purpose, recipient=key.partner, now=now, need_channel=key.need_channel
        )
        rows = self._identifier_rows(list(key.kinds))
        # Column-wise passes in C (map, zip, compress): a million rows in a Python loop
        # cost a second of every first flow.
        customer_ids = list(map(itemgetter(0), rows))
        valid = list(map(consented.__contains__, map(itemgetter(1), rows)))
        decisions = dict(zip(customer_ids, valid, strict=True))
        pairs = list(compress(zip(customer_ids, map(itemgetter(2), rows), strict=True), valid))
        return len(set(compress(customer_ids, valid))), changes_at, pairs, decisions

    def _patched(
        self, key: _ConsentedKey, cached: _Consented, position: _Position, now: datetime
    ) -> _Consented | None:
        """``cached`` brought up to ``position`` by re-deciding only the customers changed
        since (imported or changed, or with a new consent event); None when that cannot
        be told (a customer deleted or a subject erased since) or would cost more than
        reading everything."""
        if position.store.deleted_generation > cached.position.store.generation:
            return None
        subjects = self._ledger.subjects_changed_since(cached.position.consent.log_size)
        if subjects is None:
            return None
        limit = max(cached.customers * _PATCH_SHARE, _PATCH_ALWAYS)
        if len(subjects) > limit:
            return None
        # Customers written since, and customers of subjects with new consent events.
        with self.engine.connect() as connection:
            written = set(
                connection.execute(
                    select(_customers.c.id).where(
                        _customers.c.changed_generation > cached.position.store.generation
                    )
                ).scalars()
            )
            if len(written) > limit:
                return None
            external_ids = _external_ids(connection, _customers.c.external_id, sorted(subjects))
            # Only they, and customers the cached read never saw, need the ledger.
            unseen = [c for c in written if c not in cached.decisions and c not in external_ids]
            external_ids.update(_external_ids(connection, _customers.c.id, unseen))
        changed = written | external_ids.keys()
        consented, horizon = self._ledger.valid_subjects_until(
            purpose=key.purpose,
            recipient=key.partner,
            now=now,
            need_channel=key.need_channel,
            subjects=set(external_ids.values()),
        )
        decisions = dict(cached.decisions)
        for customer_id, external_id in external_ids.items():
            decisions[customer_id] = external_id in consented
        # In C: a Python loop over a million cached pairs costs most of a patch.
        touched = list(map(changed.__contains__, map(itemgetter(0), cached.pairs)))
        kept = list(compress(cached.pairs, map(not_, touched)))
        removed = len(set(compress(map(itemgetter(0), cached.pairs), touched)))
        added: set[int] = set()
        for customer_id, point in self._points_of(list(key.kinds), sorted(changed)):
            # A customer with an identifier of the kinds was seen or decided above.
            if decisions.setdefault(customer_id, False):
                kept.append((customer_id, point))
                added.add(customer_id)
        moments = [m for m in (cached.changes_at, horizon) if m is not None]
        return _Consented(
            position,
            now,
            min(moments, default=None),
            cached.customers - removed + len(added),
            kept,
            decisions,
        )

    def _points_of(self, kinds: list[str], customers: list[int]) -> list[tuple[int, bytes]]:
        """(customer id, point) of the identifiers of ``kinds`` of ``customers``: from the
        identifiers alone (their customer-id index), not joined to customers.

        The kinds are filtered here, not in SQL: given ``kind IN (…)`` too, SQLite's planner
        (without statistics) walks the (kind, value) index — every identifier of the kind,
        a million at a million customers — once per query, instead of a few entries of the
        customer-id index per customer (2.7 s of a 1% churn's repeat at a million)."""
        wanted = frozenset(kinds)
        rows: list[tuple[int, bytes]] = []
        columns = (_identifiers.c.customer_id, _identifiers.c.kind, _identifiers.c.point)
        with self.engine.connect() as connection:
            for start in range(0, len(customers), _ID_CHUNK):
                chunk = customers[start : start + _ID_CHUNK]
                rows.extend(
                    (customer_id, point)
                    for customer_id, kind, point in connection.execute(
                        select(*columns).where(_identifiers.c.customer_id.in_(chunk))
                    )
                    if kind in wanted
                )
        return rows

    def _position(self) -> _Position:
        with self.engine.connect() as connection:
            store = store_generation(connection)
        return _Position(store, self._ledger.consent_position())

    def _identifier_rows(self, kinds: list[str]) -> list[tuple[int, str, bytes]]:
        """(customer id, external id, point) of every identifier of ``kinds``, as tuples.

        Plain driver tuples: a million rows through the ORM would cost seconds of every
        flow. On SQLite the join is written to walk customers and then their identifiers
        (by the customer-id index); starting from the (kind, value) index, as SQLite's
        planner otherwise does, visits customers in random order and is five times slower.
        """
        dialect = self.engine.dialect
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        join = "CROSS JOIN" if dialect.name == "sqlite" else "JOIN"
        sql = (
            f"SELECT c.id, c.external_id, i.point FROM customers c {join} identifiers i "
            f"ON i.customer_id = c.id WHERE i.kind IN ({', '.join(mark for _ in kinds)})"
        )
        with self.engine.connect() as connection:
            cursor = connection.exec_driver_sql(sql, tuple(kinds)).cursor
            rows: list[tuple[int, str, bytes]] = list(cursor.fetchall())
        return rows

    def blind_own_set(self, flow: FlowContext) -> OwnSet:
        """This node's consented set for ``flow``: padded, shuffled, with handles; its
        tokens are blinded as the stream is read (the pool works while batches travel)."""
        now = self._now()
        agreement, local = self.check_flow(flow, now)
        with tracer().start_as_current_span("node.blind_own_set") as span:
            span.set_attribute("accord.flow_id", flow.flow_id)
            span.set_attribute("accord.agreement_id", flow.agreement_id)
            with self.engine.connect() as connection:
                generation = store_generation(connection).generation
            customers, real = self.consented_customers(agreement, flow, now)
            if customers < agreement.min_audience_k:
                self.audit(flow, "refused", reason="BELOW_MIN_AUDIENCE")
                raise FlowRefused(
                    "BELOW_MIN_AUDIENCE",
                    f"the consented set is below the agreement's minimum audience "
                    f"(k = {agreement.min_audience_k})",
                )
            padded_size = size_bucket(len(real))
            if padded_size > agreement.max_set_size:
                self.audit(flow, "refused", reason="SET_TOO_LARGE", tokens=padded_size)
                raise FlowRefused(
                    "SET_TOO_LARGE",
                    f"the padded set ({padded_size} tokens) exceeds the agreement's maximum "
                    f"({agreement.max_set_size})",
                )
            scope = self._scope(agreement, local, flow, now)
            shuffled = shuffled_set(
                real,
                self._dummy_points(scope, padded_size - len(real)),
                keep_owners=flow.role == "recipient",  # only a recipient maps results back
            )
            looked, new = self._look_up_and_charge(scope, agreement, shuffled.inputs)
            span.set_attribute("accord.set_size", shuffled.size)
            span.set_attribute("accord.newly_blinded", new)
        if flow.role == "recipient":
            with self._lock:
                self._expire_handle_maps(now)
                self._handle_maps[flow.flow_id] = _HandleMap(shuffled.owners, now, generation)
        self.audit(
            flow,
            "blinded",
            customers=customers,
            tokens=len(real),
            padded=shuffled.size,
            newly_blinded=new,
            epoch=scope.epoch,
        )
        tokens = self._blind_stream(
            scope,
            zip(_chunks(shuffled.inputs, STREAM_BATCH), _chunks(looked, STREAM_BATCH), strict=True),
            trusted=True,
        )
        handles = shuffled.handles
        if flow.role == "recipient" and agreement.output_mode is OutputMode.OVERLAP:
            # The broker counts distinct handles: one per customer, however many of the
            # customer's identifiers match.
            handles = per_customer_handles(shuffled)
        return OwnSet(shuffled.size, _with_handles(tokens, handles))

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

    def _look_up_and_charge(
        self, scope: KeyScope, agreement: Agreement, inputs: list[bytes]
    ) -> tuple[list[bytes | None], int]:
        """What the epoch cache holds for each input (None where nothing yet), after the
        distinct inputs not blinded yet in this epoch are counted against the cap (or the
        flow refused). One pass over the cache: the stream reuses the answer."""
        with self._lock:
            looked = list(map(self._cache.map_for(scope).get, inputs))
        count = len(set(map(inputs.__getitem__, _holes(looked))))
        # Two flows that miss the same inputs at once both count them: the cap errs on the
        # side of counting too much, never too little.
        self._charge(agreement, scope, count)
        return looked, count

    def _blind_stream(
        self,
        scope: KeyScope,
        chunks: Iterator[tuple[list[bytes], list[bytes | None]]],
        *,
        trusted: bool = False,
    ) -> Iterator[list[bytes]]:
        """``[k]·x`` for every input, chunk by chunk, in order. Each chunk comes with what
        the epoch cache held for it; the holes go to the pool with a window of chunks in
        flight, and their results join the cache."""
        secret = blinding_secret(
            self._master, scope=scope.hkdf_scope, segment=scope.segment_id, epoch=scope.epoch
        )
        in_flight: deque[
            tuple[
                list[bytes], list[bytes | None], list[int], list[bytes], list[Future[list[bytes]]]
            ]
        ] = deque()

        def settle() -> list[bytes]:
            chunk, looked, holes, missing, futures = in_flight.popleft()
            if not holes:
                return looked  # type: ignore[return-value]  # no holes: every token known
            fresh: list[bytes] = []
            try:
                for future in futures:
                    fresh.extend(future.result())
            except InvalidPoint as exc:
                for *_, pending in in_flight:
                    for future in pending:
                        future.cancel()
                raise FlowRefused("PEER_REJECTED", f"a received token is invalid: {exc}") from exc
            with self._lock:
                cache = self._cache.map_for(scope)
                cache.update(zip(missing, fresh, strict=True))
            if len(fresh) == len(chunk):  # nothing cached, no repeats: in order already
                return fresh
            blinded = dict(zip(missing, fresh, strict=True))
            for i in holes:  # ``looked`` is this stream's own list: filled in place
                looked[i] = blinded[chunk[i]]
            return looked  # type: ignore[return-value]  # every hole filled

        for chunk, looked in chunks:
            holes = _holes(looked)
            missing = list(
                dict.fromkeys(chunk if len(holes) == len(chunk) else map(chunk.__getitem__, holes))
            )
            futures = [
                self._pool.submit(secret, missing[i : i + POOL_TASK], trusted=trusted)
                for i in range(0, len(missing), POOL_TASK)
            ]
            in_flight.append((chunk, looked, holes, missing, futures))
            if len(in_flight) >= PIPELINE_DEPTH:
                yield settle()
        while in_flight:
            yield settle()

    def _charge(self, agreement: Agreement, scope: KeyScope, count: int) -> None:
        """Count ``count`` newly blinded identifiers against the epoch cap, or refuse."""
        if count == 0:
            return
        key = {"agreement_id": scope.agreement_id, "epoch": scope.epoch, "rotation": scope.rotation}
        where = [getattr(_usage.c, k) == v for k, v in key.items()]
        # The increment is the transaction's first statement, for the reason
        # kernel.db.lock_rows gives; the in-process lock keeps two streams from inserting
        # the same new row.
        with self._bookkeeping_lock, self.engine.begin() as connection:
            raised = connection.execute(
                update(_usage).where(*where).values(identifiers=_usage.c.identifiers + count)
            ).rowcount
            if not raised:
                connection.execute(insert(_usage).values(identifiers=count, **key))
            total = connection.execute(select(_usage.c.identifiers).where(*where)).scalar_one()
            if total > agreement.epoch_identifier_cap:  # leaving the block rolls it back
                raise FlowRefused(
                    "SET_TOO_LARGE",
                    f"blinding {count} more identifiers would pass the agreement's cap of "
                    f"{agreement.epoch_identifier_cap} per epoch",
                )

    # --- the partner's set ----------------------------------------------------------------

    def reblind(
        self, flow: FlowContext, batches: Iterator[tuple[list[bytes], list[bytes]]], size: int
    ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """The partner's blinded set (``size`` tokens, arriving in ``batches``), blinded
        again with this node's key, as it arrives.

        If the partner is the recipient of a match agreement, tokens go back in arrival
        order with their handles, batch by batch (it maps its result back). For an overlap
        recipient the whole set is shuffled and its handles replaced by fresh ones shared
        the same way (the broker counts customers, and cannot tie one to the recipient's
        handles). Otherwise the whole set is collected, shuffled and sent without handles.
        """
        now = self._now()
        agreement, local = self.check_flow(flow, now)
        if size > agreement.max_set_size:
            raise FlowRefused(
                "SET_TOO_LARGE",
                f"the partner's set ({size} tokens) exceeds the agreement's maximum",
            )
        scope = self._scope(agreement, local, flow, now)
        entitled = agreement.output_mode is OutputMode.MATCH and flow.role == "owner"
        grouped = agreement.output_mode is OutputMode.OVERLAP and flow.role == "owner"
        handles_seen: list[list[bytes]] = []
        counted = [0, 0]  # tokens, newly blinded
        # The order a set sent without handles leaves in, drawn while it is blinded.
        order = None if entitled or grouped else self._pool.random_order(size)

        def inputs() -> Iterator[tuple[list[bytes], list[bytes | None]]]:
            for tokens, handles in batches:
                if handles and len(handles) != len(tokens):
                    raise FlowRefused("PEER_REJECTED", "a batch has handles for some tokens only")
                looked, new = self._look_up_and_charge(scope, agreement, tokens)
                counted[1] += new
                counted[0] += len(tokens)
                handles_seen.append(handles)
                yield tokens, looked

        blinded = self._blind_stream(scope, inputs())
        if entitled:
            for index, tokens in enumerate(blinded):
                yield tokens, handles_seen[index]
        else:
            everything = list(chain.from_iterable(blinded))
            if grouped:
                handles = [handle for chunk in handles_seen for handle in chunk]
                if len(handles) != len(everything):
                    raise FlowRefused("PEER_REJECTED", "an overlap set needs a handle per token")
                tokens_out, handles_out = regrouped(everything, handles)
                yield from _with_handles(_chunks(tokens_out, STREAM_BATCH), handles_out)
            elif order is not None:
                if len(everything) != size:
                    order.cancel()
                    raise FlowRefused(
                        "PEER_REJECTED", "the partner's set did not have the size it announced"
                    )
                shuffled = list(map(everything.__getitem__, order.result()))
                for chunk in _chunks(shuffled, STREAM_BATCH):
                    yield chunk, []
        self.audit(
            flow, "reblinded", tokens=counted[0], newly_blinded=counted[1], epoch=scope.epoch
        )

    # --- results --------------------------------------------------------------------------

    def deliver_match(
        self,
        flow: FlowContext,
        matched_handles: Sequence[bytes],
        *,
        part: int = 0,
        final: bool = True,
        total: int | None = None,
    ) -> int | None:
        """Take one part of a match result; on the final part, record which own customers
        matched and return how many (customers, not tokens). Nothing is kept before then."""
        now = self._now()
        agreement, _ = self.check_flow(flow, now)
        if flow.role != "recipient" or agreement.output_mode is not OutputMode.MATCH:
            raise FlowRefused("PEER_REJECTED", "match results go to a match agreement's recipient")
        with self._lock:
            pending = self._pending_matches.setdefault(flow.flow_id, [])
            if part != len(pending):
                self._pending_matches.pop(flow.flow_id, None)
                raise FlowRefused("PEER_REJECTED", "match result parts arrived out of order")
            pending.append(list(matched_handles))
            if not final:
                return None
            parts = self._pending_matches.pop(flow.flow_id)
            handle_map = self._handle_maps.pop(flow.flow_id, None)
        matched_handles = [handle for chunk in parts for handle in chunk]
        if total is not None and total != len(matched_handles):
            raise FlowRefused("PEER_REJECTED", "the match result arrived incomplete")
        if handle_map is None:
            raise FlowRefused("PEER_REJECTED", "no set of this node belongs to that flow")
        try:
            owners = set(handle_map.owners.of(matched_handles))
        except UnknownHandle:
            raise FlowRefused(
                "PEER_REJECTED", "a matched handle is not one this node sent"
            ) from None
        owners.discard(None)  # a padding dummy never matches, but never count one
        customers = cast(set[int], owners)
        delete_after = agreement.delete_after(now)
        this_flow = _flows.c.flow_id == flow.flow_id
        # The match rows' keys are checked here rather than by SQLite row by row (a
        # primary-key lookup per matched customer: a third of the insert at a million).
        with self.engine.connect() as connection, foreign_keys_trusted(connection):
            with connection.begin():
                # The write lock first, so no deletion can commit between the check below
                # and the insert.
                if not lock_rows(connection, _flows.c.updated_at, this_flow):
                    raise FlowRefused("PEER_REJECTED", "this node has no record of that flow")
                if store_generation(connection).deleted_generation > handle_map.generation:
                    # Erased since the set was read: an erased customer matches nothing.
                    customers &= set(_external_ids(connection, _customers.c.id, list(customers)))
                connection.execute(
                    update(_flows)
                    .where(this_flow)
                    .values(
                        state="succeeded",
                        matched_customers=len(customers),
                        delete_after=delete_after,
                        updated_at=now,
                    )
                )
                insert_rows(
                    connection,
                    _matches.name,
                    ("flow_id", "customer_id"),
                    list(zip(repeat(flow.flow_id), sorted(customers))),
                )
        self.audit(flow, "delivered", matched_customers=len(customers))
        return len(customers)

    def forget(self, flow_id: str) -> None:
        with self._lock:
            self._handle_maps.pop(flow_id, None)
            self._pending_matches.pop(flow_id, None)

    # --- bookkeeping ----------------------------------------------------------------------

    def record_flow(self, flow: FlowContext, state: str, now: datetime) -> None:
        """The flow's row, once: every step of a flow checks it, from several threads (the
        lock keeps two steps of one flow from both inserting it)."""
        with self._bookkeeping_lock, self.engine.begin() as connection:
            if not lock_rows(connection, _flows.c.updated_at, _flows.c.flow_id == flow.flow_id):
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

    def audit(self, flow: FlowContext, step: str, **counts: Any) -> None:
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
