"""Shared fixtures of the broker's tests: two parties with keys, and their agreements."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from broker import open_broker_store
from consent.agreements import Agreement, OutputMode, PartyKeys, SignedAgreement
from kernel.crypto import SigningKey, random_bytes

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OWNER = "solent-boats"
RECIPIENT = "bluewater-travel"
STRANGER = "harbour-insurance"


@dataclass(frozen=True)
class Party:
    name: str
    key: SigningKey
    hpke_public_key: bytes

    @property
    def keys(self) -> PartyKeys:
        return PartyKeys(self.name, self.key.public_key, self.hpke_public_key)


@dataclass(frozen=True)
class Parties:
    owner: Party
    recipient: Party
    stranger: Party

    def agreement(self, mode: OutputMode = OutputMode.MATCH, **changes: Any) -> Agreement:
        terms: dict[str, Any] = {
            "agreement_id": str(uuid.uuid4()),
            "owner": self.owner.keys,
            "recipient": self.recipient.keys,
            "segment_ids": ("sailors",),
            "purpose": "marketing.cross_sell",
            "output_mode": mode,
            "min_audience_k": 5,
            "max_set_size": 100_000,
            "epoch_identifier_cap": 1_000_000,
            "epoch_length_seconds": 86400,
            "retention_days": 30,
            "valid_from": NOW - timedelta(days=1),
            "valid_until": NOW + timedelta(days=365),
            "rate_limit_per_day": 100,
        }
        if mode is OutputMode.RELEASE:
            terms["released_fields"] = ("first_name", "email")
        if mode is OutputMode.OVERLAP:
            terms["purpose"] = "analytics.overlap"
            terms["epsilon_total"], terms["epsilon_per_count"] = "4.0", "0.5"
        terms.update(changes)
        return Agreement(**terms)

    def signed(self, agreement: Agreement) -> SignedAgreement:
        proposed = SignedAgreement.propose(agreement, self.owner.key)
        return proposed.countersign(self.recipient.key, digest=agreement.digest)


def _party(name: str) -> Party:
    return Party(name, SigningKey.generate(), random_bytes(32))


@pytest.fixture
def parties() -> Parties:
    return Parties(_party(OWNER), _party(RECIPIENT), _party(STRANGER))


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    """The broker's database on SQLite and PostgreSQL, migrated (its audit log too)."""
    engine = open_broker_store(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Callable[[], datetime]:
    return lambda: NOW
