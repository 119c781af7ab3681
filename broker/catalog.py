"""The catalog: segments nodes offer, by name, description and a padded size bucket.

Plain Python. A catalog entry says what partners may ask for, never who is in it; its
size is a bucket of the node's padding scheme (docs/matching.md "Size buckets"), so the
broker refuses any other number — an exact small count, compared over time, could
single out customers (docs/audiences.md "What we rejected").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

from broker.errors import CatalogEntryInvalid, NotAuthorized
from consent.agreements import RELEASABLE_FIELDS, OutputMode
from consent.errors import UnknownPurpose
from consent.purposes import purpose as lookup_purpose

__all__ = ["CatalogEntry", "check_entry", "is_size_bucket"]

SMALLEST_BUCKET: Final = 32
MAX_TITLE: Final = 200
MAX_DESCRIPTION: Final = 2000
_SEGMENT = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}\Z")


def is_size_bucket(size: int) -> bool:
    """Whether ``size`` is a padded size a node can publish: 32, or the next multiple of
    2^(bits − 5) of some count (the nodes' ``size_bucket``; the broker may not import the
    node, so the rule is restated here and a test pins the two together)."""
    if size < SMALLEST_BUCKET:
        return False
    step = 1 << max(0, size.bit_length() - 5)
    return size % step == 0


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    owner_node: str
    segment_id: str
    segment_version: int
    title: str
    description: str
    purposes: tuple[str, ...]
    output_modes: tuple[OutputMode, ...]
    releasable_fields: tuple[str, ...]
    size_bucket: int
    published_at: datetime


def check_entry(entry: CatalogEntry, *, caller: str) -> CatalogEntry:
    """The entry as the broker stores it (owner from the caller, lists de-duplicated);
    ``NotAuthorized`` or ``CatalogEntryInvalid`` naming the first rule it breaks."""
    if entry.owner_node and entry.owner_node != caller:
        raise NotAuthorized("a node publishes its own segments only")
    if not _SEGMENT.match(entry.segment_id):
        raise CatalogEntryInvalid(
            "segment_id is a lower-case slug of letters, digits and hyphens (at most 64)"
        )
    if entry.segment_version < 1:
        raise CatalogEntryInvalid("segment_version starts at 1")
    if not entry.title.strip() or len(entry.title) > MAX_TITLE:
        raise CatalogEntryInvalid(f"a segment needs a title of at most {MAX_TITLE} characters")
    if len(entry.description) > MAX_DESCRIPTION:
        raise CatalogEntryInvalid(f"the description is at most {MAX_DESCRIPTION} characters")
    if not entry.purposes:
        raise CatalogEntryInvalid("name at least one purpose the segment is offered for")
    for name in entry.purposes:
        try:
            lookup_purpose(name)
        except UnknownPurpose as exc:
            raise CatalogEntryInvalid(str(exc)) from None
    if not entry.output_modes:
        raise CatalogEntryInvalid("name at least one output mode the segment is offered in")
    unknown = set(entry.releasable_fields) - set(RELEASABLE_FIELDS)
    if unknown:
        raise CatalogEntryInvalid(f"fields that cannot be released: {', '.join(sorted(unknown))}")
    if entry.releasable_fields and OutputMode.RELEASE not in entry.output_modes:
        raise CatalogEntryInvalid("releasable fields are offered only with the release mode")
    if not is_size_bucket(entry.size_bucket):
        raise CatalogEntryInvalid(
            "size_bucket must be a padded size bucket (32, or a count rounded up to its "
            "bucket), never an exact count"
        )
    return replace(
        entry,
        owner_node=caller,
        purposes=tuple(dict.fromkeys(entry.purposes)),
        output_modes=tuple(dict.fromkeys(entry.output_modes)),
        releasable_fields=tuple(dict.fromkeys(entry.releasable_fields)),
    )
