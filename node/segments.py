"""Segments: named filters over a node's customer store. Plain Python, no SQL.

A filter is AND across fields and OR within a field; an empty field does not constrain.
The store adapter (``node._segments``) turns a filter into SQL; ``matches`` is the same
rule over one customer, which the property test holds the SQL to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from node.errors import InvalidSegment
from node.records import AGE_BANDS, CHANNELS, LOYALTY_TIERS

__all__ = ["ALL_CUSTOMERS", "CustomerFacts", "Segment", "SegmentFilter"]

ALL_CUSTOMERS: Final = "all"  # built in: every customer of the store
_SLUG: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}\Z")
_WORD: Final = re.compile(r"^[a-z0-9][a-z0-9 _&/-]{0,63}\Z")
_COUNTRY: Final = re.compile(r"^[A-Z]{2}\Z")


@dataclass(frozen=True, slots=True)
class SegmentFilter:
    countries: tuple[str, ...] = ()
    age_bands: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    interests: tuple[str, ...] = ()  # any of
    loyalty_tiers: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()  # CRM channel preferences, any of
    purchase_categories: tuple[str, ...] = ()  # a purchase in any of (since purchased_since)
    purchased_since: date | None = None
    min_total_spend: Decimal | None = None  # over the purchases counted

    def check(self) -> None:
        """Raise ``InvalidSegment`` naming the first value outside its vocabulary."""
        for country in self.countries:
            if not _COUNTRY.match(country):
                raise InvalidSegment("countries are ISO 3166 alpha-2 codes like GB")
        _within(self.age_bands, AGE_BANDS, "age_bands")
        _within(self.loyalty_tiers, LOYALTY_TIERS, "loyalty_tiers")
        _within(self.channels, CHANNELS, "channels")
        for word in (*self.interests, *self.purchase_categories):
            if not _WORD.match(word):
                raise InvalidSegment("interests and categories are short lower-case words")
        for region in self.regions:
            if not region or len(region) > 128:
                raise InvalidSegment("regions are 1-128 characters")
        if self.min_total_spend is not None and (
            not self.min_total_spend.is_finite() or self.min_total_spend < 0
        ):
            raise InvalidSegment("min_total_spend is a non-negative amount")

    def to_json(self) -> dict[str, Any]:
        return {
            "countries": list(self.countries),
            "age_bands": list(self.age_bands),
            "regions": list(self.regions),
            "interests": list(self.interests),
            "loyalty_tiers": list(self.loyalty_tiers),
            "channels": list(self.channels),
            "purchase_categories": list(self.purchase_categories),
            "purchased_since": None if self.purchased_since is None else str(self.purchased_since),
            "min_total_spend": None if self.min_total_spend is None else str(self.min_total_spend),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SegmentFilter:
        unknown = set(data) - set(cls().to_json())
        if unknown:
            raise InvalidSegment(f"unknown filter fields: {', '.join(sorted(unknown))}")
        try:
            since = data.get("purchased_since")
            spend = data.get("min_total_spend")
            result = cls(
                countries=tuple(c.upper() for c in data.get("countries") or ()),
                age_bands=tuple(data.get("age_bands") or ()),
                regions=tuple(data.get("regions") or ()),
                interests=tuple(i.lower() for i in data.get("interests") or ()),
                loyalty_tiers=tuple(t.lower() for t in data.get("loyalty_tiers") or ()),
                channels=tuple(c.lower() for c in data.get("channels") or ()),
                purchase_categories=tuple(c.lower() for c in data.get("purchase_categories") or ()),
                purchased_since=None if since in (None, "") else date.fromisoformat(str(since)),
                min_total_spend=None if spend in (None, "") else Decimal(str(spend)),
            )
        except (AttributeError, TypeError, ValueError, InvalidOperation) as exc:
            raise InvalidSegment(f"the filter is malformed ({exc})") from exc
        result.check()
        return result

    def canonical(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """What a filter looks at for one customer (for ``Segment.matches``)."""

    country: str | None
    age_band: str | None
    region: str | None
    loyalty_tier: str | None
    interests: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    purchases: tuple[tuple[date, str, Decimal], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Segment:
    segment_id: str
    title: str
    description: str
    filter: SegmentFilter
    version: int = 1

    def check(self) -> None:
        if not _SLUG.match(self.segment_id) or self.segment_id == ALL_CUSTOMERS:
            raise InvalidSegment(
                "a segment id is a lower-case slug of letters, digits and hyphens (not 'all')"
            )
        if not self.title or len(self.title) > 200:
            raise InvalidSegment("a segment's title is 1-200 characters")
        if len(self.description) > 2000:
            raise InvalidSegment("a segment's description is at most 2000 characters")
        self.filter.check()

    def matches(self, customer: CustomerFacts) -> bool:
        """The filter's rule over one customer (the SQL adapter must agree)."""
        f = self.filter
        if f.countries and customer.country not in f.countries:
            return False
        if f.age_bands and customer.age_band not in f.age_bands:
            return False
        if f.regions and customer.region not in f.regions:
            return False
        if f.loyalty_tiers and customer.loyalty_tier not in f.loyalty_tiers:
            return False
        if f.interests and not customer.interests & set(f.interests):
            return False
        if f.channels and not customer.channels & set(f.channels):
            return False
        counted = [
            (day, category, amount)
            for day, category, amount in customer.purchases
            if f.purchased_since is None or day >= f.purchased_since
        ]
        if f.purchase_categories and not any(c in f.purchase_categories for _, c, _ in counted):
            return False
        if f.min_total_spend is not None:
            return sum((a for _, _, a in counted), Decimal(0)) >= f.min_total_spend
        return True


def _within(values: Iterable[str], allowed: tuple[str, ...], name: str) -> None:
    for value in values:
        if value not in allowed:
            raise InvalidSegment(f"{name} must be among {', '.join(allowed)}")
