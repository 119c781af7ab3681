"""The catalog: entry rules (broker.catalog) and the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from broker import BrokerStore
from broker.catalog import CatalogEntry, check_entry, is_size_bucket
from broker.errors import CatalogEntryInvalid, NotAuthorized
from consent.agreements import OutputMode
from node.blinding import size_bucket

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OWNER = "solent-boats"


def entry(**changes: object) -> CatalogEntry:
    values: dict[str, object] = {
        "owner_node": OWNER,
        "segment_id": "sailors",
        "segment_version": 1,
        "title": "Sailing enthusiasts",
        "description": "Customers who bought sailing gear in the last two years.",
        "purposes": ("marketing.cross_sell", "analytics.overlap"),
        "output_modes": (OutputMode.OVERLAP, OutputMode.RELEASE),
        "releasable_fields": ("first_name", "email"),
        "size_bucket": 1088,
        "published_at": NOW,
    }
    values.update(changes)
    return CatalogEntry(**values)  # type: ignore[arg-type]


def test_the_broker_accepts_exactly_the_buckets_nodes_publish() -> None:
    # The rule is restated in the broker (it may not import the node): pin the two.
    published = {size_bucket(count) for count in range(0, 20_000)}
    assert all(is_size_bucket(b) for b in published)
    assert [v for v in range(0, 20_000) if is_size_bucket(v)] == sorted(
        b for b in published if b < 20_000
    )


@pytest.mark.parametrize("size", [0, 1, 31, 33, 1025, 2080, 10_007])
def test_an_exact_count_is_refused(size: int) -> None:
    with pytest.raises(CatalogEntryInvalid, match="size bucket"):
        check_entry(entry(size_bucket=size), caller=OWNER)


def test_the_owner_comes_from_the_caller() -> None:
    checked = check_entry(entry(owner_node=""), caller=OWNER)
    assert checked.owner_node == OWNER
    with pytest.raises(NotAuthorized, match="its own segments"):
        check_entry(entry(), caller="bluewater-travel")


def test_lists_are_de_duplicated_in_order() -> None:
    checked = check_entry(
        entry(purposes=("marketing.cross_sell", "analytics.overlap", "marketing.cross_sell")),
        caller=OWNER,
    )
    assert checked.purposes == ("marketing.cross_sell", "analytics.overlap")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"segment_id": "Sailors!"}, "slug"),
        ({"segment_version": 0}, "starts at 1"),
        ({"title": " "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"description": "x" * 2001}, "description"),
        ({"purposes": ()}, "at least one purpose"),
        ({"purposes": ("marketing.spam",)}, "marketing.spam"),
        ({"output_modes": ()}, "at least one output mode"),
        ({"releasable_fields": ("password",)}, "password"),
        ({"output_modes": (OutputMode.MATCH,)}, "only with the release mode"),
    ],
)
def test_an_entry_that_breaks_a_rule_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogEntryInvalid, match=message):
        check_entry(entry(**changes), caller=OWNER)


def test_publishing_replaces_the_entry_and_listing_filters(engine: Engine) -> None:
    store = BrokerStore(engine)
    first = store.publish(check_entry(entry(), caller=OWNER))
    assert first == entry()
    replaced = store.publish(
        check_entry(
            entry(
                segment_version=2,
                size_bucket=1152,
                published_at=NOW + timedelta(hours=1),
                purposes=("marketing.cross_sell",),
            ),
            caller=OWNER,
        )
    )
    assert replaced.segment_version == 2 and replaced.size_bucket == 1152
    assert replaced.published_at == NOW + timedelta(hours=1)
    store.publish(check_entry(entry(segment_id="anglers", size_bucket=64), caller=OWNER))
    other = dataclasses.replace(
        entry(segment_id="families", output_modes=(OutputMode.MATCH,), releasable_fields=()),
        owner_node="bluewater-travel",
    )
    store.publish(check_entry(other, caller="bluewater-travel"))

    assert [(e.owner_node, e.segment_id) for e in store.catalog()] == [
        ("bluewater-travel", "families"),
        (OWNER, "anglers"),
        (OWNER, "sailors"),
    ]
    assert [e.segment_id for e in store.catalog(owner_node=OWNER)] == ["anglers", "sailors"]
    assert [e.segment_id for e in store.catalog(purpose="analytics.overlap")] == [
        "families",
        "anglers",
    ]
    assert [e.segment_id for e in store.catalog(owner_node=OWNER, purpose="service.support")] == []
    assert store.catalog_entry(OWNER, "anglers").output_modes == (
        OutputMode.OVERLAP,
        OutputMode.RELEASE,
    )
