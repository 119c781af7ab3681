"""The node's blinding workers: a process pool started once per node process.

Scalar multiplication is the cost of matching (two per identifier per side), so a node
uses every core: chunks of tokens go to one worker process per core (forkserver: they
start clean, without the parent's threads or database connections). A worker receives
the scope's 32-byte secret with each chunk; it keeps nothing between chunks.
"""

from __future__ import annotations

import multiprocessing
import os
from array import array
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Final

from kernel.crypto import BlindingKey
from kernel.errors import InvalidPoint
from node.blinding import random_order

__all__ = ["BlindingPool"]

CHUNK: Final = 2048


def _blind_chunk(secret: bytes, tokens: list[bytes], trusted: bool = False) -> list[bytes]:
    return BlindingKey(secret).blind_many(tokens, trusted=trusted)


class BlindingPool:
    """``blind(secret, tokens)`` on every core; ``InvalidPoint`` if any token is bad."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None
        if self.workers > 1:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["node._pool"])
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
            # Start the workers now, not inside the first flow.
            for future in [self._pool.submit(_warm) for _ in range(self.workers)]:
                future.result()

    def blind(self, secret: bytes, tokens: Sequence[bytes]) -> list[bytes]:
        if not tokens:
            return []
        if self._pool is None or len(tokens) <= CHUNK:
            return _blind_chunk(secret, list(tokens))
        futures: list[Future[list[bytes]]] = [
            self._pool.submit(_blind_chunk, secret, list(tokens[i : i + CHUNK]))
            for i in range(0, len(tokens), CHUNK)
        ]
        out: list[bytes] = []
        try:
            for future in futures:
                out.extend(future.result())
        except InvalidPoint:
            for future in futures:
                future.cancel()
            raise
        return out

    def submit(
        self, secret: bytes, tokens: list[bytes], *, trusted: bool = False
    ) -> Future[list[bytes]]:
        """One chunk, asynchronously (callers keep a window of chunks in flight)."""
        if self._pool is None:
            done: Future[list[bytes]] = Future()
            try:
                done.set_result(_blind_chunk(secret, tokens, trusted))
            except InvalidPoint as exc:
                done.set_exception(exc)
            return done
        return self._pool.submit(_blind_chunk, secret, tokens, trusted)

    def random_order(self, count: int) -> Future[array[int]]:
        """A random permutation of ``range(count)``, drawn in a worker: a node that must
        shuffle a set it is still receiving asks for the order first, so the draw (half a
        second at a million) runs beside the flow instead of at its end."""
        if self._pool is None:
            done: Future[array[int]] = Future()
            done.set_result(random_order(count))
            return done
        return self._pool.submit(random_order, count)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _warm() -> int:
    return os.getpid()
