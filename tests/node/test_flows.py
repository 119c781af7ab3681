"""A node's consented set between flows: the cached (and patched) answer is always the
answer a fresh read gives, whatever changed in between (docs/matching.md, "What a repeat
costs")."""

from __future__ import annotations

import csv
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, func, select
from sqlalchemy.engine import URL

from consent import Channel, CollectionMethod, EventType, Ledger, NewConsentEvent, Notice
from consent.agreements import Agreement, OutputMode, PartyKeys
from consent.errors import SubjectNotFound
from kernel.crypto import HpkeKeyPair, SigningKey, random_bytes
from kernel.db import database_url
from node import delete_customer, open_store, run_import
from node._exchange import Exchange
from node._flows import FlowContext, FlowEngine, _holes
from node._pool import BlindingPool
from node._tables import BlindUsageRow, BudgetRow, CustomerRow, FlowRow
from node.blinding import KeyScope
from node.errors import BudgetExhausted, FlowRefused

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OWNER = "solent-boats"
RECIPIENT = "bluewater-travel"
CROSS_SELL = "marketing.cross_sell"
NOTICE = Notice("https://solent-boats.example/privacy/offers", "3", "ab" * 32, "en-GB")
PEOPLE = [f"C{i}" for i in range(8)]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def agreement(**changes: Any) -> Agreement:
    terms: dict[str, Any] = {
        "agreement_id": str(uuid.uuid4()),
        "owner": PartyKeys(OWNER, SigningKey.generate().public_key, bytes(32)),
        "recipient": PartyKeys(RECIPIENT, SigningKey.generate().public_key, bytes(32)),
        "segment_ids": ("all",),
        "purpose": CROSS_SELL,
        "output_mode": OutputMode.MATCH,
        "min_audience_k": 1,
        "max_set_size": 1_000,
        "epoch_identifier_cap": 1_000_000,
        "epoch_length_seconds": 86400,
        "retention_days": 30,
        "valid_from": T0 - timedelta(days=1),
        "valid_until": T0 + timedelta(days=365),
        "rate_limit_per_day": 1_000,
    }
    terms.update(changes)
    return Agreement(**terms)


def flow(terms: Agreement, now: datetime, segment: str = "all") -> FlowContext:
    return FlowContext(str(uuid.uuid4()), terms.agreement_id, "owner", segment, "", now)


def consent(
    external_id: str,
    event_type: EventType,
    at: datetime,
    expires_at: datetime | None = None,
) -> tuple[str, NewConsentEvent]:
    offered = event_type in (EventType.GIVEN, EventType.RENEWED)
    return external_id, NewConsentEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        purpose=CROSS_SELL,
        recipient=RECIPIENT,
        collected_at=at,
        collection_method=CollectionMethod.WEB_FORM,
        actor="crm-sync",
        channels=(Channel.EMAIL,) if offered else (),
        notice=NOTICE if offered else None,
        expires_at=expires_at,
    )


class Node:
    """A real store and ledger, and two flow engines over them: one that has served
    flows before (and caches), and a fresh one per question (the reference)."""

    def __init__(self, folder: Path, url: URL | None = None) -> None:
        self.folder = folder
        self.clock = Clock()
        self.engine: Engine = open_store(url or database_url(str(folder / "node.db")))
        self.ledger = Ledger(
            self.engine,
            origin=f"accord/node/{OWNER}",
            controller=OWNER,
            signing_key=SigningKey.generate(),
            now=self.clock,
        )
        self.pool = BlindingPool(1)
        self.segment: set[str] = set()  # external ids of the members of segment "some"
        self.cached = self._flow_engine()
        self.imports = 0

    def _flow_engine(self) -> FlowEngine:
        return FlowEngine(
            self.engine,
            node_name=OWNER,
            master_secret=bytes(32),
            ledger=self.ledger,
            pool=self.pool,
            now=self.clock,
            segment_members=self._members,
        )

    def _members(self, segment_id: str) -> set[int]:
        customers = CustomerRow.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as connection:
            return set(
                connection.execute(
                    select(customers.c.id).where(customers.c.external_id.in_(self.segment))
                ).scalars()
            )

    def load(self, rows: list[tuple[str, str, str]]) -> None:
        """Import (external id, e-mail, phone) rows, as a CRM export would bring them."""
        self.imports += 1
        source = self.folder / f"import-{self.imports}.csv"
        with source.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["external_id", "email", "phone"])
            writer.writerows(rows)
        summary = run_import(
            source,
            engine=self.engine,
            default_region="GB",
            rejects_path=self.folder / "rejects.csv",
            workers=1,
        )
        assert summary.rejected == 0, summary

    def erase(self, external_id: str) -> None:
        delete_customer(self.engine, external_id)
        try:
            self.ledger.erase(external_id, actor="dpo", reason="request")
        except SubjectNotFound:
            pass

    def check(self, terms: Agreement, segment: str = "all") -> tuple[int, list[tuple[int, bytes]]]:
        """The cached engine answers exactly what a fresh engine reads."""
        now = self.clock.now
        cached_count, cached_pairs = self.cached.consented_customers(
            terms, flow(terms, now, segment), now
        )
        fresh_count, fresh_pairs = self._flow_engine().consented_customers(
            terms, flow(terms, now, segment), now
        )
        assert cached_count == fresh_count
        assert sorted(cached_pairs) == sorted(fresh_pairs)
        return cached_count, cached_pairs

    def close(self) -> None:
        self.pool.close()
        self.engine.dispose()


@pytest.fixture
def node(tmp_path: Path, db_url: URL) -> Iterator[Node]:
    node = Node(tmp_path, db_url)
    try:
        yield node
    finally:
        node.close()


def email(person: str, version: int) -> str:
    return f"{person.lower()}.v{version}@example.com"


def phone(person: str, version: int) -> str:
    return f"+44 7400 1{int(person[1:]):02d}{version:03d}"


def count_whole_reads(node: Node, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one whenever the node's cached engine reads a whole set."""
    whole_reads: list[int] = []
    read = FlowEngine._read_consented

    def counted(self: FlowEngine, *args: Any) -> Any:
        if self is node.cached:
            whole_reads.append(1)
        return read(self, *args)

    monkeypatch.setattr(FlowEngine, "_read_consented", counted)
    return whole_reads


def test_a_change_is_patched_in_without_reading_the_whole_set(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.load([(p, email(p, 0), phone(p, 0)) for p in PEOPLE])
    node.ledger.record([consent(p, EventType.GIVEN, T0 - timedelta(days=1)) for p in PEOPLE[:6]])
    terms = agreement()
    count, pairs = node.check(terms)
    assert count == 6 and len(pairs) == 12  # an e-mail and a phone each
    whole_reads = count_whole_reads(node, monkeypatch)
    node.load([("C0", email("C0", 1), phone("C0", 0)), ("C9", email("C9", 0), "")])
    node.ledger.record(
        [
            consent("C1", EventType.WITHDRAWN, T0 - timedelta(hours=1)),
            consent("C7", EventType.GIVEN, T0 - timedelta(hours=1)),
            consent("C9", EventType.GIVEN, T0 - timedelta(hours=1)),
        ]
    )
    count, pairs = node.check(terms)
    assert count == 7  # C1 withdrew; C7 and the new C9 consented
    assert len(pairs) == 13
    assert not whole_reads, "the cached set should have been patched, not re-read"
    node.erase("C2")
    assert node.check(terms)[0] == 6
    assert whole_reads == [1], "after an erasure the whole set is read again"


def test_a_patch_looks_rows_up_by_index_and_never_walks_a_whole_one(tmp_path: Path) -> None:
    """A 1% churn at a million customers must cost what changed: every query of a patch
    searches by customer, subject or generation. (SQLite's planner, without statistics,
    once answered "these customers' identifiers of these kinds" by walking the
    (kind, value) index — every identifier — once per 500 customers.)"""
    node = Node(tmp_path)  # the plan is SQLite's: PostgreSQL plans by its statistics
    try:
        node.load([(p, email(p, 0), phone(p, 0)) for p in PEOPLE])
        node.ledger.record([consent(p, EventType.GIVEN, T0 - timedelta(days=1)) for p in PEOPLE])
        terms = agreement()
        node.check(terms)
        # Several customers at once: with one or two in the IN list the planner chose well.
        node.load([(p, email(p, 1), phone(p, 0)) for p in PEOPLE[:5]])
        node.ledger.record([consent("C5", EventType.WITHDRAWN, T0 - timedelta(hours=1))])
        statements: list[tuple[str, Any]] = []

        def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            statements.append((statement, parameters))

        event.listen(node.engine, "before_cursor_execute", seen)
        try:
            now = node.clock.now
            count, _ = node.cached.consented_customers(terms, flow(terms, now), now)
        finally:
            event.remove(node.engine, "before_cursor_execute", seen)
        assert count == 7
        plans: list[str] = []
        with node.engine.connect() as connection:
            for statement, parameters in statements:
                cursor = connection.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + statement, parameters
                ).cursor
                plans.extend(row[3] for row in cursor.fetchall())
        big = ("identifiers", "customers", "consent_records", "consent_events", "log_entries")
        touched = [plan for plan in plans if any(f" {table} " in f"{plan} " for table in big)]
        assert any("ix_identifiers_customer_id" in plan for plan in touched), plans
        for plan in touched:
            assert plan.startswith("SEARCH"), plan
            assert "(kind=?)" not in plan, plan
    finally:
        node.close()


def test_a_segment_is_the_cached_consented_set_cut_to_its_members(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.load([(p, email(p, 0), phone(p, 0)) for p in PEOPLE])
    node.ledger.record([consent(p, EventType.GIVEN, T0 - timedelta(days=1)) for p in PEOPLE[:6]])
    node.segment = {"C1", "C2", "C3", "C7"}
    terms = agreement()
    count, pairs = node.check(terms, "some")
    assert count == 3 and len(pairs) == 6  # C7 is a member without consent
    assert node.check(terms)[0] == 6  # the whole store, from the same cached set
    whole_reads = count_whole_reads(node, monkeypatch)
    node.load([("C2", email("C2", 1), "")])  # C2's phone goes, its e-mail changes
    node.ledger.record([consent("C7", EventType.GIVEN, T0 - timedelta(hours=1))])
    node.segment = {"C1", "C2", "C7", "C9"}  # membership is asked afresh in every flow
    count, pairs = node.check(terms, "some")
    assert count == 3 and len(pairs) == 5
    assert not whole_reads, "a segment flow should patch the store's cached set too"


def test_an_expiry_between_flows_is_seen(node: Node) -> None:
    node.load([(p, email(p, 0), "") for p in PEOPLE])
    node.ledger.record(
        [consent("C0", EventType.GIVEN, T0 - timedelta(days=1), expires_at=T0 + timedelta(hours=1))]
        + [consent(p, EventType.GIVEN, T0 - timedelta(days=1)) for p in PEOPLE[1:3]]
    )
    terms = agreement()
    assert node.check(terms)[0] == 3
    node.load([("C1", email("C1", 1), "")])  # a change, so the next flow patches …
    node.clock.now = T0 + timedelta(hours=2)  # … after C0's consent expired
    assert node.check(terms)[0] == 2
    # A consent recorded between flows, patched in, expires before the next flow.
    node.ledger.record(
        [consent("C5", EventType.GIVEN, node.clock.now, expires_at=T0 + timedelta(hours=3))]
    )
    assert node.check(terms)[0] == 3
    node.clock.now = T0 + timedelta(hours=4)
    assert node.check(terms)[0] == 2


EVENTS = st.sampled_from([EventType.GIVEN, EventType.WITHDRAWN, EventType.RENEWED])

operations = st.lists(
    st.one_of(
        # An import: some people with this version of their e-mail and (maybe) phone.
        st.tuples(
            st.just("import"),
            st.lists(
                st.tuples(st.sampled_from(PEOPLE), st.integers(0, 3), st.booleans()),
                min_size=1,
                max_size=4,
            ),
        ),
        # Consent events, some expiring, some collected in the future.
        st.tuples(
            st.just("consent"),
            st.lists(
                st.tuples(
                    st.sampled_from(PEOPLE),
                    EVENTS,
                    st.integers(-48 * 60, 4),  # minutes; the ledger allows 5 ahead
                    st.none() | st.integers(1, 48),
                ),
                min_size=1,
                max_size=4,
            ),
        ),
        st.tuples(st.just("erase"), st.sampled_from(PEOPLE)),
        st.tuples(
            st.just("wait"),
            st.sampled_from([timedelta(minutes=3), timedelta(hours=5), timedelta(days=2)]),
        ),
        st.tuples(st.just("ask"), st.just(None)),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=operations,
    kinds=st.sampled_from([("email",), ("phone",), ("email", "phone")]),
    segment=st.sets(st.sampled_from(PEOPLE)),
)
def test_the_cached_set_is_always_what_a_fresh_read_gives(
    ops: list[tuple[str, Any]], kinds: tuple[str, ...], segment: set[str]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        node = Node(Path(directory))
        node.segment = segment
        try:
            terms = agreement(identifier_kinds=kinds)
            node.load([(p, email(p, 0), phone(p, 0)) for p in PEOPLE[:4]])
            node.check(terms)
            for op, argument in ops:
                if op == "import":
                    rows = {  # one row per person, as a CRM export has
                        p: (p, email(p, version), phone(p, version) if with_phone else "")
                        for p, version, with_phone in argument
                    }
                    node.load(list(rows.values()))
                elif op == "consent":
                    node.ledger.record(
                        [
                            consent(
                                p,
                                event_type,
                                node.clock.now + timedelta(minutes=minutes),
                                None
                                if lasts is None
                                else node.clock.now + timedelta(minutes=minutes, hours=lasts),
                            )
                            for p, event_type, minutes, lasts in argument
                        ]
                    )
                elif op == "erase":
                    node.erase(argument)
                elif op == "wait":
                    node.clock.now += argument
                node.check(terms)
                node.check(terms, "some")
        finally:
            node.close()


@given(st.lists(st.none() | st.binary(min_size=32, max_size=32)))
def test_holes_are_exactly_the_nones(looked: list[bytes | None]) -> None:
    assert _holes(looked) == [i for i, token in enumerate(looked) if token is None]


def test_the_epoch_cap_counts_every_charge_and_refuses_past_it(node: Node) -> None:
    """Charges from many threads at once all count; one past the cap is refused and
    counts nothing; the flow's row is written once however many steps record it."""
    terms = agreement(epoch_identifier_cap=100)
    scope = KeyScope(terms.agreement_id, "all", 0, 0)
    with ThreadPoolExecutor(8) as threads:
        list(threads.map(lambda _: node.cached._charge(terms, scope, 10), range(9)))
    with pytest.raises(FlowRefused, match="cap of 100"):
        node.cached._charge(terms, scope, 11)
    node.cached._charge(terms, scope, 10)  # exactly the cap
    usage = BlindUsageRow.__table__  # type: ignore[attr-defined]
    with node.engine.connect() as connection:
        assert connection.execute(select(usage.c.identifiers)).scalar_one() == 100
    step = flow(terms, T0)
    with ThreadPoolExecutor(8) as threads:
        list(threads.map(lambda _: node.cached.record_flow(step, "running", T0), range(8)))
    flows = FlowRow.__table__  # type: ignore[attr-defined]
    with node.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(flows)).scalar_one() == 1


def test_the_privacy_budget_spends_each_count_once_from_many_threads(node: Node) -> None:
    """Sixteen counts of one agreement at once, room for ten: exactly ten spend, six are
    refused, and the stored balance is the whole budget — no two counts spent from the
    same balance (the lock comes before the read)."""
    terms = agreement(output_mode=OutputMode.OVERLAP, epsilon_total="1.0", epsilon_per_count="0.1")
    exchange = Exchange(
        node.cached,
        ledger=node.ledger,
        signing_key=SigningKey.generate(),
        hpke_key=HpkeKeyPair(random_bytes(32)),
        encode=lambda records, at: b"",
        decode=lambda blob: ([], None),
    )

    def count(_: int) -> str:
        try:
            return str(exchange._spend(terms, Decimal("0.1")).spent)
        except BudgetExhausted:
            return "refused"

    with ThreadPoolExecutor(16) as threads:
        outcomes = list(threads.map(count, range(16)))
    spent = sorted(Decimal(o) for o in outcomes if o != "refused")
    assert outcomes.count("refused") == 6
    assert spent == [Decimal(i) / 10 for i in range(1, 11)]  # each balance spent once
    budgets = BudgetRow.__table__  # type: ignore[attr-defined]
    with node.engine.connect() as connection:
        stored = connection.execute(select(budgets.c.spent)).scalar_one()
    assert Decimal(stored) == Decimal("1.0")
