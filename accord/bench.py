"""``accord bench …``: benchmarks that print JSON. Timings live here, never in tests."""

from __future__ import annotations

import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from accord.synthetic import BOAT_DEALER, write_export
from kernel.db import database_url
from node import open_store, run_import


class PeakRss:
    """Peak resident set size of this process and each of its descendants, in bytes.

    Worker pools (forkserver) are grandchildren, which ``RUSAGE_CHILDREN`` never sees, so a
    thread walks /proc and keeps each descendant's high-water mark (``VmHWM``).
    """

    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._peaks: dict[int, int] = {}
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

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        for pid in _descendants(os.getpid()):
            peak = _vm_hwm(pid)
            if peak:
                self._peaks[pid] = max(self._peaks.get(pid, 0), peak)


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


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mib(value: int) -> float:
    return round(value / (1 << 20), 1)


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
        truth = write_export(source, company=BOAT_DEALER, people=range(rows), seed=seed)
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
            "imported": summary.imported,
            "rejected": summary.rejected,
            "expected_rejected": len(truth.bad_lines),
            "peak_rss_mib": {
                "main": mib(rss.main),
                "workers": [mib(v) for v in sorted(rss.descendants.values(), reverse=True)],
                "total": mib(rss.main + workers_peak),
            },
            "targets": {"rows": 1_000_000, "import_s": 60, "peak_rss_mib": 1024},
        }
