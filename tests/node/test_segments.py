"""Segments: the domain rule, definitions and versions, and members computed in SQL.

The property test holds ``SegmentStore.members`` (SQL) to ``Segment.matches`` (plain
Python) over random stores and random filters on SQLite; a fixed, hand-checked scenario
runs the same comparison on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select
from sqlalchemy.engine import URL

from consent import Channel, CollectionMethod, EventType, Ledger, NewConsentEvent, Notice
from kernel.crypto import SigningKey
from kernel.db import database_url
from node import (
    ALL_CUSTOMERS,
    BUILT_IN_ALL,
    CustomerFacts,
    Segment,
    SegmentFilter,
    SegmentPreview,
    SegmentStore,
    open_store,
    run_import,
)
from node._tables import CustomerRow, IdentifierRow, InterestRow, PurchaseRow
from node.blinding import size_bucket
from node.errors import InvalidSegment, SegmentUnknown

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CROSS_SELL = "marketing.cross_sell"
BLUEWATER = "bluewater-travel"
NOTICE = Notice("https://solent-boats.example/privacy/offers", "3", "ab" * 32, "en-GB")
HEADER = ["external_id", "email", "country", "age_band", "region", "interests", "channels",
          "loyalty_tier", "purchases"]  # fmt: skip


# --- customers as the tests write them, and as the rule sees them ----------------------


@dataclass(frozen=True)
class Customer:
    external_id: str
    country: str | None = None
    age_band: str | None = None
    region: str | None = None
    loyalty_tier: str | None = None
    interests: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    purchases: tuple[tuple[date, str, Decimal], ...] = field(default=())

    def row(self) -> list[str]:
        purchases = (f"{day.isoformat()}:{kind}:{amount}" for day, kind, amount in self.purchases)
        return [
            self.external_id,
            f"{self.external_id.lower()}@example.com",
            self.country or "",
            self.age_band or "",
            self.region or "",
            ";".join(sorted(self.interests)),
            ";".join(sorted(self.channels)),
            self.loyalty_tier or "",
            ";".join(purchases),
        ]

    def facts(self) -> CustomerFacts:
        return CustomerFacts(
            country=self.country,
            age_band=self.age_band,
            region=self.region,
            loyalty_tier=self.loyalty_tier,
            interests=self.interests,
            channels=self.channels,
            purchases=self.purchases,
        )


def import_customers(engine: Engine, customers: Sequence[Customer], folder: Path) -> None:
    source = folder / "customers.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(c.row() for c in customers)
    summary = run_import(
        source,
        engine=engine,
        default_region="GB",
        rejects_path=folder / "rejects.csv",
        workers=1,
    )
    assert summary.rejected == 0 and summary.imported == len(customers), summary


def external_ids(engine: Engine, customer_ids: set[int] | None) -> set[str]:
    customers = CustomerRow.__table__  # type: ignore[attr-defined]
    query = select(customers.c.id, customers.c.external_id)
    with engine.connect() as connection:
        names = {row[0]: row[1] for row in connection.execute(query)}
    return set(names.values()) if customer_ids is None else {names[i] for i in customer_ids}


def expected(customers: Sequence[Customer], segment_filter: SegmentFilter) -> set[str]:
    rule = Segment("expected", "rule", "", segment_filter)
    return {c.external_id for c in customers if rule.matches(c.facts())}


def segment(segment_id: str = "sailors", **filter_fields: Any) -> Segment:
    return Segment(segment_id, "Sailors", "People who sail", SegmentFilter(**filter_fields))


@pytest.fixture
def store(db_url: URL) -> Iterator[SegmentStore]:
    engine = open_store(db_url)
    try:
        yield SegmentStore(engine, now=lambda: T0)
    finally:
        engine.dispose()


# --- the domain: check and from_json --------------------------------------------------


def test_filters_round_trip_through_json() -> None:
    original = SegmentFilter(
        countries=("GB", "FR"),
        age_bands=("35-44",),
        regions=("Île-de-France",),
        interests=("sailing",),
        loyalty_tiers=("gold",),
        channels=("email", "sms"),
        purchase_categories=("boats",),
        purchased_since=date(2025, 1, 1),
        min_total_spend=Decimal("100.50"),
    )
    assert SegmentFilter.from_json(original.to_json()) == original
    assert SegmentFilter.from_json({}) == SegmentFilter()
    assert SegmentFilter.from_json({"countries": ["gb"], "interests": ["Sailing"]}) == (
        SegmentFilter(countries=("GB",), interests=("sailing",))
    )


@pytest.mark.parametrize(
    "data",
    [
        {"colour": ["red"]},  # unknown field
        {"countries": ["GBR"]},
        {"countries": ["G1"]},
        {"countries": "GB"},  # a string is not a list: its letters are not countries
        {"countries": [44]},
        {"countries": 7},
        {"age_bands": ["17"]},
        {"age_bands": ["35-44", "100+"]},
        {"loyalty_tiers": ["diamond"]},
        {"channels": ["fax"]},
        {"interests": ["sailing!"]},
        {"interests": [""]},
        {"interests": ["x" * 65]},
        {"purchase_categories": ["-boats"]},
        {"regions": [""]},
        {"regions": ["x" * 129]},
        {"purchased_since": "2025-13-01"},
        {"purchased_since": "yesterday"},
        {"purchased_since": ["2025-01-01"]},
        {"min_total_spend": "-1"},
        {"min_total_spend": "NaN"},
        {"min_total_spend": "Infinity"},
        {"min_total_spend": "a lot"},
        {"min_total_spend": [100]},
    ],
)
def test_every_invalid_filter_is_refused_with_invalid_segment(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidSegment):
        SegmentFilter.from_json(data)


@pytest.mark.parametrize(
    "changes",
    [
        {"segment_id": "all"},
        {"segment_id": "All"},
        {"segment_id": "-sailors"},
        {"segment_id": "sailing families"},
        {"segment_id": "s" * 65},
        {"segment_id": ""},
        {"title": ""},
        {"title": "t" * 201},
        {"description": "d" * 2001},
        {"filter": SegmentFilter(channels=("fax",))},
        {"filter": SegmentFilter(min_total_spend=Decimal("-0.01"))},
    ],
)
def test_every_invalid_segment_is_refused_with_invalid_segment(changes: dict[str, Any]) -> None:
    segment("sailors").check()  # the base is valid
    with pytest.raises(InvalidSegment):
        replace(segment("sailors"), **changes).check()


def test_the_rule_is_and_across_fields_or_within_one() -> None:
    alice = Customer(
        "C1",
        country="GB",
        interests=frozenset({"sailing"}),
        channels=frozenset({"email"}),
        purchases=((date(2025, 1, 1), "boats", Decimal("10.10")),),
    ).facts()
    assert segment(countries=("FR", "GB")).matches(alice)
    assert not segment(countries=("FR",)).matches(alice)
    assert segment(countries=("GB",), interests=("golf", "sailing")).matches(alice)
    assert not segment(countries=("GB",), interests=("golf",)).matches(alice)
    assert segment(channels=("sms", "email")).matches(alice)
    assert not segment(purchase_categories=("boats",), purchased_since=date(2025, 1, 2)).matches(
        alice
    )
    assert segment(min_total_spend=Decimal("10.10")).matches(alice)
    assert not segment(min_total_spend=Decimal("10.10"), purchased_since=date(2025, 6, 1)).matches(
        alice
    )
    assert segment(min_total_spend=Decimal(0), purchased_since=date(2025, 6, 1)).matches(alice)


# --- definitions and versions (both databases) ----------------------------------------


def test_define_creates_then_bumps_the_version_only_when_the_filter_changes(
    store: SegmentStore,
) -> None:
    first, created = store.define(segment(countries=("GB",)))
    assert created and first.version == 1 and first.filter == SegmentFilter(countries=("GB",))

    same, created = store.define(segment(countries=("GB",)))
    assert not created and same == first

    retitled, created = store.define(replace(segment(countries=("GB",)), title="Sailors, GB"))
    assert not created and retitled.version == 1 and retitled.title == "Sailors, GB"

    changed, _ = store.define(segment(countries=("GB", "FR")))
    assert changed.version == 2 and changed.filter.countries == ("FR", "GB")
    # Order and repeats within a field carry no meaning: no new version.
    reordered, _ = store.define(segment(countries=("FR", "GB", "FR")))
    assert reordered.version == 2
    # Going back to an earlier filter is a change too; the caller's version is ignored.
    back, _ = store.define(replace(segment(countries=("GB",)), version=99))
    assert back.version == 3

    assert store.get("sailors") == back
    other, created = store.define(segment("divers", interests=("diving",)))
    assert created and other.version == 1
    assert [s.segment_id for s in store.list()] == ["divers", "sailors"]


def test_concurrent_definitions_bump_the_version_once_each(store: SegmentStore) -> None:
    """Every writer changes the filter, so after N of them the version is N, whoever won the
    race to create the segment (the others retry as updates)."""
    writers = 8
    start = threading.Barrier(writers)

    def define(n: int) -> bool:
        start.wait()
        return store.define(segment(min_total_spend=Decimal(n)))[1]

    with ThreadPoolExecutor(max_workers=writers) as pool:
        created = list(pool.map(define, range(writers)))
    assert created.count(True) == 1
    assert store.get("sailors").version == writers


def test_unknown_reserved_and_invalid_segments(store: SegmentStore) -> None:
    with pytest.raises(SegmentUnknown, match="no segment 'nobody'"):
        store.get("nobody")
    with pytest.raises(SegmentUnknown):
        store.members("nobody")
    with pytest.raises(SegmentUnknown):
        store.preview("nobody", now=T0)
    with pytest.raises(InvalidSegment, match="built-in"):
        store.define(segment(ALL_CUSTOMERS))
    with pytest.raises(InvalidSegment):
        store.define(segment(channels=("fax",)))
    with pytest.raises(InvalidSegment):
        store.delete(ALL_CUSTOMERS)
    assert store.get(ALL_CUSTOMERS) == BUILT_IN_ALL
    assert store.list() == []  # nothing was written

    store.define(segment())
    assert store.delete("sailors") and not store.delete("sailors")
    with pytest.raises(SegmentUnknown):
        store.get("sailors")
    assert store.define(segment())[1]  # defined afresh, at version 1
    assert store.get("sailors").version == 1


# --- members: a fixed, hand-checked scenario (both databases) --------------------------

D = date.fromisoformat
SCENARIO = [
    Customer("C1", country="GB", age_band="35-44", region="London", loyalty_tier="gold",
             interests=frozenset({"sailing", "diving"}), channels=frozenset({"email", "sms"}),
             purchases=((D("2025-01-10"), "boats", Decimal("10.10")),
                        (D("2025-03-01"), "boats", Decimal("20.20")))),
    Customer("C2", country="GB", age_band="65+", region="Wales", loyalty_tier="none",
             interests=frozenset({"golf"}), channels=frozenset({"post"}),
             purchases=((D("2024-06-01"), "travel", Decimal("500.00")),)),
    Customer("C3", country="FR", age_band="35-44", region="Île-de-France",
             interests=frozenset({"sailing"}), channels=frozenset({"phone"}),
             purchases=((D("2025-02-01"), "mooring", Decimal("0.10")),
                        (D("2025-02-02"), "mooring", Decimal("0.20")))),
    Customer("C4", country="DE", channels=frozenset({"email"})),
    Customer("C5"),  # nothing but an e-mail
]  # fmt: skip
SCENARIO_SEGMENTS: list[tuple[dict[str, Any], set[str]]] = [
    ({}, {"C1", "C2", "C3", "C4", "C5"}),
    ({"countries": ("GB",)}, {"C1", "C2"}),
    ({"countries": ("GB", "FR"), "age_bands": ("35-44",)}, {"C1", "C3"}),
    ({"regions": ("Île-de-France", "Wales")}, {"C2", "C3"}),
    ({"regions": ("london",)}, set()),  # regions are compared exactly
    ({"interests": ("sailing", "golf")}, {"C1", "C2", "C3"}),
    ({"interests": ("sailing",), "countries": ("GB",)}, {"C1"}),
    ({"loyalty_tiers": ("gold", "none")}, {"C1", "C2"}),
    ({"channels": ("email",)}, {"C1", "C4"}),
    ({"channels": ("post", "phone")}, {"C2", "C3"}),
    ({"purchase_categories": ("boats", "travel")}, {"C1", "C2"}),
    ({"purchase_categories": ("boats", "travel"), "purchased_since": D("2025-01-01")}, {"C1"}),
    ({"purchase_categories": ("boats",), "purchased_since": D("2025-03-02")}, set()),
    # 10.10 + 20.20 is exactly 30.30 (in binary floating point it falls short).
    ({"min_total_spend": Decimal("30.30")}, {"C1", "C2"}),
    ({"min_total_spend": Decimal("30.305")}, {"C2"}),
    ({"min_total_spend": Decimal("0.30")}, {"C1", "C2", "C3"}),
    ({"min_total_spend": Decimal("30.30"), "purchased_since": D("2025-01-11")}, set()),
    ({"min_total_spend": Decimal("20.20"), "purchased_since": D("2025-01-11")}, {"C1"}),
    ({"min_total_spend": Decimal("0"), "purchased_since": D("2026-01-01")},
     {"C1", "C2", "C3", "C4", "C5"}),
    ({"purchased_since": D("2030-01-01")}, {"C1", "C2", "C3", "C4", "C5"}),  # alone: no limit
    ({"min_total_spend": Decimal("1e30")}, set()),
]  # fmt: skip


@pytest.fixture
def scenario(store: SegmentStore, tmp_path: Path) -> SegmentStore:
    import_customers(store.engine, SCENARIO, tmp_path)
    return store


def test_members_of_a_hand_checked_scenario(scenario: SegmentStore) -> None:
    for fields, members in SCENARIO_SEGMENTS:
        segment_filter = SegmentFilter(**fields)
        assert expected(SCENARIO, segment_filter) == members, fields  # the rule agrees
        scenario.define(Segment("target", "Target", "", segment_filter))
        found = scenario.members("target")
        assert external_ids(scenario.engine, found) == members, fields
        preview = scenario.preview("target", now=T0)
        assert preview == SegmentPreview(len(members), None, size_bucket(len(members))), fields
        assert scenario.preview(segment_filter, now=T0) == preview, fields


def test_all_is_every_customer(scenario: SegmentStore) -> None:
    assert scenario.members(ALL_CUSTOMERS) is None
    assert scenario.preview(ALL_CUSTOMERS, now=T0) == SegmentPreview(5, None, 32)


def grant(
    external_id: str,
    *,
    at: datetime = T0 - timedelta(days=1),
    recipient: str = BLUEWATER,
    event_type: EventType = EventType.GIVEN,
    expires_at: datetime | None = None,
) -> tuple[str, NewConsentEvent]:
    offered = event_type is EventType.GIVEN
    return external_id, NewConsentEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        purpose=CROSS_SELL,
        recipient=recipient,
        collected_at=at,
        collection_method=CollectionMethod.WEB_FORM,
        actor="crm-sync",
        channels=(Channel.EMAIL,) if offered else (),
        notice=NOTICE if offered else None,
        expires_at=expires_at,
    )


def test_preview_counts_the_consented_part(scenario: SegmentStore) -> None:
    ledger = Ledger(
        scenario.engine,
        origin="accord/node/solent-boats",
        controller="solent-boats",
        signing_key=SigningKey.generate(),
        now=lambda: T0,
    )
    ledger.record(
        [
            grant("C1"),
            grant("C2", recipient="*"),  # any partner under an agreement
            grant("C3", recipient="other-partner"),
            grant("C4", expires_at=T0 + timedelta(days=1)),
            grant("C5"),
            grant("C5", event_type=EventType.WITHDRAWN, at=T0 - timedelta(hours=1)),
            grant("X9"),  # a consent subject who is not a customer
        ]
    )

    def preview(target: str, now: datetime = T0, recipient: str = BLUEWATER) -> SegmentPreview:
        return scenario.preview(
            target, ledger=ledger, purpose=CROSS_SELL, recipient=recipient, now=now
        )

    assert preview(ALL_CUSTOMERS) == SegmentPreview(5, 3, 32)  # C1, C2, C4
    later = preview(ALL_CUSTOMERS, now=T0 + timedelta(days=2))
    assert later.consented_customers == 2  # C4's consent expired
    scenario.define(Segment("gb", "GB", "", SegmentFilter(countries=("GB", "FR"))))
    assert preview("gb") == SegmentPreview(3, 2, 32)
    other = preview("gb", recipient="other-partner")
    assert other.consented_customers == 2  # C2 (any partner) and C3
    with pytest.raises(ValueError, match="together"):
        scenario.preview("gb", now=T0, ledger=ledger, purpose=CROSS_SELL)
    with pytest.raises(ValueError, match="ledger"):
        scenario.preview("gb", now=T0, purpose=CROSS_SELL, recipient=BLUEWATER)


def test_preview_buckets_the_consented_count_not_the_segment(tmp_path: Path) -> None:
    engine = open_store(database_url(str(tmp_path / "store.db")))
    try:
        many = [Customer(f"C{i}", country="GB") for i in range(40)]
        import_customers(engine, many, tmp_path)
        ledger = Ledger(
            engine, origin="accord/node/x", controller="x", signing_key=SigningKey.generate()
        )
        ledger.record([grant(c.external_id) for c in many[:35]])
        store = SegmentStore(engine)
        assert store.preview(ALL_CUSTOMERS, now=T0) == SegmentPreview(40, None, 40)
        consented = store.preview(
            ALL_CUSTOMERS, now=T0, ledger=ledger, purpose=CROSS_SELL, recipient=BLUEWATER
        )
        assert consented == SegmentPreview(40, 35, size_bucket(35))
    finally:
        engine.dispose()


# --- members: the property (SQLite) ----------------------------------------------------

COUNTRIES = ("GB", "FR", "DE")
AGE_BANDS = ("18-24", "35-44", "65+")
REGIONS = ("London", "Wales", "Île-de-France")
TIERS = ("none", "bronze", "gold")
INTERESTS = ("sailing", "diving", "golf")
CHANNELS = ("email", "phone", "post", "sms")
CATEGORIES = ("boats", "travel", "fuel")
DAYS = st.dates(min_value=date(2024, 1, 1), max_value=date(2025, 12, 31))
AMOUNTS = st.sampled_from(
    [Decimal(v) for v in ("0.00", "0.10", "0.20", "10.10", "20.20", "99.99", "250.00")]
) | st.decimals(min_value=0, max_value=300, places=2)


def _maybe(values: Sequence[str]) -> st.SearchStrategy[str | None]:
    return st.none() | st.sampled_from(values)


@st.composite
def customers(draw: st.DrawFn) -> list[Customer]:
    count = draw(st.integers(min_value=0, max_value=20))
    return [
        Customer(
            f"C{i}",
            country=draw(_maybe(COUNTRIES)),
            age_band=draw(_maybe(AGE_BANDS)),
            region=draw(_maybe(REGIONS)),
            loyalty_tier=draw(_maybe(TIERS)),
            interests=draw(st.frozensets(st.sampled_from(INTERESTS))),
            channels=draw(st.frozensets(st.sampled_from(CHANNELS))),
            purchases=tuple(
                draw(st.lists(st.tuples(DAYS, st.sampled_from(CATEGORIES), AMOUNTS), max_size=4))
            ),
        )
        for i in range(count)
    ]


LIST_FIELDS: dict[str, st.SearchStrategy[tuple[str, ...]]] = {
    name: st.lists(st.sampled_from(values), min_size=1, max_size=3).map(tuple)
    for name, values in (
        ("countries", (*COUNTRIES, "US")),
        ("age_bands", (*AGE_BANDS, "55-64")),
        ("regions", (*REGIONS, "Bretagne")),
        ("interests", (*INTERESTS, "chess")),
        ("loyalty_tiers", (*TIERS, "platinum")),
        ("channels", CHANNELS),
        ("purchase_categories", (*CATEGORIES, "books")),
    )
}
CATEGORY = "purchase_categories"
SPENDS = (
    AMOUNTS
    | st.decimals(min_value=0, max_value=600, places=3)
    | st.sampled_from([Decimal("30.30"), Decimal("0.30")])
)


@st.composite
def filters(draw: st.DrawFn) -> SegmentFilter:
    """Up to two of the customer fields (with all of them, nearly every segment is empty);
    the purchase fields, whose interplay is the subtle part, half of the time each."""
    names = draw(st.sets(st.sampled_from(sorted(set(LIST_FIELDS) - {CATEGORY})), max_size=2))
    return SegmentFilter(
        **{name: draw(LIST_FIELDS[name]) for name in sorted(names)},
        purchase_categories=draw(st.just(()) | LIST_FIELDS[CATEGORY]),
        purchased_since=draw(st.none() | DAYS),
        min_total_spend=draw(st.none() | SPENDS),
    )


@pytest.fixture(scope="module")
def property_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SegmentStore]:
    folder = tmp_path_factory.mktemp("segments-property")
    engine = open_store(database_url(str(folder / "store.db")))
    try:
        yield SegmentStore(engine)
    finally:
        engine.dispose()


def _clear(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in (PurchaseRow, InterestRow, IdentifierRow, CustomerRow):
            connection.execute(delete(table))


@settings(max_examples=30, deadline=None)
@given(population=customers(), segment_filters=st.lists(filters(), min_size=1, max_size=10))
def test_members_in_sql_are_the_rule(
    property_store: SegmentStore, population: list[Customer], segment_filters: list[SegmentFilter]
) -> None:
    engine = property_store.engine
    _clear(engine)
    with tempfile.TemporaryDirectory() as folder:
        import_customers(engine, population, Path(folder))
    for segment_filter in segment_filters:
        property_store.define(Segment("target", "Target", "", segment_filter))
        members = property_store.members("target")
        assert external_ids(engine, members) == expected(population, segment_filter)
        assert property_store.preview(segment_filter, now=T0).customers == len(members or ())
