"""What a running node does between requests: relay revocations, purge, get witnessed.

One background thread, one tick every few seconds:

* **revocations**: every pending revocation in the owner's outbox goes to the broker
  (``RelayRevocation``, idempotent on its id), which pushes it to the recipient; when the
  recipient's signed acknowledgement comes back it is checked and logged. A failure
  leaves it pending for the next tick: unacknowledged revocations are retried for as long
  as they stay pending, and ``accord revocation list`` shows them to compliance.
* **retention**: received records and match results past their ``delete_after`` are
  deleted (``Exchange.purge``), and the deletion is logged.
* **witness**: when the audit log has grown, its latest signed head goes to the broker
  with an RFC 9162 consistency proof from the last head the broker witnessed, at most
  once per ``witness_every`` seconds; the proof is built from the frontier at the
  witnessed size and the leaves added since (the whole log is read once, at start).

Failures are logged without customer data and never stop the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

import grpc

from consent import Ledger
from consent.merkle import MerkleFrontier, consistency_proof_extending
from consent.serde import ack_from_proto, revocation_to_proto, tree_head_to_proto
from kernel.rpc import all_pages
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc
from kernel.wire.accord.common.v1 import audit_pb2
from node._exchange import Exchange
from node.errors import FlowRefused

log = logging.getLogger("accord.node")

RPC_TIMEOUT_S: Final = 30.0


class Housekeeper:
    def __init__(
        self,
        exchange: Exchange,
        ledger: Ledger,
        broker: broker_pb2_grpc.BrokerServiceStub,
        *,
        origin: str,
        interval: float = 2.0,
        witness_every: float = 10.0,
    ) -> None:
        self._exchange = exchange
        self._ledger = ledger
        self._broker = broker
        self._origin = origin
        self._interval = interval
        self._witness_every = witness_every
        self._witnessed_size: int | None = None  # unknown until asked
        # The log's frontier at the witnessed size: the next proof then reads only the
        # leaves added since (consent.merkle.consistency_proof_extending).
        self._witnessed_frontier: MerkleFrontier | None = None
        self._last_witness = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="accord-housekeeping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=RPC_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self._interval)

    def tick(self, *, witness_now: bool = False) -> None:
        for step in (self.relay_revocations, self.purge):
            try:
                step()
            except Exception:  # a bad tick must not end the thread
                log.exception("housekeeping step %s failed", step.__name__)
        if witness_now or time.monotonic() - self._last_witness >= self._witness_every:
            try:
                self.witness()
            except Exception:
                log.exception("sending the tree head to the witness failed")

    # --- steps ----------------------------------------------------------------------------

    def relay_revocations(self) -> int:
        """Send every pending revocation; return how many came back acknowledged."""
        outbox = self._exchange.outbox
        settled = 0
        for revocation in outbox.pending():
            outbox.record_attempt(revocation.revocation_id)
            try:
                response = self._broker.RelayRevocation(
                    broker_pb2.RelayRevocationRequest(revocation=revocation_to_proto(revocation)),
                    timeout=RPC_TIMEOUT_S,
                )
            except grpc.RpcError as exc:
                log.warning(
                    "revocation %s not relayed yet: %s",
                    revocation.revocation_id,
                    exc.code().name if exc.code() else "error",
                )
                continue
            if response.status.HasField("ack"):
                try:
                    outbox.acknowledged(ack_from_proto(response.status.ack))
                    settled += 1
                except FlowRefused as refusal:
                    log.warning("revocation %s: bad acknowledgement (%s)",
                                revocation.revocation_id, refusal)  # fmt: skip
        return settled

    def purge(self) -> tuple[int, int]:
        return self._exchange.purge()

    def witness(self) -> bool:
        """Have the broker witness the latest head if the log grew; True if it did."""
        self._last_witness = time.monotonic()
        head = self._ledger.latest_head()
        if head is None:
            return False
        if self._witnessed_size is None:
            self._witnessed_size = self._latest_witnessed_size()
        old = self._witnessed_size
        if head.tree_size <= old:
            return False
        if old == 0:
            # Growing from the empty tree needs no proof, and the ledger keeps the frontier
            # of its current size: the first witness after a start reads no leaves (it used
            # to hash the whole log while the node's first flows ran).
            frontier, added, path = None, [], []
        else:
            frontier = self._witnessed_frontier
            if frontier is None or frontier.size != old:
                frontier = MerkleFrontier.from_leaf_hashes(self._ledger.leaf_hashes(upto=old))
            added = self._ledger.leaf_hashes(since=old, upto=head.tree_size)
            path = consistency_proof_extending(frontier, added)
        request = broker_pb2.WitnessTreeHeadRequest(
            tree_head=tree_head_to_proto(head),
            consistency=audit_pb2.ConsistencyProof(
                origin=self._origin,
                first_tree_size=old,
                second_tree_size=head.tree_size,
                path=path,
            ),
        )
        try:
            self._broker.WitnessTreeHead(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError:
            self._witnessed_size = None  # ask the broker again next time
            raise
        self._witnessed_size = head.tree_size
        if frontier is None:
            grown = self._ledger.frontier()  # None below if the log grew in the meantime
        else:
            grown = frontier.copy()
            grown.extend(added)
        matches = grown.size == head.tree_size and grown.root() == head.root_hash
        self._witnessed_frontier = grown if matches else None
        return True

    def _latest_witnessed_size(self) -> int:
        """The size of the newest head of this log the broker witnessed (0 if none)."""
        pages = all_pages(
            lambda page: self._broker.ListWitnessedHeads(
                broker_pb2.ListWitnessedHeadsRequest(origin=self._origin, page=page),
                timeout=RPC_TIMEOUT_S,
            )
        )
        return max((int(h.tree_head.tree_size) for page in pages for h in page.heads), default=0)
