"""Synthetic CRM exports for the demo and the benchmarks, with their ground truth.

People are drawn from one deterministic population (attributes depend only on the seed
and the person's index), so two companies that share a person export the *same*
identifiers — but each in its own house style, as real exports are: mixed case and stray
whitespace in e-mails, national and international phone formats, about 1% international
(IDN) domains, and about 1% bad rows. The generator records which rows it broke and who
is in both files, so demos and benchmarks check results against ground truth that does
not come from the code under test.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

FIRST_NAMES = (
    "Olivia",
    "Amelia",
    "Isla",
    "Ava",
    "Mia",
    "Ivy",
    "Lily",
    "Freya",
    "Grace",
    "Sophia",
    "Noah",
    "Oliver",
    "George",
    "Arthur",
    "Leo",
    "Harry",
    "Oscar",
    "Archie",
    "Henry",
    "Theo",
    "Zoë",
    "Chloé",
    "Søren",
    "José",
    "Ana",
    "Björn",
    "Łukasz",
    "Siobhán",
    "Amir",
    "Priya",
)
LAST_NAMES = (
    "Smith",
    "Jones",
    "Taylor",
    "Brown",
    "Williams",
    "Wilson",
    "Johnson",
    "Davies",
    "Patel",
    "Wright",
    "Walker",
    "Evans",
    "Thomas",
    "Roberts",
    "Green",
    "Hall",
    "Wood",
    "Clarke",
    "Müller",
    "O'Brien",
    "García",
    "Nowak",
    "Dubois",
    "Rossi",
    "Khan",
    "Murphy",
)
DOMAINS = (
    "gmail.com",
    "outlook.com",
    "yahoo.co.uk",
    "hotmail.co.uk",
    "icloud.com",
    "btinternet.com",
    "proton.me",
    "sky.com",
    "example.org",
    "mail.example.co.uk",
)
IDN_DOMAINS = ("straße.de", "bücher.example", "münchen.example", "café.fr", "ελληνικά.example")
REGIONS = (
    "London",
    "South East",
    "South West",
    "East of England",
    "West Midlands",
    "East Midlands",
    "Yorkshire",
    "North West",
    "North East",
    "Scotland",
    "Wales",
)
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
LOYALTY = ("none", "bronze", "silver", "gold", "platinum")
CHANNELS = ("email", "phone", "post", "sms")
HEADER = (
    "external_id", "email", "phone", "first_name", "last_name", "country", "age_band",
    "region", "interests", "channels", "loyalty_tier", "purchases",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Company:
    name: str
    id_prefix: str
    interests: tuple[str, ...]
    purchase_categories: tuple[str, ...]
    # How this company's CRM writes phone numbers: "national" (07911 123456) or
    # "international" (+44 7911 123456, 0044 …).
    phone_style: str


BOAT_DEALER = Company(
    name="Solent Boats",
    id_prefix="SB",
    interests=("sailing", "motorboats", "fishing", "diving", "watersports"),
    purchase_categories=("sailing", "motorboats", "chandlery", "mooring", "servicing"),
    phone_style="national",
)
TRAVEL_AGENCY = Company(
    name="Bluewater Travel",
    id_prefix="BT",
    interests=("beach", "cruises", "city breaks", "skiing", "sailing", "culture"),
    purchase_categories=("flights", "cruises", "hotels", "packages", "insurance"),
    phone_style="international",
)


@dataclass(frozen=True, slots=True)
class Person:
    index: int
    first_name: str
    last_name: str
    email_local: str
    email_domain: str
    mobile: str  # UK mobile, national significant number (10 digits, starts with 7)
    age_band: str
    region: str


def person(seed: int, index: int) -> Person:
    """Person ``index`` of the population drawn with ``seed``; unique e-mail and mobile."""
    rng = random.Random((seed << 40) ^ index)
    first = rng.choice(FIRST_NAMES)
    last = rng.choice(LAST_NAMES)
    ascii_last = "".join(ch for ch in last.lower() if ch.isascii() and ch.isalpha()) or "x"
    local = f"{first.lower()}.{ascii_last}{index}"
    domain = rng.choice(IDN_DOMAINS) if rng.random() < 0.01 else rng.choice(DOMAINS)
    # 071xx-073xx: every number in these blocks is a valid UK mobile (300 million of them).
    mobile = f"7{100 + index // 1_000_000 % 300:03d}{index % 1_000_000:06d}"
    return Person(
        index=index,
        first_name=first,
        last_name=last,
        email_local=local,
        email_domain=domain,
        mobile=mobile,
        age_band=rng.choice(AGE_BANDS),
        region=rng.choice(REGIONS),
    )


@dataclass(slots=True)
class ExportTruth:
    """What the generator knows about one export, independent of the code under test."""

    path: Path
    rows: int = 0
    bad_lines: dict[int, str] = field(default_factory=dict)  # line -> what was broken
    valid_people: set[int] = field(default_factory=set)
    external_ids: dict[int, str] = field(default_factory=dict)  # person -> external id
    interests: dict[int, frozenset[str]] = field(default_factory=dict)  # valid people only

    def interested_in(self, interest: str) -> set[int]:
        """Valid people whose row lists ``interest`` (ground truth for segments)."""
        return {p for p, found in self.interests.items() if interest in found}


BAD_KINDS = (
    "email without @",
    "email with two @",
    "phone too short",
    "phone with letters",
    "missing external_id",
    "unknown loyalty tier",
    "bad purchase date",
    "unknown age band",
)


def write_export(
    path: Path,
    *,
    company: Company,
    people: Iterable[int],
    seed: int,
    bad_rate: float = 0.01,
) -> ExportTruth:
    """Write ``company``'s CSV export of ``people``; return what is in it."""
    rng = random.Random(f"{seed}:{company.id_prefix}")
    truth = ExportTruth(path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for row_number, index in enumerate(people, start=1):
            p = person(seed, index)
            external_id = f"{company.id_prefix}-{row_number:08d}"
            row = {
                "external_id": external_id,
                "email": _messy_email(rng, p),
                "phone": _messy_phone(rng, p, company.phone_style),
                "first_name": p.first_name,
                "last_name": p.last_name,
                "country": rng.choice(("GB", "GB", "gb", "")),
                "age_band": p.age_band,
                "region": p.region,
                "interests": ";".join(rng.sample(company.interests, rng.randint(0, 3))),
                "channels": ";".join(rng.sample(CHANNELS, rng.randint(0, 3))),
                "loyalty_tier": rng.choice(LOYALTY),
                "purchases": ";".join(
                    f"20{rng.randint(20, 26)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
                    f":{rng.choice(company.purchase_categories)}"
                    f":{rng.randint(20, 90000)}.{rng.randint(0, 99):02d}"
                    for _ in range(rng.randint(0, 3))
                ),
            }
            line = row_number + 1  # the header is line 1
            if rng.random() < bad_rate:
                kind = rng.choice(BAD_KINDS)
                _break(row, kind)
                truth.bad_lines[line] = kind
            else:
                truth.valid_people.add(index)
                truth.external_ids[index] = external_id
                truth.interests[index] = frozenset(filter(None, row["interests"].split(";")))
            writer.writerow([row[column] for column in HEADER])
            truth.rows += 1
    return truth


def _messy_email(rng: random.Random, p: Person) -> str:
    local, domain = p.email_local, p.email_domain
    style = rng.random()
    if style < 0.25:
        local, domain = local.capitalize(), domain.upper() if domain.isascii() else domain
    elif style < 0.35:
        local = local.upper()
    if rng.random() < 0.15:
        return f"  {local}@{domain} "
    if rng.random() < 0.05:
        return f"\t{local}@{domain}"
    return f"{local}@{domain}"


def _messy_phone(rng: random.Random, p: Person, style: str) -> str:
    n = p.mobile  # 7911123456
    if style == "national":
        return rng.choice(
            (f"0{n[:4]} {n[4:]}", f"0{n}", f"0{n[:4]}-{n[4:7]}-{n[7:]}", f"(0{n[:4]}) {n[4:]}")
        )
    return rng.choice((f"+44 {n[:4]} {n[4:]}", f"+44{n}", f"0044 {n}", f"+44 (0){n[:4]} {n[4:]}"))


def _break(row: dict[str, str], kind: str) -> None:
    if kind == "email without @":
        row["email"] = row["email"].replace("@", " at ")
    elif kind == "email with two @":
        row["email"] = row["email"].replace("@", "@@")
    elif kind == "phone too short":
        row["phone"] = "0791"
    elif kind == "phone with letters":
        row["phone"] = "call me maybe"
    elif kind == "missing external_id":
        row["external_id"] = ""
    elif kind == "unknown loyalty tier":
        row["loyalty_tier"] = "diamond"
    elif kind == "bad purchase date":
        row["purchases"] = "2024-13-45:sailing:10.00"
    elif kind == "unknown age band":
        row["age_band"] = "17"
    else:  # pragma: no cover - BAD_KINDS is closed
        raise ValueError(kind)


CONSENT_HEADER = (
    "subject", "event_type", "purpose", "recipient", "channels", "collected_at",
    "collection_method", "notice_reference", "notice_version", "notice_sha256",
    "notice_language", "expires_at", "actor",
)  # fmt: skip
NOTICE_SHA256 = "9f2c1e5d7a3b4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60"


def consents_to(seed: int, person: int, partner: str, rate: float) -> bool:
    """Whether ``person`` consented to ``partner`` (deterministic, independent per partner)."""
    return random.Random(f"{seed}:{person}:{partner}").random() < rate


def write_consents(
    path: Path,
    truth: ExportTruth,
    *,
    company: Company,
    partner: str,
    purpose: str,
    seed: int,
    rate: float = 0.8,
) -> set[int]:
    """A consent export for ``truth``'s customers: about ``rate`` of them consent to
    ``partner`` for ``purpose``; returns who did (ground truth for demos and benchmarks)."""
    consented: set[int] = set()
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CONSENT_HEADER)
        for person, external_id in sorted(truth.external_ids.items()):
            if not consents_to(seed, person, partner, rate):
                continue
            consented.add(person)
            writer.writerow([
                external_id, "given", purpose, partner, "email;post", "2026-06-01T10:00:00Z",
                "web_form", f"https://{company.id_prefix.lower()}.example/privacy", "3",
                NOTICE_SHA256, "en-GB", "2027-12-01T10:00:00Z", "crm-sync",
            ])  # fmt: skip
    return consented
