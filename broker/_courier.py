"""Delivers what the broker relays outside flows: revocations and agreement revocations.

* A revocation is stored first (``RelayRevocation``), then pushed to the recipient's
  ``NodeService.Revoke``; a verified acknowledgement ends it. A push that fails leaves it
  pending: a background sweep re-pushes pending revocations, each after a delay that
  doubles from 2 s up to a minute (``broker.revocations.next_attempt_at``), and the
  recipient can also pull them (``ListPendingRevocations``) and acknowledge directly.
  Several broker replicas may push the same revocation; nodes acknowledge idempotently.
* An agreement revocation is announced to both parties (``NodeService.AgreementRevoked``),
  best effort, in the background, with a few retries: each node also enforces its own copy
  of the agreement and refuses flows the broker would refuse.

Logs name revocation and agreement ids and node names, never release ids.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime
from typing import Final

import grpc

from broker._audit import BrokerAudit
from broker._channels import NodeChannels
from broker._store import BrokerStore, RevocationRecord
from broker.errors import AcknowledgementInvalid, UnknownNode
from broker.revocations import check_ack, next_attempt_at
from consent.serde import ack_from_proto, revocation_from_proto
from kernel.wire.accord.common.v1 import agreement_pb2, revocation_pb2
from kernel.wire.accord.node.v1 import node_pb2

log = logging.getLogger("accord.broker")

PUSH_TIMEOUT_S: Final = 10.0
SWEEP_INTERVAL_S: Final = 2.0
SWEEP_PAGE: Final = 500
NOTICE_ATTEMPTS: Final = 4
NOTICE_FIRST_DELAY_S: Final = 1.0


class RevocationCourier:
    def __init__(
        self,
        store: BrokerStore,
        channels: NodeChannels,
        audit: BrokerAudit,
        *,
        now: Callable[[], datetime],
        sweep_interval: float = SWEEP_INTERVAL_S,
        push_timeout: float = PUSH_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._channels = channels
        self._audit = audit
        self._now = now
        self._interval = sweep_interval
        self._push_timeout = push_timeout
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._notices = ThreadPoolExecutor(max_workers=4, thread_name_prefix="accord-notice")
        self._announcing: set[Future[None]] = set()

    # --- revocations --------------------------------------------------------------------

    def push(self, record: RevocationRecord) -> RevocationRecord:
        """One delivery attempt to the recipient; the record as it stands afterwards
        (acknowledged, or still pending). A failure is not an error for the owner."""
        message = revocation_pb2.Revocation.FromString(record.message)
        record = self._store.record_attempt(record.revocation_id, now=self._now())
        try:
            stub = self._channels.stub(record.recipient)
            response = stub.Revoke(
                node_pb2.RevokeRequest(revocation=message), timeout=self._push_timeout
            )
        except UnknownNode:
            log.info("revocation %s waits: its recipient is not registered", record.revocation_id)
            return record
        except grpc.RpcError as exc:
            log.info(
                "revocation %s not delivered yet (%s); it stays pending",
                record.revocation_id,
                _code_name(exc),
            )
            return record
        if not response.HasField("ack"):
            log.warning("the recipient answered revocation %s without an ack", record.revocation_id)
            return record
        try:
            return self.accept_ack(record, response.ack)
        except AcknowledgementInvalid as exc:
            log.warning("the ack of revocation %s was refused: %s", record.revocation_id, exc)
            return record

    def accept_ack(
        self, record: RevocationRecord, ack_message: revocation_pb2.RevocationAck
    ) -> RevocationRecord:
        """Verify the recipient's ack against the revocation and the agreement's recipient
        key, store it and log it; ``AcknowledgementInvalid`` otherwise. Idempotent."""
        revocation = revocation_from_proto(revocation_pb2.Revocation.FromString(record.message))
        agreement = self._store.agreement(record.agreement_id).signed.agreement
        ack = ack_from_proto(ack_message)
        check_ack(ack, revocation, agreement)
        stored, changed = self._store.acknowledge(
            record.revocation_id, ack=ack_message.SerializeToString(deterministic=True)
        )
        if changed:
            self._audit.record(
                "revocation-acknowledged",
                revocation_id=record.revocation_id,
                agreement_id=record.agreement_id,
                recipient=record.recipient,
                deleted_records=ack.deleted_records,
            )
        return stored

    def sweep(self) -> int:
        """Push every pending revocation that is due; how many were tried. A recipient
        that did not answer is skipped for the rest of the sweep."""
        now = self._now()
        tried = 0
        unreachable: set[str] = set()
        for record in self._pending():
            if self._stopping.is_set():
                break
            due = next_attempt_at(record.delivery_attempts, record.last_attempt_at)
            if record.recipient in unreachable or (due is not None and due > now):
                continue
            after = self.push(record)
            tried += 1
            if after.pending:
                unreachable.add(record.recipient)
        return tried

    def _pending(self) -> Iterable[RevocationRecord]:
        offset = 0
        while True:
            page = self._store.pending_revocations(limit=SWEEP_PAGE, offset=offset)
            yield from page
            if len(page) < SWEEP_PAGE:
                return
            offset += SWEEP_PAGE

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = threading.Thread(
                target=self._sweep_until_stopped, name="accord-revocations", daemon=True
            )
            self._sweeper.start()

    def _sweep_until_stopped(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.sweep()
            except Exception:  # a database hiccup must not end the loop
                log.exception("the revocation retry sweep failed; trying again later")

    def stop(self, timeout: float = 15.0) -> None:
        """End the sweep and the announcements (waiting a bounded time for calls in
        flight), so nothing touches the database after the server stopped."""
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout)
        self._notices.shutdown(wait=False, cancel_futures=True)
        wait(list(self._announcing), timeout=timeout)

    # --- agreement revocations ----------------------------------------------------------

    def announce_agreement_revoked(
        self, revocation: agreement_pb2.AgreementRevocation, parties: Iterable[str]
    ) -> None:
        """Tell each party, in the background, that the agreement was revoked."""
        for node in parties:
            announcing = self._notices.submit(self._announce, node, revocation)
            self._announcing.add(announcing)
            announcing.add_done_callback(self._announcing.discard)

    def _announce(self, node: str, revocation: agreement_pb2.AgreementRevocation) -> None:
        delay = NOTICE_FIRST_DELAY_S
        for attempt in range(NOTICE_ATTEMPTS):
            if attempt and self._stopping.wait(delay):
                return
            delay *= 2
            try:
                self._channels.stub(node).AgreementRevoked(
                    node_pb2.AgreementRevokedRequest(revocation=revocation),
                    timeout=self._push_timeout,
                )
                return
            except UnknownNode:
                break
            except grpc.RpcError as exc:
                log.info(
                    "could not tell %s that agreement %s was revoked (%s)",
                    node,
                    revocation.agreement_id,
                    _code_name(exc),
                )
        log.warning(
            "gave up telling %s that agreement %s was revoked; the node learns it at its next "
            "flow or agreement listing",
            node,
            revocation.agreement_id,
        )


def _code_name(error: grpc.RpcError) -> str:
    try:
        return str(error.code().name).lower()
    except Exception:  # not a call error after all
        return "failed"
