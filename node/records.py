"""Customer records: the import's validation rules, as plain typed Python.

A row from a CRM export (CSV or JSON Lines, after column mapping) becomes a
`CustomerRecord` or raises `InvalidRow` with a sentence that says what is wrong and never
echoes an identifier. No database, no gRPC: the storage layer takes records as they are.

Columns (docs/import.md has the full table):
``external_id`` (required), ``email`` and ``phone`` (each may hold several values
separated by ``;``; at least one identifier is required), ``first_name``, ``last_name``,
``country`` (ISO 3166 alpha-2), ``age_band``, ``region``, ``interests`` (``;``-separated),
``channels`` (``email``, ``phone``, ``post``, ``sms``), ``loyalty_tier`` and ``purchases``
(``date:category:amount`` items separated by ``;`` in CSV, a list of objects in JSONL).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

import phonenumbers

from kernel.crypto import hash_to_curve, sha256
from node.errors import InvalidIdentifier, InvalidRow
from node.normalize import IdentifierKind, normalize_email, normalize_phone

COLUMNS: tuple[str, ...] = (
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "country",
    "age_band",
    "region",
    "interests",
    "channels",
    "loyalty_tier",
    "purchases",
)
AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
LOYALTY_TIERS: tuple[str, ...] = ("none", "bronze", "silver", "gold", "platinum")
CHANNELS: tuple[str, ...] = ("email", "phone", "post", "sms")
LIST_SEPARATOR = ";"
_US = "\x1f"  # ASCII unit separator
_RS = "\x1e"  # ASCII record separator
MAX_IDENTIFIERS_PER_KIND = 8
MAX_TEXT = 128
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
_MAX_AMOUNT = Decimal("1e10")
_CENT = Decimal("0.01")
# A purchase item as exports write it (2025-06-01:sailing:1200.50): checked by one
# regular expression, it needs none of `_purchase`'s clean-up. A property test checks
# that both read every item alike.
_PLAIN_PURCHASE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}):([a-z0-9](?:[a-z0-9 _&/-]{0,62}[a-z0-9_&/-])?)"
    r":([0-9]{1,10}(?:\.[0-9]{1,2})?)\Z"
)
_TOKEN = re.compile(r"^[a-z0-9][a-z0-9 _&/-]{0,63}\Z")
_COUNTRIES = {code: code for code in phonenumbers.SUPPORTED_REGIONS}  # to the shared constant
_IDENTIFIER_COLUMNS = tuple((kind, kind.value) for kind in IdentifierKind)


@dataclass(frozen=True, slots=True)
class Identifier:
    kind: IdentifierKind
    value: str  # normalized (docs/normalization.md)
    point: bytes  # hash_to_curve(kind, value), 32 bytes


@dataclass(frozen=True, slots=True)
class Purchase:
    purchased_on: date
    category: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    external_id: str
    identifiers: tuple[Identifier, ...]
    first_name: str | None = None
    last_name: str | None = None
    country: str | None = None
    age_band: str | None = None
    region: str | None = None
    loyalty_tier: str | None = None
    interests: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    purchases: tuple[Purchase, ...] = ()

    def digest(self) -> bytes:
        """SHA-256 of the canonical form: equal records, equal digests, whatever the input order.

        Fields are joined with the ASCII unit and record separators, which validation
        keeps out of every field (control characters are refused), and a missing field is
        the empty string, which validation never returns, so the encoding is unambiguous.
        """
        parts = [
            self.external_id,
            _US.join(sorted([f"{i.kind.value}:{i.value}" for i in self.identifiers])),
            self.first_name or "",
            self.last_name or "",
            self.country or "",
            self.age_band or "",
            self.region or "",
            self.loyalty_tier or "",
            _US.join(sorted(self.interests)),
            _US.join(sorted(self.channels)),
            _US.join(
                sorted(
                    [
                        f"{p.purchased_on.isoformat()}:{p.category}:{p.amount}"
                        for p in self.purchases
                    ]
                )
            ),
        ]
        return sha256(_RS.join(parts).encode("utf-8"))


def parse_record(fields: Mapping[str, Any], *, default_region: str) -> CustomerRecord:
    """Validate one mapped row; raise `InvalidRow` naming the first rule it breaks."""
    external_id = _text(fields.get("external_id"), "external_id")
    if external_id is None:
        raise InvalidRow("external_id is missing")
    country = _country(fields.get("country"))
    identifiers = _identifiers(fields, phone_region=country or default_region)
    return CustomerRecord(
        external_id=external_id,
        identifiers=identifiers,
        first_name=_shared(_text(fields.get("first_name"), "first_name")),
        last_name=_shared(_text(fields.get("last_name"), "last_name")),
        country=country,
        age_band=_choice(fields.get("age_band"), "age_band", AGE_BANDS),
        region=_shared(_text(fields.get("region"), "region")),
        loyalty_tier=_choice(fields.get("loyalty_tier"), "loyalty_tier", LOYALTY_TIERS),
        interests=_interests(fields.get("interests")),
        channels=_channels(fields.get("channels")),
        purchases=_purchases(fields.get("purchases")),
    )


def _shared(text: str | None) -> str | None:
    """One object for every copy of a value that repeats across rows (names, regions,
    categories): a chunk's results then pickle each such value once, and the writer
    holds one copy instead of one per row."""
    return None if text is None else sys.intern(text)


def _items(value: Any, column: str) -> list[str]:
    """A list cell: a ``;``-separated string (CSV) or a JSON list of strings (JSONL)."""
    if value is None:
        return []
    if isinstance(value, str):
        if LIST_SEPARATOR not in value:  # most cells hold one item
            item = value.strip()
            return [item] if item else []
        parts = value.split(LIST_SEPARATOR)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = value
    else:
        raise InvalidRow(f"{column} must be text or a list of text")
    return [item for item in map(str.strip, parts) if item]


def _text(value: Any, column: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and column == "external_id":
        value = str(value)
    if not isinstance(value, str):
        raise InvalidRow(f"{column} must be text")
    text = value.strip()
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if not text:
        return None
    if len(text) > MAX_TEXT:
        raise InvalidRow(f"{column} is longer than {MAX_TEXT} characters")
    # isprintable() is a C-speed superset test: it is False for every control character
    # (and for spaces other than U+0020, which are allowed, so look closer then).
    if not text.isprintable() and any(unicodedata.category(ch)[0] == "C" for ch in text):
        raise InvalidRow(f"{column} contains control or unreadable characters")
    return text


def _country(value: Any) -> str | None:
    text = _text(value, "country")
    if text is None:
        return None
    code = _COUNTRIES.get(text.upper())
    if code is None:
        raise InvalidRow("country is not an ISO 3166 alpha-2 code")
    return code


def _choice(value: Any, column: str, allowed: tuple[str, ...]) -> str | None:
    text = _text(value, column)
    if text is None:
        return None
    choice = text.lower()
    if choice not in allowed:
        raise InvalidRow(f"{column} must be one of {', '.join(allowed)}")
    return allowed[allowed.index(choice)]  # the shared constant


def _identifiers(fields: Mapping[str, Any], *, phone_region: str) -> tuple[Identifier, ...]:
    found: dict[tuple[IdentifierKind, str], Identifier] = {}  # a repeat counts once
    for kind, column in _IDENTIFIER_COLUMNS:
        raw_values = _items(fields.get(column), column)
        if len(raw_values) > MAX_IDENTIFIERS_PER_KIND:
            raise InvalidRow(f"more than {MAX_IDENTIFIERS_PER_KIND} values in {column}")
        for position, raw in enumerate(raw_values, start=1):
            try:
                if kind is IdentifierKind.EMAIL:
                    value = normalize_email(raw)
                else:
                    value = normalize_phone(raw, phone_region)
            except InvalidIdentifier as exc:
                where = f"{column} #{position}" if len(raw_values) > 1 else column
                raise InvalidRow(f"{where}: {exc}") from exc
            if (kind, value) not in found:
                found[kind, value] = Identifier(kind, value, hash_to_curve(column, value))
    if not found:
        raise InvalidRow("no e-mail or phone: the customer could never be matched")
    return tuple(found.values())


def _interests(value: Any) -> tuple[str, ...]:
    interests: dict[str, None] = {}
    for item in _items(value, "interests"):
        token = unicodedata.normalize("NFC", item).lower()
        if not _TOKEN.match(token):
            raise InvalidRow(
                "interests must be short lower-case words (letters, digits, space, _ & / -)"
            )
        interests[sys.intern(token)] = None
    return tuple(interests)


def _channels(value: Any) -> tuple[str, ...]:
    channels: dict[str, None] = {}
    for item in _items(value, "channels"):
        channel = item.lower()
        if channel not in CHANNELS:
            raise InvalidRow(f"channels must be among {', '.join(CHANNELS)}")
        channels[channel] = None
    return tuple(channels)


def _purchases(value: Any) -> tuple[Purchase, ...]:
    if value is None or value == "":
        return ()
    # Every item's shape is checked before any item's fields, so the first rule a cell
    # breaks is named whatever its order.
    items: list[tuple[Any, Any, Any] | re.Match[str]] = []
    if isinstance(value, str):
        for item in _items(value, "purchases"):
            written_plainly = _PLAIN_PURCHASE.match(item)
            if written_plainly is not None:
                items.append(written_plainly)
                continue
            parts = item.split(":")
            if len(parts) != 3:
                raise InvalidRow("each purchase must read date:category:amount")
            items.append((parts[0], parts[1], parts[2]))
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
        items = [(v.get("date"), v.get("category"), v.get("amount")) for v in value]
    else:
        raise InvalidRow("purchases must be date:category:amount items or a list of objects")
    return tuple(
        _plain_purchase(item) if isinstance(item, re.Match) else _purchase(*item) for item in items
    )


def _plain_purchase(item: re.Match[str]) -> Purchase:
    """`_purchase` for an item `_PLAIN_PURCHASE` matched: nothing to strip or lower-case,
    the category is a token, the amount is in range with at most two decimals; only
    the calendar can still refuse the date."""
    day, category, amount = item.groups()
    try:
        purchased_on = date.fromisoformat(day)
    except ValueError:
        return _purchase(day, category, amount)  # which names the rule
    return Purchase(purchased_on, sys.intern(category), Decimal(amount).quantize(_CENT))


def _purchase(raw_date: Any, raw_category: Any, raw_amount: Any) -> Purchase:
    day = str(raw_date).strip()
    try:
        # fromisoformat alone would also take 20240101 and week dates; the rule is YYYY-MM-DD.
        if not _ISO_DATE.match(day):
            raise ValueError(day)
        purchased_on = date.fromisoformat(day)
    except ValueError:
        raise InvalidRow("purchase date must be YYYY-MM-DD") from None
    category = str(raw_category or "").strip().lower()
    if not _TOKEN.match(category):
        raise InvalidRow("purchase category must be a short lower-case word")
    try:
        amount = Decimal(str(raw_amount).strip())
    except InvalidOperation:
        raise InvalidRow("purchase amount must be a number") from None
    if not amount.is_finite() or amount < 0 or amount >= _MAX_AMOUNT:
        raise InvalidRow("purchase amount must be between 0 and 9,999,999,999.99")
    cents = amount.quantize(_CENT)
    if cents != amount:
        raise InvalidRow("purchase amount has more than two decimals")
    return Purchase(purchased_on, sys.intern(category), cents)
