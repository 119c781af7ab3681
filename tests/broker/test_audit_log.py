"""The broker's keys and its own audit log: created once, verifiable like a node's."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from broker import open_broker_keys, open_broker_store
from broker._audit import BrokerAudit
from broker.errors import BrokerKeysMismatch
from consent import verify_log
from kernel.db import database_url
from kernel.keys import KeyStore

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def test_the_broker_creates_its_keys_once_and_checks_them(tmp_path: Path) -> None:
    keys, created = open_broker_keys(tmp_path / "keys", name="exchange-1")
    assert created and keys.identity.role == "broker"
    assert keys.identity.origin == "accord/broker/exchange-1"
    again, created = open_broker_keys(tmp_path / "keys", name="exchange-1")
    assert not created and again.identity == keys.identity
    with pytest.raises(BrokerKeysMismatch, match="belong to broker exchange-1, not exchange-2"):
        open_broker_keys(tmp_path / "keys", name="exchange-2")
    KeyStore.create(tmp_path / "node-keys", name="exchange-1", role="node")
    with pytest.raises(BrokerKeysMismatch, match="a node's keys"):
        open_broker_keys(tmp_path / "node-keys", name="exchange-1")


def test_the_brokers_log_verifies_after_some_entries(engine: Engine, tmp_path: Path) -> None:
    keys, _ = open_broker_keys(tmp_path / "keys", name="broker")
    audit = BrokerAudit.open(engine, keys, now=lambda: NOW)
    empty = audit.latest_head()
    assert empty is not None and empty.tree_size == 0  # signed at first start
    audit.record("agreement-submitted", agreement_id="a1", owner="o", recipient="r")
    audit.record("flow-started", flow_id="f1", agreement_id="a1", requester="r")
    audit.record(
        "flow-finished",
        flow_id="f1",
        state="failed",
        failure_reason="RATE_LIMITED",
        owner_set_size=0,
        recipient_set_size=0,
    )
    audit.record("head-witnessed", origin="accord/node/o", tree_size=12, node="o")
    report = verify_log(engine, public_key=keys.identity.signing_public_key)
    assert report.entries == 4 and report.latest_head is not None
    assert report.latest_head.origin == "accord/broker/broker"
    # Reopening with the same keys keeps the log; another broker's keys are refused.
    assert BrokerAudit.open(engine, keys, now=lambda: NOW).latest_head() == report.latest_head
    other, _ = open_broker_keys(tmp_path / "other", name="other-broker")
    with pytest.raises(BrokerKeysMismatch, match="accord/broker/broker"):
        BrokerAudit.open(engine, other, now=lambda: NOW)


def test_accord_audit_verify_checks_a_brokers_log(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    engine = open_broker_store(database_url(str(db)))
    try:
        keys, _ = open_broker_keys(tmp_path / "keys", name="broker")
        audit = BrokerAudit.open(engine, keys, now=lambda: NOW)
        audit.record("agreement-revoked", agreement_id="a1", revoked_by="o", reason="ended")
    finally:
        engine.dispose()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "accord",
            "audit",
            "verify",
            "--db",
            str(db),
            "--keys",
            str(tmp_path / "keys"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "audit log verifies: 1 entries" in result.stdout
    tables = _tables(db)
    # Verifying opened it as a broker's database: no node tables were added to it.
    assert not [t for t in tables if t.startswith(("node_", "customer", "accord_node"))]


def _tables(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        return [
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
