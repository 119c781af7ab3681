"""The broker's store on SQLite and PostgreSQL: registry, agreements, idempotent flows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from broker import BrokerStore, open_broker_store
from broker._store import FlowRecord
from broker._tables import BROKER_TABLES
from broker.errors import (
    AgreementConflict,
    FlowConflict,
    UnknownAgreement,
    UnknownFlow,
    UnknownNode,
)
from consent.agreements import Agreement, OutputMode, PartyKeys, SignedAgreement
from kernel.crypto import SigningKey
from kernel.db import metadata

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OWN = {table.name for table in BROKER_TABLES}


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    engine = open_broker_store(db_url)
    yield engine
    engine.dispose()


def test_migrations_build_exactly_the_models_schema(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_name": lambda name, type_, _p: type_ != "table" or name in OWN,
                "include_object": lambda _o, name, type_, _r, _c: type_ != "table" or name in OWN,
                "compare_type": True,
            },
        )
        assert compare_metadata(context, metadata()) == []


def keys(name: str, key: SigningKey) -> PartyKeys:
    return PartyKeys(name, key.public_key, bytes(32))


def test_registry_agreements_and_flows(engine: Engine) -> None:
    store = BrokerStore(engine)
    owner_key, recipient_key = SigningKey.generate(), SigningKey.generate()
    store.register(keys("solent-boats", owner_key), endpoint="127.0.0.1:1", display_name="SB",
                   now=NOW)  # fmt: skip
    store.register(keys("bluewater-travel", recipient_key), endpoint="127.0.0.1:2",
                   display_name="BT", now=NOW)  # fmt: skip
    moved = store.register(keys("solent-boats", owner_key), endpoint="127.0.0.1:3",
                           display_name="SB", now=NOW + timedelta(minutes=1))  # fmt: skip
    assert moved.endpoint == "127.0.0.1:3" and moved.registered_at == NOW
    assert [n.keys.name for n in store.nodes()] == ["bluewater-travel", "solent-boats"]
    with pytest.raises(UnknownNode):
        store.node("nobody")

    terms = Agreement(
        agreement_id="7d1f1b0e-4a2c-4c8e-9a61-3f0b2d6e9c11",
        owner=keys("solent-boats", owner_key),
        recipient=keys("bluewater-travel", recipient_key),
        segment_ids=("all",), purpose="marketing.cross_sell", output_mode=OutputMode.MATCH,
        min_audience_k=5, max_set_size=1000, epoch_identifier_cap=10_000,
        epoch_length_seconds=86400, retention_days=30, valid_from=NOW,
        valid_until=NOW + timedelta(days=30), rate_limit_per_day=3,
    )  # fmt: skip
    proposed = SignedAgreement.propose(terms, owner_key)
    saved = store.save_agreement(proposed, owner="solent-boats", recipient="bluewater-travel",
                                 now=NOW, active=False)  # fmt: skip
    assert saved.created and not saved.activated and saved.record.activated_at is None
    signed = proposed.countersign(recipient_key, digest=terms.digest)
    saved = store.save_agreement(signed, owner="solent-boats", recipient="bluewater-travel",
                                 now=NOW, active=True)  # fmt: skip
    assert not saved.created and saved.activated
    record = saved.record
    assert record.activated_at == NOW and record.signed.verify() == terms
    again = store.save_agreement(signed, owner="solent-boats", recipient="bluewater-travel",
                                 now=NOW, active=True)  # fmt: skip
    assert not again.created and not again.activated  # idempotent
    other = SignedAgreement.propose(dataclasses.replace(terms, rate_limit_per_day=4), owner_key)
    with pytest.raises(AgreementConflict):
        store.save_agreement(other, owner="solent-boats", recipient="bluewater-travel", now=NOW,
                             active=False)  # fmt: skip
    assert [a.signed.agreement.agreement_id for a in store.agreements_of("solent-boats")] == [
        terms.agreement_id
    ]
    with pytest.raises(UnknownAgreement):
        store.agreement("00000000-0000-4000-8000-000000000000")

    flow = FlowRecord(
        "0b8e4c9e-6f0e-4a53-9d3b-2f1e0c7b9a11", terms.agreement_id, "bluewater-travel", "all",
        "", "pending", None, None, 0, 0, NOW, NOW,
    )  # fmt: skip
    created, new = store.create_flow(flow)
    assert new and created == flow
    again, new = store.create_flow(flow)
    assert not new and again.flow_id == flow.flow_id  # idempotent on the id
    with pytest.raises(FlowConflict):
        store.create_flow(dataclasses.replace(flow, owner_segment_id="sailing"))
    done = store.update_flow(flow.flow_id, now=NOW + timedelta(seconds=5), state="failed",
                             failure_reason="SET_TOO_LARGE", failure_detail="too big")  # fmt: skip
    assert done.terminal and done.failure_reason == "SET_TOO_LARGE"
    assert store.flows_started_since(terms.agreement_id, NOW) == 1
    with pytest.raises(UnknownFlow):
        store.flow("00000000-0000-4000-8000-000000000000")
