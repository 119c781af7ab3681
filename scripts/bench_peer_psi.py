"""Benchmark the open peer openmined-psi 2.0.6 (ECDH-PSI over P-256) for issue 4.

Builds two sets of ``--size`` distinct synthetic e-mail addresses, exactly
``round(overlap * size)`` of them shared, deterministically from ``--seed``; then runs the
whole openmined-psi protocol in this one process, the way the package's own tests do
(``private_set_intersection/python/tests.py`` upstream)::

    server = psi.server.CreateWithNewKey(reveal)
    client = psi.client.CreateWithNewKey(reveal)
    setup = server.CreateSetupMessage(fpr, len(client_items), server_items)  # GCS default
    request = client.CreateRequest(client_items)
    response = server.ProcessRequest(request)
    result = client.GetIntersectionSize(setup, response)  # or GetIntersection if --reveal

and prints one JSON object. ``wall_s`` runs from the creation of the two keys to the
result; generating the sets is not timed. There is no network, no broker and no consent
check: the messages stay in memory as protobuf objects (the package's wrapper serialises
and parses each one once between C++ and Python, which is timed because it is part of
every call). ``peak_rss_mib`` is ``ru_maxrss`` of the process, so it includes the two
input lists; ``rss_before_protocol_mib`` is the same high-water mark taken just before the
protocol starts.

Why a virtualenv of its own: openmined.psi 2.0.6 pins ``protobuf==6.30.2`` exactly, which
conflicts with the protobuf the project's wire stubs use, and it is a peer we measure, not
a dependency. It must never enter ``pyproject.toml`` or ``.venv``. This script imports
nothing from the project (stdlib and the psi package only). Create the venv outside the
repository and run the script with its interpreter::

    python3.11 -m venv /work/peer-venv
    /work/peer-venv/bin/python -m pip install 'openmined.psi==2.0.6'
    /work/peer-venv/bin/python scripts/bench_peer_psi.py --size 100000 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import sys
import time
from importlib import metadata
from typing import Any

import private_set_intersection.python as psi

_FIRST = (
    "alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy "
    "rupert sybil trent victor walter wendy yusuf zoe amara bruno chloe diego elif "
    "farah goran hana"
).split()
_LAST = (
    "smith jones taylor brown williams wilson johnson davies robinson wright thompson "
    "evans walker white roberts green hall wood jackson clarke patel khan lewis harris "
    "martin cooper king lee"
).split()
_DOMAINS = (
    "gmail.com outlook.com yahoo.co.uk hotmail.com icloud.com btinternet.com "
    "example.org proton.me aol.com sky.com"
).split()
_SEPARATORS = (".", "_", "", "-")


def synthetic_sets(size: int, overlap: float, seed: int) -> tuple[list[str], list[str], int]:
    """Return (server_items, client_items, shared): two lists of ``size`` distinct
    addresses each, exactly ``shared = round(overlap * size)`` of them in both."""
    if size < 0 or not 0.0 <= overlap <= 1.0:
        raise ValueError("size must be >= 0 and overlap within [0, 1]")
    shared = round(overlap * size)
    need = 2 * size - shared
    rng = random.Random(seed)
    seen: set[str] = set()
    pool: list[str] = []
    while len(pool) < need:
        address = (
            f"{rng.choice(_FIRST)}{rng.choice(_SEPARATORS)}{rng.choice(_LAST)}"
            f"{rng.randrange(100_000_000)}@{rng.choice(_DOMAINS)}"
        )
        if address not in seen:
            seen.add(address)
            pool.append(address)
    common = pool[:shared]
    server_items = common + pool[shared:size]
    client_items = common + pool[size:need]
    rng.shuffle(server_items)
    rng.shuffle(client_items)
    return server_items, client_items, shared


def _max_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(size: int, overlap: float, seed: int, fpr: float, reveal: bool) -> dict[str, Any]:
    server_items, client_items, shared = synthetic_sets(size, overlap, seed)
    rss_before = _max_rss_mib()

    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    server = psi.server.CreateWithNewKey(reveal)
    client = psi.client.CreateWithNewKey(reveal)
    setup = server.CreateSetupMessage(fpr, len(client_items), server_items)
    t1 = time.perf_counter()
    request = client.CreateRequest(client_items)
    t2 = time.perf_counter()
    response = server.ProcessRequest(request)
    t3 = time.perf_counter()
    if reveal:
        found = len(client.GetIntersection(setup, response))
    else:
        found = client.GetIntersectionSize(setup, response)
    t4 = time.perf_counter()
    cpu_s = _cpu_s() - cpu0

    return {
        "peer": "openmined-psi",
        "peer_version": psi.__version__,
        "peer_distribution": f"openmined_psi {metadata.version('openmined_psi')}",
        "protobuf_version": metadata.version("protobuf"),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "protocol": "ECDH-PSI (P-256), server setup as GCS, one process, in memory",
        "result_call": "GetIntersection" if reveal else "GetIntersectionSize",
        "reveal_intersection": reveal,
        "fpr": fpr,
        "seed": seed,
        "size": size,
        "server_size": len(server_items),
        "client_size": len(client_items),
        "overlap": overlap,
        "expected_intersection": shared,
        "intersection_found": found,
        "correct": found == shared,
        "wall_s": round(t4 - t0, 3),
        "phases_s": {
            "keys_and_setup_message": round(t1 - t0, 3),
            "create_request": round(t2 - t1, 3),
            "process_request": round(t3 - t2, 3),
            "get_result": round(t4 - t3, 3),
        },
        "cpu_s": round(cpu_s, 3),
        "message_bytes": {
            "setup": setup.ByteSize(),
            "request": request.ByteSize(),
            "response": response.ByteSize(),
        },
        "rss_before_protocol_mib": rss_before,
        "peak_rss_mib": _max_rss_mib(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="items on each side")
    parser.add_argument("--overlap", type=float, default=0.5, help="fraction shared (0..1)")
    parser.add_argument("--seed", type=int, default=4, help="seed of the synthetic sets")
    parser.add_argument(
        "--fpr", type=float, default=1e-9, help="false-positive rate (upstream tests: 1e-9)"
    )
    parser.add_argument(
        "--reveal",
        action="store_true",
        help="reveal_intersection=True and GetIntersection (default: size only)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    result = run(args.size, args.overlap, args.seed, args.fpr, args.reveal)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(
            f"{result['peer']} {result['peer_version']}: {result['size']:,} x "
            f"{result['size']:,}, overlap {result['overlap']}: found "
            f"{result['intersection_found']:,} (expected {result['expected_intersection']:,}) "
            f"in {result['wall_s']} s, peak RSS {result['peak_rss_mib']} MiB"
        )
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
