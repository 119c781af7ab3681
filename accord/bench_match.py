"""``accord bench match``: the whole blinded-matching flow, against a floor measured in the run.

Builds two node stores of N customers with one identifier (an e-mail) each, sharing a
fraction F of them, every customer consenting; starts the same broker and node processes
the demo uses; and times one audience request from the moment it is sent (servers up,
stores built, caches cold) until the flow has succeeded. The floor is raw X25519 on this
machine, one process per core: ``floor_s = 4·N / (scalar multiplications per second)``,
since matching needs two multiplications per identifier on each side.
It then asks once more with nothing changed (``repeat_unchanged``: the epoch caches and
the nodes' cached consented sets answer), and ``--repeat-churn C`` then changes the
e-mails of a fraction C of each store and asks again in the same epoch, which the nodes'
epoch caches should make cheap. ``first.storage_read_mib`` says how much each process
read from storage rather than the page cache during the first flow: a cold store
(this VM drops its page cache within minutes of the build) shows there, not in a guess.
Each flow's ``cpu_s`` gives the CPU seconds each process's main process and worker pool
used during it: with both cores busy the sum bounds the wall time, and the split says
whose work to cut.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from accord.bench import PeakRss, _cpu_s, _descendants, _vm_hwm, mib, storage_read_bytes
from accord.client import Terms, operator_stub, propose, request_audience, sign
from accord.exchange import LocalExchange
from accord.synthetic import person
from consent import (
    Channel,
    CollectionMethod,
    EventType,
    Ledger,
    NewConsentEvent,
    Notice,
)
from consent.agreements import OutputMode
from kernel.crypto import x25519_throughput
from kernel.db import database_url
from kernel.keys import KeyStore
from kernel.wire.accord.common.v1 import flow_pb2
from node import open_store, run_import

PURPOSE = "marketing.cross_sell"
OWNER, RECIPIENT = "solent-boats", "bluewater-travel"


def _floor_worker(seconds: float) -> tuple[int, float]:
    return x25519_throughput(seconds)


def x25519_floor(seconds: float = 3.0) -> float:
    """Scalar multiplications per second on all cores (one process per core)."""
    cores = os.cpu_count() or 1
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=cores, mp_context=context) as pool:
        list(pool.map(_floor_worker, [0.5] * cores))  # start and warm every worker
        results = list(pool.map(_floor_worker, [seconds] * cores))
    return sum(ops / elapsed for ops, elapsed in results)


def _email(seed: int, index: int, version: int) -> str:
    p = person(seed, index)
    if version == 0:
        return f"{p.email_local}@{p.email_domain}"
    return f"{p.email_local}.v{version}@{p.email_domain}"


def _write_customers(path: Path, people: range, versions: dict[int, int], seed: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["external_id", "email"])
        for index in people:
            writer.writerow([f"P{index:09d}", _email(seed, index, versions.get(index, 0))])


def _build_node(root: Path, name: str, people: range, seed: int, now: datetime) -> tuple[str, Path]:
    db = str(root / f"{name}.db")
    keys = root / f"{name}-keys"
    KeyStore.create(keys, name=name)
    store = KeyStore.open(keys)
    engine = open_store(database_url(db))
    try:
        source = root / f"{name}.csv"
        _write_customers(source, people, {}, seed)
        run_import(source, engine=engine, default_region="GB", rejects_path=root / "rej.csv")
        partner = RECIPIENT if name == OWNER else OWNER
        ledger = Ledger(engine, origin=store.identity.origin, controller=name,
                        signing_key=store.signing_key(), now=lambda: now)  # fmt: skip
        notice = Notice("https://example.org/privacy", "1", "ab" * 32, "en-GB")
        rng = random.Random(f"{seed}:{name}")
        batch: list[tuple[str, NewConsentEvent]] = []
        for index in people:
            batch.append((
                f"P{index:09d}",
                NewConsentEvent(
                    event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    event_type=EventType.GIVEN, purpose=PURPOSE, recipient=partner,
                    collected_at=now - timedelta(days=1),
                    collection_method=CollectionMethod.IMPORT, actor="bench",
                    channels=(Channel.EMAIL,), notice=notice,
                    expires_at=now + timedelta(days=365),
                ),
            ))  # fmt: skip
            if len(batch) >= 5000:
                ledger.record(batch)
                batch = []
        if batch:
            ledger.record(batch)
        ledger.append([])  # a signed head for the node's first start
    finally:
        engine.dispose()
    return db, keys


def _churn(root: Path, name: str, db: str, people: range, fraction: float, seed: int
           ) -> set[int]:  # fmt: skip
    """New e-mails for a random fraction of ``people``; returns whose changed."""
    rng = random.Random(f"churn:{seed}:{name}")
    changed = set(rng.sample(list(people), round(len(people) * fraction)))
    source = root / f"{name}-churn.csv"
    _write_customers(source, range(0), {}, seed)
    with source.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for index in sorted(changed):
            writer.writerow([f"P{index:09d}", _email(seed, index, 1)])
    engine = open_store(database_url(db))
    try:
        run_import(source, engine=engine, default_region="GB", rejects_path=root / "rej.csv")
    finally:
        engine.dispose()
    return changed


def _rss_tree(pid: int) -> float:
    return mib(_vm_hwm(pid) + sum(_vm_hwm(child) for child in _descendants(pid)))


def match_benchmark(
    *, size: int, overlap: float, churn: float | None, seed: int, keep: Path | None
) -> dict[str, Any]:
    shared = round(size * overlap)
    owner_people = range(0, size)
    recipient_people = range(size - shared, 2 * size - shared)
    now = datetime.now(UTC)
    result: dict[str, Any] = {
        "benchmark": "match",
        "size": size,
        "overlap": overlap,
        "cores": os.cpu_count(),
        "targets": {
            "first_within_floor_ratio": 1.5,
            "repeat_within_first_ratio": 0.1,
            "peak_rss_mib": 2048,
        },  # fmt: skip
    }
    with tempfile.TemporaryDirectory(prefix="accord-bench-match-") as scratch:
        root = keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        owner_db, owner_keys = _build_node(root, OWNER, owner_people, seed, now)
        recipient_db, recipient_keys = _build_node(root, RECIPIENT, recipient_people, seed, now)
        result["build_s"] = round(time.perf_counter() - started, 1)
        ops = x25519_floor()
        result["floor"] = {
            "x25519_per_s_all_cores": round(ops),
            "floor_s": round(4 * size / ops, 2),
        }
        with LocalExchange(root / "logs") as exchange:
            broker = exchange.start_broker(db=str(root / "broker.db"), verbose=False)
            owner = exchange.start_node(name=OWNER, db=owner_db, keys=owner_keys,
                                        broker=broker, verbose=False)  # fmt: skip
            recipient = exchange.start_node(name=RECIPIENT, db=recipient_db,
                                            keys=recipient_keys, broker=broker,
                                            verbose=False)  # fmt: skip
            owner_stub, recipient_stub = (
                operator_stub(owner.address),
                operator_stub(recipient.address),
            )
            terms = Terms(partner=RECIPIENT, segments=("all",), purpose=PURPOSE,
                          mode=OutputMode.MATCH, k=1, max_set_size=4 * size + 1024,
                          epoch_cap=20 * size + 100_000)  # fmt: skip
            proposed = propose(owner_stub, terms)
            agreement_id = proposed.agreement.agreement_id
            sign(recipient_stub, agreement_id, proposed.agreement_digest)

            reads = _storage_reads(exchange)
            cpu = _cpu_use(exchange)
            with PeakRss():
                started = time.perf_counter()
                first = request_audience(recipient_stub, agreement_id)
                first_s = time.perf_counter() - started
            result["first"] = _flow_result(first, first_s, expected=shared)
            # What the first flow read from storage rather than the page cache: this VM
            # drops its page cache within minutes, and a cold store costs the first run.
            result["first"]["storage_read_mib"] = reads()
            result["first"]["cpu_s"] = cpu()
            result["wall_s"] = round(first_s, 2)
            result["wall_over_floor"] = round(first_s / result["floor"]["floor_s"], 2)
            # The same request again, nothing changed: epoch caches and the cached
            # consented sets answer; what is left is the per-flow work (fresh shuffles and
            # handles, streaming, intersection).
            started = time.perf_counter()
            unchanged = request_audience(recipient_stub, agreement_id)
            unchanged_s = time.perf_counter() - started
            result["repeat_unchanged"] = _flow_result(unchanged, unchanged_s, expected=shared)
            result["repeat_unchanged"]["cpu_s"] = cpu()
            result["repeat_unchanged_over_first"] = round(unchanged_s / first_s, 3)
            if churn:
                changed_owner = _churn(root, OWNER, owner_db, owner_people, churn, seed)
                changed_recipient = _churn(
                    root, RECIPIENT, recipient_db, recipient_people, churn, seed + 1
                )
                still = {
                    i for i in range(size - shared, size)
                    if i not in changed_owner and i not in changed_recipient
                }  # fmt: skip
                cpu()  # the churn's imports ran in this process, not in the servers
                started = time.perf_counter()
                again = request_audience(recipient_stub, agreement_id)
                again_s = time.perf_counter() - started
                result["repeat"] = _flow_result(again, again_s, expected=len(still))
                result["repeat"]["churn"] = churn
                result["repeat"]["cpu_s"] = cpu()
                result["repeat_over_first"] = round(again_s / first_s, 3)
            result["peak_rss_mib"] = {
                process.name: _rss_tree(process.pid) for process in exchange.processes
            }
    return result


def _storage_reads(exchange: LocalExchange) -> Callable[[], dict[str, float]]:
    """Call the result to get MiB read from storage per process since this call."""
    before = {p.name: storage_read_bytes(p.pid) for p in exchange.processes}
    return lambda: {
        p.name: mib(storage_read_bytes(p.pid) - before[p.name]) for p in exchange.processes
    }


def _cpu_use(exchange: LocalExchange) -> Callable[[], dict[str, dict[str, float]]]:
    """Call the result to get the CPU seconds each process (its main process, and its
    worker pool) used since the last call: with both cores busy, a flow's wall time is
    bound by their sum, and the split says whose work to cut."""

    def now() -> dict[str, dict[str, float]]:
        return {
            p.name: {
                "main": _cpu_s(p.pid) or 0.0,
                "workers": sum(_cpu_s(child) or 0.0 for child in _descendants(p.pid)),
            }
            for p in exchange.processes
        }

    last = now()

    def since() -> dict[str, dict[str, float]]:
        nonlocal last
        current = now()
        used = {
            name: {part: round(current[name][part] - last[name][part], 2) for part in parts}
            for name, parts in current.items()
        }
        last = current
        return used

    return since


def _flow_result(response: Any, seconds: float, *, expected: int) -> dict[str, Any]:
    flow = response.flow
    found = response.summary.match.matched_customers if response.HasField("summary") else None
    return {
        "state": flow_pb2.FlowState.Name(flow.state).removeprefix("FLOW_STATE_").lower(),
        "failure": flow.failure_detail or None,
        "seconds": round(seconds, 2),
        "intersection_found": found,
        "intersection_expected": expected,
        "identifiers_blinded": {
            "owner_set": flow.owner_set_size,
            "recipient_set": flow.recipient_set_size,
        },  # fmt: skip
    }
