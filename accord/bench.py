"""``accord bench …``: benchmarks that print JSON. Timings live here, never in tests."""

from __future__ import annotations

import multiprocessing
import os
import random
import resource
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from accord.synthetic import BOAT_DEALER, write_export
from kernel.db import database_url
from node import open_store, run_import


class PeakRss:
    """Peak resident set size of this process and each of its descendants, in bytes.

    Worker pools (forkserver) are grandchildren, which ``RUSAGE_CHILDREN`` never sees, so a
    thread walks /proc and keeps each descendant's high-water mark (``VmHWM``) and the CPU
    time it had used when last seen (up to one interval short for a process that exits).
    """

    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._peaks: dict[int, int] = {}
        self._cpu: dict[int, float] = {}
        self._cpu_start = _own_cpu_s()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def main(self) -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @property
    def descendants(self) -> dict[int, int]:
        return dict(self._peaks)

    @property
    def main_cpu_s(self) -> float:
        """CPU seconds (user + system) this process used since the measurement began."""
        return _own_cpu_s() - self._cpu_start

    @property
    def descendants_cpu_s(self) -> float:
        return sum(self._cpu.values())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        for pid in _descendants(os.getpid()):
            peak = _vm_hwm(pid)
            if peak:
                self._peaks[pid] = max(self._peaks.get(pid, 0), peak)
            cpu = _cpu_s(pid)
            if cpu is not None:
                self._cpu[pid] = cpu


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (/proc/PID/stat fields 14 and 15)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_field(pid: int, name: str, key: str) -> int:
    """The first number on the ``key`` line of /proc/PID/``name``; 0 where the kernel
    does not say (the process is gone, or the file has no such line)."""
    try:
        with open(f"/proc/{pid}/{name}") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def storage_read_bytes(pid: int) -> int:
    """Bytes ``pid`` and its descendants have read from storage (not the page cache) so
    far: /proc/PID/io ``read_bytes``."""
    return sum(_proc_field(each, "io", "read_bytes:") for each in (pid, *_descendants(pid)))


def _vm_hwm(pid: int) -> int:
    return _proc_field(pid, "status", "VmHWM:") * 1024


def mib(value: int) -> float:
    return round(value / (1 << 20), 1)


def _write_import_export(source: Path, rows: int, seed: int) -> int:
    """Write the benchmark's export; return how many of its rows are bad."""
    truth = write_export(source, company=BOAT_DEALER, people=range(rows), seed=seed)
    return len(truth.bad_lines)


def import_benchmark(
    *, rows: int, seed: int, workers: int | None, keep: Path | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="accord-bench-") as scratch:
        folder = keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / f"customers-{rows}.csv"
        store = folder / f"store-{rows}.db"
        for stale in folder.glob(f"store-{rows}.db*"):
            stale.unlink()
        started = time.perf_counter()
        # In a child process: the generator's own peak would otherwise count as the import's.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            expected_rejected = pool.submit(_write_import_export, source, rows, seed).result()
        generate_s = time.perf_counter() - started
        engine = open_store(database_url(str(store)))
        try:
            with PeakRss() as rss:
                started = time.perf_counter()
                summary = run_import(
                    source,
                    engine=engine,
                    default_region="GB",
                    rejects_path=folder / "rejects.csv",
                    workers=workers,
                )
                elapsed = time.perf_counter() - started
        finally:
            engine.dispose()
        workers_peak = sum(rss.descendants.values())
        return {
            "benchmark": "import",
            "rows": rows,
            "seed": seed,
            "workers": workers or os.cpu_count(),
            "cores": os.cpu_count(),
            "csv_bytes": source.stat().st_size,
            "generate_s": round(generate_s, 2),
            "import_s": round(elapsed, 2),
            "rows_per_s": round(rows / elapsed),
            # Where the time went: CPU seconds of the main process (reader and writer) and
            # of the worker processes; their sum over import_s is how busy the cores were.
            "cpu_s": {
                "main": round(rss.main_cpu_s, 3),
                "workers": round(rss.descendants_cpu_s, 3),
            },
            "imported": summary.imported,
            "rejected": summary.rejected,
            "expected_rejected": expected_rejected,
            "peak_rss_mib": {
                "main": mib(rss.main),
                "workers": [mib(v) for v in sorted(rss.descendants.values(), reverse=True)],
                "total": mib(rss.main + workers_peak),
            },
            "targets": {"rows": 1_000_000, "import_s": 60, "peak_rss_mib": 1024},
        }


def _consent_events(count: int, *, seed: int, start: datetime) -> list[tuple[str, Any]]:
    """Synthetic consent events: one subject each, varied purposes, recipients, channels."""
    from consent import Channel, CollectionMethod, EventType, NewConsentEvent, Notice

    rng = random.Random(seed)
    notice = Notice("https://solent-boats.example/privacy", "2026-11", "3f" * 32, "en-GB")
    purposes = ("marketing.cross_sell", "analytics.overlap", "marketing.direct")
    recipients = ("bluewater-travel", "*")
    channels = tuple(Channel)
    events = []
    for i in range(count):
        collected = start + timedelta(seconds=i)
        events.append(
            (
                f"SB-{i:08d}",
                NewConsentEvent(
                    event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    event_type=EventType.GIVEN,
                    purpose=purposes[i % len(purposes)],
                    recipient=recipients[i % len(recipients)],
                    collected_at=collected,
                    collection_method=CollectionMethod.WEB_FORM,
                    actor="bench",
                    channels=tuple(rng.sample(channels, rng.randint(1, 3))),
                    notice=notice,
                    expires_at=collected + timedelta(days=390),
                ),
            )
        )
    return events


def audit_benchmark(*, entries: int, batch: int, db: str | None) -> dict[str, Any]:
    """Append ``entries`` consent events (a signed head per batch), then verify the log."""
    from consent import Ledger, NewEntry, migrate_ledger, verify_log
    from consent.records import consent_record
    from kernel.crypto import SigningKey
    from kernel.db import create_db_engine

    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock_now = start + timedelta(days=400)
    key = SigningKey.generate()
    results: dict[str, Any] = {
        "benchmark": "audit",
        "entries": entries,
        "batch": batch,
        "targets": {"appends_per_s": 20_000, "verify_1m_s": 30},
    }
    with tempfile.TemporaryDirectory(prefix="accord-bench-") as scratch:
        url = database_url(db or str(Path(scratch) / "ledger.db"))
        results["database"] = url.get_backend_name()
        events = _consent_events(entries, seed=11, start=start)

        # 1. The whole consent path: validate, pseudonymize, encode, commit, append, sign.
        engine = create_db_engine(url)
        try:
            migrate_ledger(engine)
            ledger = Ledger(
                engine,
                origin="accord/node/bench",
                controller="bench",
                signing_key=key,
                now=lambda: clock_now,
            )
            if ledger.size() != 0:
                raise SystemExit("the benchmark needs an empty database")
            with PeakRss() as rss:
                started = time.perf_counter()
                for offset in range(0, entries, batch):
                    ledger.record(events[offset : offset + batch])
                record_s = time.perf_counter() - started
                started = time.perf_counter()
                report = verify_log(engine, public_key=key.public_key)
                verify_s = time.perf_counter() - started
            assert report.entries == entries and report.records_checked == entries
        finally:
            engine.dispose()
        results["consent_events_per_s"] = round(entries / record_s)
        results["record_s"] = round(record_s, 2)
        results["verify_s"] = round(verify_s, 2)
        results["heads"] = report.heads
        results["peak_rss_mib"] = mib(rss.main)

        # 2. The log alone: canonical records already encoded, appended with commitments.
        if db is None:
            second = database_url(str(Path(scratch) / "log.db"))
            engine = create_db_engine(second)
            try:
                migrate_ledger(engine)
                log = Ledger(
                    engine, origin="accord/node/bench2", controller="bench", signing_key=key
                )
                pseudonym = "0" * 32
                records = [
                    NewEntry(
                        "consent",
                        consent_record(
                            _recorded(event, pseudonym, index, clock_now), controller="bench"
                        ),
                        pseudonym,
                    )
                    for index, (_, event) in enumerate(events)
                ]
                started = time.perf_counter()
                for offset in range(0, entries, batch):
                    log.append(records[offset : offset + batch])
                append_s = time.perf_counter() - started
            finally:
                engine.dispose()
            results["appends_per_s"] = round(entries / append_s)
            results["append_s"] = round(append_s, 2)
    return results


def _recorded(event: Any, pseudonym: str, index: int, now: datetime) -> Any:
    from consent import ConsentEvent

    return ConsentEvent(
        event_id=event.event_id,
        subject=pseudonym,
        event_type=event.event_type,
        purpose=event.purpose,
        purpose_version=1,
        recipient=event.recipient,
        channels=event.channels,
        collected_at=event.collected_at,
        collection_method=event.collection_method,
        actor=event.actor,
        recorded_at=now,
        leaf_index=index,
        notice=event.notice,
        expires_at=event.expires_at,
    )
