"""Consent events and the decision rule: plain typed Python, no storage, no transport.

A consent is per (subject, purpose, recipient). It is stored as append-only events; the
state is *derived* from them and decided against an explicit ``now``:

* Only events of the purpose, for the recipient asked about or for ``*`` (any partner
  under an agreement for that purpose), collected at or before ``now``, count.
* The **latest** of them decides (by ``collected_at``, then by log position). So a later
  withdrawal for ``*`` ends an earlier grant to one partner, and a later refusal for one
  partner overrides an earlier grant for ``*``: the subject's most recent decision that
  covers the recipient wins.
* ``given`` and ``renewed`` are valid for processing while ``now < expires_at`` (never
  by waiting for an expiry job) and while the purpose's version is the one they were
  given under; otherwise the status is ``expired`` or ``invalidated``.

Field names follow ISO/IEC TS 27560 and the Kantara consent receipt where they apply
(docs/consent.md has the mapping).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from consent.errors import InvalidConsentEvent
from consent.purposes import PURPOSES, purpose

__all__ = [
    "ANY_RECIPIENT",
    "Channel",
    "CollectionMethod",
    "ConsentEvent",
    "ConsentState",
    "ConsentStatus",
    "EventType",
    "NewConsentEvent",
    "Notice",
    "decide",
    "decide_latest",
    "status_of",
    "states_of",
]

ANY_RECIPIENT: Final = "*"
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)
_RECIPIENT = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_ACTOR = re.compile(r"^[\w .@:/+-]{1,128}\Z")


def _canonical_uuid(text: str) -> bool:
    """One spelling per id: ids are idempotency keys, so ``{…}`` or upper case must not
    make the same UUID a second event."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


class EventType(StrEnum):
    """What happened (DPV consent states; CONSENT.md "States")."""

    REQUESTED = "requested"
    GIVEN = "given"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"
    RENEWED = "renewed"
    EXPIRED = "expired"


class CollectionMethod(StrEnum):
    WEB_FORM = "web_form"
    POINT_OF_SALE = "point_of_sale"
    CALL_CENTRE = "call_centre"
    IMPORT = "import"
    API = "api"


class Channel(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    POST = "post"
    SMS = "sms"


class ConsentStatus(StrEnum):
    NONE = "none"
    REQUESTED = "requested"
    VALID = "valid"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    # Given under an older version of the purpose: not valid until renewed.
    INVALIDATED = "invalidated"


_GRANTS: Final = frozenset({EventType.GIVEN, EventType.RENEWED})


@dataclass(frozen=True, slots=True)
class Notice:
    """The notice the subject was shown (27560: notice reference, version, hash, language)."""

    reference: str
    version: str
    sha256: str  # lower-case hex of the exact text shown
    language: str  # BCP 47

    def check(self) -> None:
        if not self.reference or len(self.reference) > 512:
            raise InvalidConsentEvent("notice reference must be 1-512 characters")
        if not self.version or len(self.version) > 64:
            raise InvalidConsentEvent("notice version must be 1-64 characters")
        if not _HEX64.match(self.sha256):
            raise InvalidConsentEvent("notice sha256 must be 64 lower-case hex digits")
        if not _LANGUAGE.match(self.language):
            raise InvalidConsentEvent("notice language must be a BCP 47 tag such as en-GB")


@dataclass(frozen=True, slots=True)
class NewConsentEvent:
    """A consent event as a caller submits it, before the ledger records it."""

    event_id: str
    event_type: EventType
    purpose: str
    recipient: str
    collected_at: datetime
    collection_method: CollectionMethod
    actor: str
    channels: tuple[Channel, ...] = ()
    notice: Notice | None = None
    expires_at: datetime | None = None
    supersedes: str | None = None

    def check(self, *, now: datetime) -> None:
        """Raise ``InvalidConsentEvent`` (or ``UnknownPurpose``) naming the broken rule."""
        if not _canonical_uuid(self.event_id):
            raise InvalidConsentEvent(
                "event_id must be a UUID in its canonical form (lower-case, hyphenated)"
            )
        purpose(self.purpose)
        if self.recipient != ANY_RECIPIENT and not _RECIPIENT.match(self.recipient):
            raise InvalidConsentEvent(
                "recipient must be a partner's node name (like bluewater-travel) or *"
            )
        for moment, name in ((self.collected_at, "collected_at"), (self.expires_at, "expires_at")):
            if moment is not None and moment.utcoffset() is None:
                raise InvalidConsentEvent(f"{name} must carry a time zone")
        if self.collected_at > now + MAX_CLOCK_SKEW:
            raise InvalidConsentEvent("collected_at is in the future")
        if self.expires_at is not None and self.expires_at <= self.collected_at:
            raise InvalidConsentEvent("expires_at must be after collected_at")
        if not _ACTOR.match(self.actor):
            raise InvalidConsentEvent(
                "actor must be 1-128 letters, digits, spaces or . @ : / + - _"
            )
        if len(set(self.channels)) != len(self.channels):
            raise InvalidConsentEvent("a channel is listed twice")
        if self.event_type in _GRANTS:
            if self.notice is None:
                raise InvalidConsentEvent(
                    f"a {self.event_type} consent needs the notice shown (reference, "
                    "version, SHA-256 of its text, language)"
                )
        elif self.channels and self.event_type is not EventType.REQUESTED:
            raise InvalidConsentEvent(f"a {self.event_type} event takes no channels")
        if self.notice is not None:
            self.notice.check()
        if self.supersedes is not None and not _canonical_uuid(self.supersedes):
            raise InvalidConsentEvent("supersedes must be an event id (canonical UUID)")


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    """A recorded consent event: what was submitted, plus the subject and log position."""

    event_id: str
    subject: str  # the node-local pseudonym, never an identifier
    event_type: EventType
    purpose: str
    purpose_version: int
    recipient: str
    channels: tuple[Channel, ...]
    collected_at: datetime
    collection_method: CollectionMethod
    actor: str
    recorded_at: datetime
    leaf_index: int
    notice: Notice | None = None
    expires_at: datetime | None = None
    supersedes: str | None = None

    @property
    def order(self) -> tuple[datetime, int]:
        """Which of two events is later: collection time, then log position."""
        return (self.collected_at, self.leaf_index)


@dataclass(frozen=True, slots=True)
class ConsentState:
    """The derived state of one (subject, purpose, recipient) at one moment."""

    purpose: str
    recipient: str
    status: ConsentStatus
    channels: tuple[Channel, ...] = ()
    event_id: str | None = None
    since: datetime | None = None
    expires_at: datetime | None = None

    @property
    def valid(self) -> bool:
        return self.status is ConsentStatus.VALID


@dataclass(slots=True)
class _Latest:
    event: ConsentEvent | None = field(default=None)

    def offer(self, event: ConsentEvent) -> None:
        if self.event is None or event.order > self.event.order:
            self.event = event


def decide(
    events: Iterable[ConsentEvent], *, purpose: str, recipient: str, now: datetime
) -> ConsentState:
    """The state of consent for ``purpose`` to ``recipient`` at ``now`` (module docstring).

    ``events`` are one subject's events (any purposes and recipients; others are ignored).
    Asking about ``*`` considers only events for ``*``.
    """
    latest = _Latest()
    for event in events:
        if event.purpose != purpose or event.collected_at > now:
            continue
        if event.recipient == recipient or event.recipient == ANY_RECIPIENT:
            latest.offer(event)
    return decide_latest(latest.event, purpose=purpose, recipient=recipient, now=now)


def decide_latest(
    event: ConsentEvent | None, *, purpose: str, recipient: str, now: datetime
) -> ConsentState:
    """The state that ``event``, the latest covering one, gives (see ``decide``)."""
    if event is None:
        return ConsentState(purpose, recipient, ConsentStatus.NONE)
    status = status_of(
        event.event_type,
        purpose=purpose,
        purpose_version=event.purpose_version,
        expires_at=event.expires_at,
        now=now,
    )
    return ConsentState(
        purpose=purpose,
        recipient=recipient,
        status=status,
        channels=event.channels if status is ConsentStatus.VALID else (),
        event_id=event.event_id,
        since=event.collected_at,
        expires_at=event.expires_at,
    )


def status_of(
    event_type: EventType,
    *,
    purpose: str,
    purpose_version: int,
    expires_at: datetime | None,
    now: datetime,
) -> ConsentStatus:
    """The status the latest covering event gives at ``now`` (the module docstring's rule).

    Separate from ``decide_latest`` so that a bulk decision over millions of subjects
    (``Ledger.valid_subjects``) applies the same rule without building event objects.
    """
    status = _STATUS_OF[event_type]
    if event_type in _GRANTS:
        current = PURPOSES.get(purpose)
        if expires_at is not None and now >= expires_at:
            return ConsentStatus.EXPIRED
        if current is None or purpose_version != current.version:
            return ConsentStatus.INVALIDATED
    return status


_STATUS_OF: Final = {
    EventType.REQUESTED: ConsentStatus.REQUESTED,
    EventType.GIVEN: ConsentStatus.VALID,
    EventType.RENEWED: ConsentStatus.VALID,
    EventType.REFUSED: ConsentStatus.REFUSED,
    EventType.WITHDRAWN: ConsentStatus.WITHDRAWN,
    EventType.EXPIRED: ConsentStatus.EXPIRED,
}


def states_of(events: Sequence[ConsentEvent], *, now: datetime) -> list[ConsentState]:
    """The state of every (purpose, recipient) this subject has an event for, sorted."""
    keys = sorted({(e.purpose, e.recipient) for e in events})
    return [decide(events, purpose=p, recipient=r, now=now) for p, r in keys]
