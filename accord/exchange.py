"""A whole exchange on one machine: a broker and nodes as separate processes on loopback.

The demo, the match benchmark and the end-to-end tests all start the same processes an
operator starts (``accord broker serve``, ``accord node serve``), on ports the OS picks,
and wait for each to say it is listening.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Final

__all__ = ["LocalExchange", "Process"]

_READY = re.compile(r"listening on (\S+):(\d+)")
START_TIMEOUT_S: Final = 120.0


@dataclass
class Process:
    name: str
    address: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class LocalExchange:
    """Start, reach and stop the processes of a local exchange (a context manager)."""

    root: Path
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def __enter__(self) -> LocalExchange:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> Process:
        log = self.root / f"{name}.log"
        log_file = log.open("ab")
        popen = subprocess.Popen(
            [self.python, "-m", "accord", *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            env={**os.environ, **self.env},
        )
        log_file.close()
        address = _wait_ready(popen, name, log)
        process = Process(name, address, popen, log)
        self.processes.append(process)
        return process

    def start_broker(
        self,
        *,
        db: str,
        name: str = "broker",
        verbose: bool = True,
        listen: str = "127.0.0.1:0",
        keys: Path | None = None,
    ) -> Process:
        """``accord broker serve``; its keys in ``keys`` (default ``<root>/<name>-keys``),
        created by the broker on its first start."""
        key_dir = keys if keys is not None else self.root / f"{name}-keys"
        args = ["broker", "serve", "--db", db, "--listen", listen, "--name", name,
                "--keys", str(key_dir), "--insecure-loopback"]  # fmt: skip
        if verbose:
            args.append("--verbose")
        return self._spawn(name, args)

    def start_node(
        self,
        *,
        name: str,
        db: str,
        keys: Path,
        broker: Process,
        broker_name: str = "broker",
        workers: int | None = None,
        verbose: bool = True,
        listen: str = "127.0.0.1:0",
        advertise: str | None = None,
        broker_address: str | None = None,
        display_name: str | None = None,
    ) -> Process:
        args = ["node", "serve", "--db", db, "--keys", str(keys), "--listen", listen,
                "--broker", broker_address or broker.address, "--broker-name", broker_name,
                "--insecure-loopback"]  # fmt: skip
        if advertise is not None:
            args += ["--advertise", advertise]
        if display_name is not None:
            args += ["--display-name", display_name]
        if workers is not None:
            args += ["--workers", str(workers)]
        if verbose:
            args.append("--verbose")
        return self._spawn(name, args)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in reversed(self.processes):
            try:
                process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
            if process.popen.stdout is not None:
                process.popen.stdout.close()
        self.processes.clear()


def _wait_ready(popen: subprocess.Popen[bytes], name: str, log: Path) -> str:
    """Read the process's standard output until it says where it listens."""
    assert popen.stdout is not None
    found: list[str] = []
    done = threading.Event()

    def read(stream: IO[bytes]) -> None:
        for raw in stream:
            match = _READY.search(raw.decode("utf-8", "replace"))
            if match:
                found.append(f"{match.group(1)}:{match.group(2)}")
                break
        done.set()

    reader = threading.Thread(target=read, args=(popen.stdout,), daemon=True)
    reader.start()
    done.wait(START_TIMEOUT_S)
    if not found:
        popen.kill()
        popen.wait()
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{name} did not start:\n{tail}")
    return found[0]
