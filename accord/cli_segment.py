"""``accord segment …``: define, list and preview segments over the node's own customers,
and publish them to the broker's catalog."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
import typer
from rich.markup import escape
from rich.table import Table

from accord._options import (
    DEFAULT_DB,
    DEFAULT_KEYS,
    DbOption,
    JsonOption,
    KeysOption,
    engine_for,
    fail,
    node_context,
    out,
    print_json,
)
from accord.client import operator_stub
from consent import format_time, purpose
from consent.agreements import OutputMode
from consent.errors import ConsentError
from consent.serde import mode_to_proto
from kernel.errors import KernelError
from kernel.keys import check_party_name
from kernel.wire.accord.node.v1 import node_pb2
from node import ALL_CUSTOMERS, BUILT_IN_ALL, Segment, SegmentFilter, SegmentStore
from node.errors import InvalidSegment, NodeError, SegmentUnknown

segment_app = typer.Typer(
    help="Define and preview segments: named filters over the node's customers.",
    no_args_is_help=True,
)

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
_AMOUNT = re.compile(r"^\d{1,12}(?:\.\d{1,2})?\Z")

SegmentArgument = Annotated[
    str, typer.Argument(help="The segment's id: a lower-case slug like sailing-families.")
]


def _values(help_text: str, metavar: str) -> Any:
    return typer.Option(help=f"{help_text} (repeatable: any of them).", metavar=metavar)


@segment_app.command("define")
def segment_define(
    segment_id: SegmentArgument,
    title: Annotated[str, typer.Option("--title", help="A short title for marketers.")],
    description: Annotated[str, typer.Option(help="What the segment is for.")] = "",
    country: Annotated[list[str] | None, _values("ISO 3166 country code", "CC")] = None,
    age_band: Annotated[list[str] | None, _values("Age band, e.g. 35-44", "BAND")] = None,
    region: Annotated[list[str] | None, _values("Region as imported", "REGION")] = None,
    interest: Annotated[list[str] | None, _values("Interest", "WORD")] = None,
    loyalty_tier: Annotated[list[str] | None, _values("Loyalty tier", "TIER")] = None,
    channel: Annotated[list[str] | None, _values("Channel the CRM may use", "CHANNEL")] = None,
    purchase_category: Annotated[
        list[str] | None, _values("Category of a purchase", "WORD")
    ] = None,
    purchased_since: Annotated[
        str | None,
        typer.Option(help="Count only purchases on or after this day.", metavar="YYYY-MM-DD"),
    ] = None,
    min_spend: Annotated[
        str | None,
        typer.Option(help="Minimum total of the purchases counted.", metavar="AMOUNT"),
    ] = None,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Define a segment, or redefine it: its version goes up only when the filter changes."""
    if purchased_since is not None and not _ISO_DATE.match(purchased_since):
        fail("--purchased-since takes a day as YYYY-MM-DD", code=2)
    if min_spend is not None and not _AMOUNT.match(min_spend):
        fail("--min-spend takes an amount like 100 or 99.50", code=2)
    try:
        segment_filter = SegmentFilter.from_json(
            {
                "countries": country or [],
                "age_bands": age_band or [],
                # As the import stores them: trimmed, NFC (a terminal may type NFD).
                "regions": [unicodedata.normalize("NFC", r.strip()) for r in region or []],
                "interests": interest or [],
                "loyalty_tiers": loyalty_tier or [],
                "channels": channel or [],
                "purchase_categories": purchase_category or [],
                "purchased_since": purchased_since,
                "min_total_spend": min_spend,
            }
        )
        segment = Segment(segment_id, title, description, segment_filter)
        if segment_id == ALL_CUSTOMERS:
            raise InvalidSegment("'all' is the built-in segment of every customer")
        segment.check()
    except InvalidSegment as exc:
        fail(str(exc), code=2)
    engine = engine_for(db)
    try:
        store = SegmentStore(engine)
        try:
            before: Segment | None = store.get(segment_id)
        except SegmentUnknown:
            before = None
        stored, created = store.define(segment)
    except InvalidSegment as exc:
        fail(str(exc), code=2)
    except NodeError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    if as_json:
        print_json({**_segment_json(stored), "created": created})
        return
    if created:
        said = "defined"
    elif before is not None and before.version != stored.version:
        said = "redefined with a new filter"
    elif before == stored:
        said = "unchanged"
    else:
        said = "updated (same filter)"
    out.print(
        f"segment [bold]{stored.segment_id}[/] {said}: version {stored.version}", highlight=False
    )
    out.print(f"  filter: {escape(_describe(stored.filter))}", highlight=False)


@segment_app.command("list")
def segment_list(db: DbOption = DEFAULT_DB, as_json: JsonOption = False) -> None:
    """List the node's segments (the built-in `all` first)."""
    engine = engine_for(db)
    try:
        segments = SegmentStore(engine).list()
    except NodeError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    every = [BUILT_IN_ALL, *segments]
    if as_json:
        print_json({"segments": [_segment_json(s) for s in every]})
        return
    table = Table(title="segments")
    for column in ("id", "version", "title", "filter"):
        table.add_column(column)
    for segment in every:
        table.add_row(
            segment.segment_id,
            str(segment.version),
            escape(segment.title),
            escape(_describe(segment.filter)),
        )
    out.print(table)


@segment_app.command("preview")
def segment_preview(
    segment_id: SegmentArgument,
    purpose_id: Annotated[
        str | None,
        typer.Option("--purpose", help="Also count members with consent for this purpose…"),
    ] = None,
    partner: Annotated[
        str | None, typer.Option("--partner", help="…to this partner node (with --purpose).")
    ] = None,
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    as_json: JsonOption = False,
) -> None:
    """Count a segment's customers here, and its consented part for a purpose and partner.

    The counts are exact and stay on this node; only the size bucket is ever published.
    """
    if (purpose_id is None) != (partner is None):
        fail("--purpose and --partner go together", code=2)
    if purpose_id is not None and partner is not None:
        try:
            purpose(purpose_id)
            check_party_name(partner)
        except (ConsentError, KernelError) as exc:
            fail(str(exc), code=2)
    now = datetime.now(UTC)
    if purpose_id is None:
        engine = engine_for(db)
        ledger = None
    else:
        context = node_context(db, keys)
        engine, ledger = context.engine, context.ledger
    try:
        store = SegmentStore(engine)
        segment = store.get(segment_id)
        preview = store.preview(
            segment.filter, ledger=ledger, purpose=purpose_id, recipient=partner, now=now
        )
    except NodeError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    result = {
        "segment_id": segment.segment_id,
        "version": segment.version,
        "customers": preview.customers,
        "consented_customers": preview.consented_customers,
        "purpose": purpose_id,
        "partner": partner,
        "size_bucket": preview.size_bucket,
        "at": format_time(now),
    }
    if as_json:
        print_json(result)
        return
    table = Table(title=f"segment {segment.segment_id} (version {segment.version})")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("customers", str(preview.customers))
    if preview.consented_customers is not None:
        table.add_row(f"consented: {purpose_id} → {partner}", str(preview.consented_customers))
    table.add_row("published as (size bucket)", str(preview.size_bucket))
    out.print(table)


def _segment_json(segment: Segment) -> dict[str, Any]:
    return {
        "segment_id": segment.segment_id,
        "title": segment.title,
        "description": segment.description,
        "version": segment.version,
        "filter": segment.filter.to_json(),
        "built_in": segment.segment_id == ALL_CUSTOMERS,
    }


def _describe(segment_filter: SegmentFilter) -> str:
    """The filter in one line: AND across the parts, `|` (any of) within one."""
    f = segment_filter
    parts = [
        f"{name} {'|'.join(values)}"
        for name, values in (
            ("country", f.countries),
            ("age", f.age_bands),
            ("region", f.regions),
            ("interest", f.interests),
            ("tier", f.loyalty_tiers),
            ("channel", f.channels),
            ("bought", f.purchase_categories),
        )
        if values
    ]
    if f.purchased_since is not None:
        parts.append(f"purchases since {f.purchased_since}")
    if f.min_total_spend is not None:
        parts.append(f"spend ≥ {f.min_total_spend}")
    return "; ".join(parts) or "every customer"


@segment_app.command("publish")
def segment_publish(
    segment_id: SegmentArgument,
    purposes: Annotated[
        list[str], typer.Option("--purpose", help="A purpose the segment is offered for.")
    ],
    modes: Annotated[
        list[OutputMode] | None, typer.Option("--mode", help="An output mode offered.")
    ] = None,
    fields: Annotated[
        list[str] | None, typer.Option("--field", help="A field that may be released.")
    ] = None,
    node: Annotated[
        str, typer.Option("--node", envvar="ACCORD_NODE", help="The node's service (HOST:PORT).")
    ] = "127.0.0.1:7701",
    as_json: JsonOption = False,
) -> None:
    """Publish a segment to the broker's catalog: name, description and a size bucket of
    its customers who consent to partners — never an exact count (through the running node)."""
    for name in purposes:
        try:
            purpose(name)
        except ConsentError as exc:
            fail(str(exc), code=2)
    try:
        stub = operator_stub(node)
        response = stub.PublishSegment(
            node_pb2.PublishSegmentRequest(
                segment_id=segment_id,
                purposes=purposes,
                output_modes=[mode_to_proto(m) for m in modes or ()],
                releasable_fields=fields or [],
            ),
            timeout=60,
        )
    except KernelError as exc:
        fail(str(exc), code=2)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            fail("the node's service is not reachable: is `accord node serve` running (--node)?")
        fail(exc.details() or exc.code().name)
    result = {
        "segment_id": segment_id,
        "segment_version": response.segment_version,
        "size_bucket": response.size_bucket,
    }
    if as_json:
        print_json(result)
        return
    out.print(
        f"published {segment_id} (version {response.segment_version}) to the broker's catalog "
        f"as about {response.size_bucket} customers",
        highlight=False,
    )
