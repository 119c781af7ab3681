"""Segments in the customer store: definitions in ``node_segments``, members computed in SQL.

The rule is ``Segment.matches`` (node/segments.py); this adapter states the same rule in
SQL over ``customers``, ``customer_interests`` and ``purchases``, and the property test in
tests/node/test_segments.py holds the two to each other. Per filter field:

* countries, age bands, regions, loyalty tiers: the customer's value is among them;
* interests: the customer has at least one of them (``EXISTS`` over the child table);
* channels: at least one of the customer's channel columns is true;
* purchase categories: a purchase of one of them, on or after ``purchased_since``;
* minimum total spend: the purchases on or after ``purchased_since`` add up to at least
  the minimum. Sums are taken in whole cents: SQLite keeps ``NUMERIC`` amounts as
  binary floating point, where 10.10 + 20.20 < 30.30; cents are exact on both backends
  because imported amounts have at most two decimals.

An empty field does not constrain; fields combine with AND. The built-in segment ``all``
is every customer; it is not stored and cannot be redefined.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_CEILING
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    case,
    cast,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from consent import Ledger
from node._tables import CustomerRow, InterestRow, PurchaseRow, SegmentRow
from node.blinding import size_bucket
from node.errors import InvalidSegment, SegmentUnknown
from node.segments import ALL_CUSTOMERS, Segment, SegmentFilter

__all__ = ["BUILT_IN_ALL", "SegmentPreview", "SegmentStore"]

_customers = CustomerRow.__table__  # type: ignore[attr-defined]
_interests = InterestRow.__table__  # type: ignore[attr-defined]
_purchases = PurchaseRow.__table__  # type: ignore[attr-defined]
_segments = SegmentRow.__table__  # type: ignore[attr-defined]

BUILT_IN_ALL: Final = Segment(
    segment_id=ALL_CUSTOMERS,
    title="All customers",
    description="Every customer in the store (built in).",
    filter=SegmentFilter(),
)
# A minimum spend above this many cents matches nobody (and would overflow SQLite's
# 64-bit integers as a parameter).
_MAX_CENTS: Final = 1 << 62


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SegmentPreview:
    """What a segment holds now, for the node's own operator (never published as is).

    ``consented_customers`` is counted only when a purpose and recipient were asked
    about; ``size_bucket`` rounds the consented count if there is one, else the count
    of customers.
    """

    customers: int
    consented_customers: int | None
    size_bucket: int


class SegmentStore:
    """The node's segment definitions and their members, over one database."""

    def __init__(self, engine: Engine, *, now: Callable[[], datetime] = _utc_now) -> None:
        self.engine = engine
        self._now = now

    # --- definitions ----------------------------------------------------------------

    def define(self, segment: Segment) -> tuple[Segment, bool]:
        """Create or update ``segment``; return it as stored and whether it is new.

        The stored version starts at 1 and goes up by one whenever the filter changes;
        a new title or description alone keeps it (``segment.version`` is ignored).
        Values within a filter field are sorted and de-duplicated (OR within a field,
        so order carries no meaning), so re-ordering them is no change.
        """
        if segment.segment_id == ALL_CUSTOMERS:
            raise InvalidSegment(
                "'all' is the built-in segment of every customer: choose another id"
            )
        segment.check()
        segment = replace(segment, filter=_normalized(segment.filter))
        for attempt in range(2):
            try:
                with self.engine.begin() as connection:
                    created = self._upsert(connection, segment)
                    stored = self._read(connection, segment.segment_id)
                assert stored is not None
                return stored, created
            except IntegrityError:
                # Another writer inserted the same id between our update and insert:
                # the second attempt updates its row.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _upsert(self, connection: Connection, segment: Segment) -> bool:
        t = _segments.c
        canonical = segment.filter.canonical()
        stamp = self._now().astimezone(UTC)  # stored in UTC: SQLite keeps no offset
        now = literal(stamp, t.updated_at.type)
        same_filter = t.filter == canonical
        unchanged = and_(
            same_filter, t.title == segment.title, t.description == segment.description
        )
        # One statement: the row lock (PostgreSQL) or write lock (SQLite) it takes makes
        # concurrent redefinitions bump the version once each, never lose a bump.
        result = connection.execute(
            update(_segments)
            .where(t.segment_id == segment.segment_id)
            .values(
                version=case((same_filter, t.version), else_=t.version + 1),
                updated_at=case((unchanged, t.updated_at), else_=now),
                filter=canonical,
                title=segment.title,
                description=segment.description,
            )
        )
        if result.rowcount:
            return False
        connection.execute(
            insert(_segments).values(
                segment_id=segment.segment_id,
                title=segment.title,
                description=segment.description,
                filter=canonical,
                version=1,
                created_at=stamp,
                updated_at=stamp,
            )
        )
        return True

    def get(self, segment_id: str) -> Segment:
        """The segment ``segment_id`` (``all`` is built in); ``SegmentUnknown`` if none."""
        if segment_id == ALL_CUSTOMERS:
            return BUILT_IN_ALL
        with self.engine.connect() as connection:
            found = self._read(connection, segment_id)
        if found is None:
            raise SegmentUnknown(f"no segment {segment_id!r} is defined on this node")
        return found

    def list(self) -> list[Segment]:
        """The defined segments by id (the built-in ``all`` is not among them)."""
        with self.engine.connect() as connection:
            rows = connection.execute(_select_segments().order_by(_segments.c.segment_id))
            return [_segment(row) for row in rows]

    def delete(self, segment_id: str) -> bool:
        """Delete a defined segment; True if there was one.

        Flows under agreements that name it then fail with ``SegmentUnknown``.
        """
        if segment_id == ALL_CUSTOMERS:
            raise InvalidSegment("'all' is built in and cannot be deleted")
        with self.engine.begin() as connection:
            result = connection.execute(
                delete(_segments).where(_segments.c.segment_id == segment_id)
            )
        return bool(result.rowcount)

    @staticmethod
    def _read(connection: Connection, segment_id: str) -> Segment | None:
        row = connection.execute(
            _select_segments().where(_segments.c.segment_id == segment_id)
        ).first()
        return None if row is None else _segment(row)

    # --- members --------------------------------------------------------------------

    def members(self, segment_id: str) -> set[int] | None:
        """Ids of the customers in the segment; None for ``all`` (every customer)."""
        segment = self.get(segment_id)
        if segment.segment_id == ALL_CUSTOMERS:
            return None
        query = select(_customers.c.id).where(*_conditions(segment.filter))
        with self.engine.connect() as connection:
            return set(connection.execute(query).scalars())

    def preview(
        self,
        target: str | SegmentFilter,
        *,
        ledger: Ledger | None = None,
        purpose: str | None = None,
        recipient: str | None = None,
        now: datetime,
    ) -> SegmentPreview:
        """Count a segment (by id) or a filter, and its consented part if asked.

        With ``purpose`` and ``recipient`` (and the node's ``ledger``), members count as
        consented when their external id is among ``ledger.valid_subjects`` at ``now``.
        """
        if (purpose is None) != (recipient is None):
            raise ValueError("purpose and recipient are given together or not at all")
        if purpose is not None and ledger is None:
            raise ValueError("counting consented customers needs the node's ledger")
        if isinstance(target, SegmentFilter):
            target.check()
            segment_filter = target
        else:
            segment_filter = self.get(target).filter
        query = select(_customers.c.external_id).where(*_conditions(segment_filter))
        valid: Iterable[str] = ()
        if ledger is not None and purpose is not None and recipient is not None:
            valid = ledger.valid_subjects(purpose=purpose, recipient=recipient, now=now)
        consented_ids = set(valid)
        customers = consented = 0
        with self.engine.connect() as connection:
            for external_id in connection.execute(query).scalars():
                customers += 1
                consented += external_id in consented_ids
        if purpose is None:
            return SegmentPreview(customers, None, size_bucket(customers))
        return SegmentPreview(customers, consented, size_bucket(consented))


def _normalized(segment_filter: SegmentFilter) -> SegmentFilter:
    def tidy(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(values)))

    f = segment_filter
    return replace(
        f,
        countries=tidy(f.countries),
        age_bands=tidy(f.age_bands),
        regions=tidy(f.regions),
        interests=tidy(f.interests),
        loyalty_tiers=tidy(f.loyalty_tiers),
        channels=tidy(f.channels),
        purchase_categories=tidy(f.purchase_categories),
    )


def _conditions(f: SegmentFilter) -> list[ColumnElement[bool]]:
    """The filter as WHERE conditions on ``customers`` (see the module docstring)."""
    c, i, p = _customers.c, _interests.c, _purchases.c
    where: list[ColumnElement[bool]] = []
    for column, values in (
        (c.country, f.countries),
        (c.age_band, f.age_bands),
        (c.region, f.regions),
        (c.loyalty_tier, f.loyalty_tiers),
    ):
        if values:
            where.append(column.in_(values))
    if f.interests:
        where.append(
            select(i.customer_id).where(i.customer_id == c.id, i.interest.in_(f.interests)).exists()
        )
    if f.channels:
        where.append(or_(*(c[f"channel_{name}"].is_(True) for name in sorted(set(f.channels)))))
    counted: list[ColumnElement[bool]] = []
    if f.purchased_since is not None:
        counted.append(p.purchased_on >= f.purchased_since)
    if f.purchase_categories:
        where.append(
            select(p.customer_id)
            .where(p.customer_id == c.id, p.category.in_(f.purchase_categories), *counted)
            .exists()
        )
    # A minimum of zero holds for everyone (an empty sum is zero), so only a positive one
    # constrains: customers whose counted purchases reach it.
    if f.min_total_spend is not None and f.min_total_spend > 0:
        cents = f.min_total_spend * 100
        if cents > _MAX_CENTS:
            where.append(false())
        else:
            bound = int(cents.to_integral_value(rounding=ROUND_CEILING))
            spent = func.sum(cast(func.round(p.amount * 100), BigInteger))
            where.append(
                c.id.in_(
                    select(p.customer_id)
                    .where(*counted)
                    .group_by(p.customer_id)
                    .having(spent >= bound)
                )
            )
    return where


def _select_segments() -> Select[Any]:
    t = _segments.c
    return select(t.segment_id, t.title, t.description, t.filter, t.version)


def _segment(row: Any) -> Segment:
    return Segment(
        segment_id=row.segment_id,
        title=row.title,
        description=row.description,
        filter=SegmentFilter.from_json(json.loads(row.filter)),
        version=int(row.version),
    )
