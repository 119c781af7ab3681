"""A small exchange of real processes for the end-to-end tests.

Two partner stores (a boat dealer and a travel agency with overlapping customers and
partial consent), their keys, and helpers to start a broker and two nodes as separate
processes on loopback — the same `accord … serve` processes operators run.
"""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from accord.client import Terms, operator_stub, propose, sign
from accord.exchange import LocalExchange, Process
from accord.synthetic import (
    BOAT_DEALER,
    CONSENT_HEADER,
    NOTICE_SHA256,
    TRAVEL_AGENCY,
    ExportTruth,
    write_consents,
    write_export,
)
from consent.agreements import OutputMode

OWNER, RECIPIENT = "solent-boats", "bluewater-travel"
PURPOSE = "marketing.cross_sell"
SEED = 11


def accord(*args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", "accord", *args], capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Store:
    name: str
    db: Path
    keys: Path
    truth: ExportTruth
    consented: set[int]


@dataclass
class World:
    root: Path
    stores: dict[str, Store]
    extra_rows: dict[str, list[list[str]]] = field(default_factory=dict)

    def expected_overlap(self) -> int:
        owner, recipient = self.stores[OWNER], self.stores[RECIPIENT]
        return len(
            owner.truth.valid_people
            & recipient.truth.valid_people
            & owner.consented
            & recipient.consented
        )


def build_world(root: Path, *, customers: int = 240, canaries: dict[str, list[str]] | None = None
                ) -> World:  # fmt: skip
    """Two node stores with an overlap of a quarter, each with partial consent.

    ``canaries`` adds, to both stores, customers with those e-mails and phones (with
    consent on both sides), so the flow handles them like anyone else.
    """
    overlap = customers // 4
    plans = {
        OWNER: (BOAT_DEALER, range(0, customers), 0.8),
        RECIPIENT: (TRAVEL_AGENCY, range(customers - overlap, 2 * customers - overlap), 0.75),
    }
    stores: dict[str, Store] = {}
    for name, (company, people, rate) in plans.items():
        partner = RECIPIENT if name == OWNER else OWNER
        truth = write_export(root / f"{name}.csv", company=company, people=people, seed=SEED,
                             bad_rate=0.0)  # fmt: skip
        consent_file = root / f"{name}-consents.csv"
        consented = write_consents(consent_file, truth, company=company, partner=partner,
                                   purpose=PURPOSE, seed=SEED, rate=rate)  # fmt: skip
        if canaries:
            _add_canaries(truth.path, consent_file, canaries, partner)
        db, keys = root / f"{name}.db", root / f"{name}-keys"
        accord("node", "init", "--name", name, "--db", str(db), "--keys", str(keys))
        accord("node", "import", str(truth.path), "--db", str(db), "--json")
        accord("consent", "import", str(consent_file), "--db", str(db), "--keys", str(keys),
               "--json")  # fmt: skip
        stores[name] = Store(name, db, keys, truth, consented)
    return World(root, stores)


def _add_canaries(customers: Path, consents: Path, canaries: dict[str, list[str]], partner: str
                  ) -> None:  # fmt: skip
    with customers.open(encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    with customers.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for i, (email, phone) in enumerate(
            zip(canaries["emails"], canaries["phones"], strict=True)
        ):
            row = dict.fromkeys(header, "")
            row.update(external_id=f"CANARY-{i}", email=email, phone=phone)
            writer.writerow([row[column] for column in header])
    with consents.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for i in range(len(canaries["emails"])):
            row = [f"CANARY-{i}", "given", PURPOSE, partner, "email", "2026-06-01T10:00:00Z",
                   "web_form", "https://example.org/privacy", "3", NOTICE_SHA256, "en-GB",
                   "2027-12-01T10:00:00Z", "crm-sync"]  # fmt: skip
            assert len(row) == len(CONSENT_HEADER)
            writer.writerow(row)


@dataclass
class Running:
    world: World
    exchange: LocalExchange
    broker: Process
    nodes: dict[str, Process]

    def stub(self, name: str) -> Any:
        return operator_stub(self.nodes[name].address)

    def agreement(self, **changes: Any) -> str:
        terms = Terms(partner=RECIPIENT, segments=("all",), purpose=PURPOSE,
                      mode=OutputMode.MATCH, k=5)  # fmt: skip
        terms = Terms(**{**terms.__dict__, **changes})
        proposed = propose(self.stub(OWNER), terms)
        sign(self.stub(RECIPIENT), proposed.agreement.agreement_id, proposed.agreement_digest)
        return str(proposed.agreement.agreement_id)


def start(world: World, logs: Path) -> Iterator[Running]:
    with LocalExchange(logs) as exchange:
        broker = exchange.start_broker(db=str(world.root / "broker.db"))
        nodes = {
            name: exchange.start_node(
                name=name, db=str(store.db), keys=store.keys, broker=broker, workers=2
            )  # fmt: skip
            for name, store in world.stores.items()
        }
        yield Running(world, exchange, broker, nodes)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("exchange")
    world = build_world(root)
    yield from start(world, root / "logs")
