"""The broker's own audit log: an RFC 9162 log (``consent.Ledger``) over its database.

Origin ``accord/broker/<name>``, heads signed with the broker's key, so ``accord audit
verify --db <broker db> --keys <broker keys>`` checks it like a node's. Entries record
what the broker decided and relayed: agreement ids, node names, flow ids, states,
failure reasons, padded set sizes, revocation ids, witnessed log sizes. Never a token,
a release id, a handle, or an exact overlap size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final

from sqlalchemy import Engine

from broker.errors import BrokerKeysMismatch
from consent import Ledger
from consent.records import SignedTreeHead, format_time
from kernel.keys import KeyStore

log = logging.getLogger("accord.broker")

RECORD_SCHEMA: Final = "accord.broker-event/1"
AuditValue = str | int | bool | None


class BrokerAudit:
    def __init__(self, ledger: Ledger, *, now: Callable[[], datetime]) -> None:
        self.ledger = ledger
        self._now = now

    @classmethod
    def open(cls, engine: Engine, keys: KeyStore, *, now: Callable[[], datetime]) -> BrokerAudit:
        """The broker's log in ``engine``'s database; signs its first (empty) head if the
        log is new, and refuses a database whose log belongs to another broker."""
        identity = keys.identity
        ledger = Ledger(
            engine,
            origin=identity.origin,
            controller=identity.name,
            signing_key=keys.signing_key(),
            now=now,
        )
        latest = ledger.latest_head()
        if latest is None:
            ledger.append([])
        elif latest.origin != identity.origin:
            raise BrokerKeysMismatch(
                f"this database's audit log is {latest.origin!r}, not {identity.origin!r}: "
                "check --db, --keys and --name"
            )
        return cls(ledger, now=now)

    def record(self, kind: str, **fields: AuditValue) -> None:
        """Append one entry. The action it records has already committed, so a failure
        here is logged, not raised: failing the call would make its caller retry an
        idempotent request that would not append again."""
        record: dict[str, AuditValue] = {
            "schema": RECORD_SCHEMA,
            "event": kind,
            "at": format_time(self._now()),
            **fields,
        }
        try:
            self.ledger.append_record(kind, dict(record))
        except Exception:
            log.exception("the broker could not append a %s entry to its audit log", kind)

    def latest_head(self) -> SignedTreeHead | None:
        return self.ledger.latest_head()
