"""consent.model and consent.purposes: event rules, the decision rule, and a reference.

The reference at the bottom (``reference_decision``) transcribes the module docstring of
``consent.model`` as literally as possible, by brute force, and ``decide`` must agree
with it on random histories.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.errors import ConsentError, InvalidConsentEvent, UnknownPurpose
from consent.model import (
    ANY_RECIPIENT,
    MAX_CLOCK_SKEW,
    Channel,
    CollectionMethod,
    ConsentEvent,
    ConsentState,
    ConsentStatus,
    EventType,
    NewConsentEvent,
    Notice,
    decide,
    decide_latest,
    states_of,
)
from consent.purposes import PURPOSES, TAXONOMY_VERSION, purpose

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CROSS_SELL = "marketing.cross_sell"
DIRECT = "marketing.direct"
BLUEWATER = "bluewater-travel"
SOLENT = "solent-boats"
NOTICE = Notice("https://solent-boats.example/privacy/offers", "3", "ab" * 32, "en-GB")
MICROSECOND = timedelta(microseconds=1)
SECOND = timedelta(seconds=1)


def new_event(**changes: Any) -> NewConsentEvent:
    """A well-formed grant; ``changes`` break one thing at a time."""
    base = NewConsentEvent(
        event_id=str(uuid.uuid4()),
        event_type=EventType.GIVEN,
        purpose=CROSS_SELL,
        recipient=BLUEWATER,
        collected_at=T0 - timedelta(hours=1),
        collection_method=CollectionMethod.WEB_FORM,
        actor="crm-sync",
        channels=(Channel.EMAIL, Channel.SMS),
        notice=NOTICE,
        expires_at=T0 + timedelta(days=30),
    )
    return replace(base, **changes)


_leaves = iter(range(10**9))


def event(
    event_type: EventType = EventType.GIVEN,
    *,
    at: datetime = T0 - timedelta(days=1),
    recipient: str = BLUEWATER,
    purpose_id: str = CROSS_SELL,
    channels: tuple[Channel, ...] | None = None,
    expires_at: datetime | None = None,
    leaf_index: int | None = None,
) -> ConsentEvent:
    """A recorded event; grants default to e-mail and no expiry, log position increases."""
    grant = event_type in (EventType.GIVEN, EventType.RENEWED)
    return ConsentEvent(
        event_id=str(uuid.uuid4()),
        subject="5d43127c04a650aa2354814b37d91368",
        event_type=event_type,
        purpose=purpose_id,
        purpose_version=1,
        recipient=recipient,
        channels=(Channel.EMAIL,) if channels is None and grant else channels or (),
        collected_at=at,
        collection_method=CollectionMethod.WEB_FORM,
        actor="crm-sync",
        recorded_at=at,
        leaf_index=next(_leaves) if leaf_index is None else leaf_index,
        notice=NOTICE if grant else None,
        expires_at=expires_at,
    )


def status(
    events: list[ConsentEvent], *, now: datetime = T0, recipient: str = BLUEWATER
) -> ConsentStatus:
    return decide(events, purpose=CROSS_SELL, recipient=recipient, now=now).status


# --- the purpose taxonomy ------------------------------------------------------------------


def test_known_purposes_are_found_by_id() -> None:
    assert set(PURPOSES) == {CROSS_SELL, DIRECT, "analytics.overlap", "service.support"}
    for purpose_id, known in PURPOSES.items():
        assert purpose(purpose_id) is known
        assert known.id == purpose_id
        assert known.version >= 1
        assert known.legal_basis == "consent"
        assert known.data_categories


@pytest.mark.parametrize("unknown", ["marketing", "Marketing.Cross_Sell", "", "marketing.*"])
def test_an_unknown_purpose_is_refused_with_the_known_ones_listed(unknown: str) -> None:
    with pytest.raises(UnknownPurpose) as caught:
        purpose(unknown)
    message = str(caught.value)
    assert repr(unknown) in message
    assert TAXONOMY_VERSION in message
    for known in PURPOSES:
        assert known in message
    assert isinstance(caught.value, ConsentError)


def test_an_event_for_an_unknown_purpose_is_refused() -> None:
    with pytest.raises(UnknownPurpose, match=re.escape(CROSS_SELL)):
        new_event(purpose="marketing.everything").check(now=T0)


# --- NewConsentEvent.check ---------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"event_type": EventType.RENEWED},
        {"event_type": EventType.REQUESTED},  # notice shown, channels offered
        {"event_type": EventType.REQUESTED, "notice": None, "channels": ()},
        {"event_type": EventType.REFUSED, "notice": None, "channels": (), "expires_at": None},
        {"event_type": EventType.WITHDRAWN, "notice": None, "channels": ()},
        {"event_type": EventType.EXPIRED, "channels": ()},
        {"recipient": ANY_RECIPIENT},
        {"recipient": "a"},
        {"recipient": "a" * 63},
        {"recipient": "x9-partner-2"},
        {"channels": ()},
        {"channels": tuple(Channel)},
        {"expires_at": None},
        {"collected_at": T0 + MAX_CLOCK_SKEW},  # at the edge of the allowed skew
        {"collected_at": datetime(2026, 3, 1, 14, tzinfo=timezone(timedelta(hours=2)))},
        {"expires_at": T0 - timedelta(hours=1) + MICROSECOND},
        {"actor": "pos/till 3 @ Lymington: j.smith+helper_1"},
        {"supersedes": str(uuid.uuid4())},
        {"notice": replace(NOTICE, language="zh-Hant-TW")},
        {"notice": replace(NOTICE, language="fil")},
        {"notice": replace(NOTICE, reference="r" * 512, version="v" * 64)},
    ],
)
def test_well_formed_events_pass(changes: dict[str, Any]) -> None:
    new_event(**changes).check(now=T0)


NAIVE = datetime(2026, 3, 1, 11, 0)
_ID = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")


BROKEN = [
    pytest.param({"event_id": "not-a-uuid"}, "event_id must be a UUID", id="id-not-uuid"),
    pytest.param({"event_id": ""}, "event_id must be a UUID", id="id-empty"),
    pytest.param({"event_id": str(_ID)[:-1]}, "event_id must be a UUID", id="id-truncated"),
    # The id is the idempotency key (and a 36-character column): one UUID, one spelling.
    pytest.param({"event_id": str(_ID).upper()}, "event_id must be a UUID", id="id-upper-case"),
    pytest.param({"event_id": "{" + str(_ID) + "}"}, "event_id must be a UUID", id="id-braces"),
    pytest.param({"event_id": _ID.urn}, "event_id must be a UUID", id="id-urn"),
    pytest.param({"event_id": _ID.hex}, "event_id must be a UUID", id="id-no-hyphens"),
    pytest.param({"recipient": ""}, "recipient must be", id="recipient-empty"),
    pytest.param({"recipient": "Bluewater-Travel"}, "recipient must be", id="recipient-upper-case"),
    pytest.param({"recipient": "-bluewater"}, "recipient must be", id="recipient-leading-hyphen"),
    pytest.param({"recipient": "bluewater-"}, "recipient must be", id="recipient-trailing-hyphen"),
    pytest.param({"recipient": "blue_water"}, "recipient must be", id="recipient-underscore"),
    pytest.param({"recipient": "blue water"}, "recipient must be", id="recipient-space"),
    pytest.param({"recipient": "a" * 64}, "recipient must be", id="recipient-64-chars"),
    pytest.param({"recipient": "**"}, "recipient must be", id="recipient-double-star"),
    pytest.param(
        {"recipient": BLUEWATER + "\n"}, "recipient must be", id="recipient-trailing-newline"
    ),
    pytest.param(
        {"collected_at": NAIVE}, "collected_at must carry a time zone", id="collected-naive"
    ),
    pytest.param(
        {"expires_at": NAIVE + timedelta(days=1)},
        "expires_at must carry a time zone",
        id="expires-naive",
    ),
    pytest.param(
        {"collected_at": T0 + MAX_CLOCK_SKEW + MICROSECOND},
        "collected_at is in the future",
        id="collected-beyond-skew",
    ),
    pytest.param(
        {"collected_at": T0 + timedelta(days=1), "expires_at": None},
        "in the future",
        id="collected-tomorrow",
    ),
    pytest.param(
        {"expires_at": T0 - timedelta(hours=1)},
        "expires_at must be after collected_at",
        id="expires-equal",
    ),
    pytest.param(
        {"expires_at": T0 - timedelta(hours=2)},
        "expires_at must be after collected_at",
        id="expires-before",
    ),
    pytest.param(
        {"notice": None}, "a given consent needs the notice shown", id="given-without-notice"
    ),
    pytest.param(
        {"event_type": EventType.RENEWED, "notice": None},
        "a renewed consent needs the notice",
        id="renewed-without-notice",
    ),
    pytest.param(
        {"event_type": EventType.WITHDRAWN},
        "a withdrawn event takes no channels",
        id="withdrawn-with-channels",
    ),
    pytest.param(
        {"event_type": EventType.REFUSED, "notice": None},
        "a refused event takes no channels",
        id="refused-with-channels",
    ),
    pytest.param(
        {"event_type": EventType.EXPIRED},
        "expired event takes no channels",
        id="expired-with-channels",
    ),
    pytest.param(
        {"channels": (Channel.EMAIL, Channel.EMAIL)},
        "a channel is listed twice",
        id="channel-twice",
    ),
    pytest.param(
        {"channels": (Channel.SMS, Channel.POST, Channel.SMS)},
        "a channel is listed twice",
        id="channel-twice-among-three",
    ),
    pytest.param(
        {"notice": replace(NOTICE, sha256="AB" * 32)}, "notice sha256", id="hash-upper-case"
    ),
    pytest.param({"notice": replace(NOTICE, sha256="ab" * 31)}, "notice sha256", id="hash-short"),
    pytest.param({"notice": replace(NOTICE, sha256="ab" * 33)}, "notice sha256", id="hash-long"),
    pytest.param({"notice": replace(NOTICE, sha256="zz" * 32)}, "notice sha256", id="hash-not-hex"),
    pytest.param(
        {"notice": replace(NOTICE, sha256="ab" * 32 + "\n")},
        "notice sha256",
        id="hash-trailing-newline",
    ),
    pytest.param(
        {"notice": replace(NOTICE, language="english")}, "notice language", id="language-word"
    ),
    pytest.param(
        {"notice": replace(NOTICE, language="e")}, "notice language", id="language-one-letter"
    ),
    pytest.param(
        {"notice": replace(NOTICE, language="en_GB")}, "notice language", id="language-underscore"
    ),
    pytest.param({"notice": replace(NOTICE, language="")}, "notice language", id="language-empty"),
    pytest.param(
        {"notice": replace(NOTICE, language="en-GB\n")},
        "notice language",
        id="language-trailing-newline",
    ),
    pytest.param(
        {"notice": replace(NOTICE, reference="")}, "notice reference", id="reference-empty"
    ),
    pytest.param(
        {"notice": replace(NOTICE, reference="r" * 513)},
        "notice reference",
        id="reference-too-long",
    ),
    pytest.param({"notice": replace(NOTICE, version="")}, "notice version", id="version-empty"),
    pytest.param(
        {"notice": replace(NOTICE, version="v" * 65)}, "notice version", id="version-too-long"
    ),
    pytest.param({"actor": ""}, "actor must be", id="actor-empty"),
    pytest.param({"actor": "a" * 129}, "actor must be", id="actor-too-long"),
    pytest.param({"actor": "crm; drop table"}, "actor must be", id="actor-semicolon"),
    pytest.param({"actor": "crm-sync\n"}, "actor must be", id="actor-trailing-newline"),
    pytest.param(
        {"supersedes": "previous"}, "supersedes must be an event id", id="supersedes-not-uuid"
    ),
]


@pytest.mark.parametrize(("changes", "reason"), BROKEN)
def test_each_broken_rule_is_refused_and_named(changes: dict[str, Any], reason: str) -> None:
    # The fixture is valid (test_well_formed_events_pass), so only ``changes`` can fail.
    with pytest.raises(InvalidConsentEvent, match=re.escape(reason)):
        new_event(**changes).check(now=T0)


def test_the_future_is_judged_against_the_now_given() -> None:
    late = new_event(collected_at=T0 + timedelta(hours=1), expires_at=None)
    with pytest.raises(InvalidConsentEvent, match="in the future"):
        late.check(now=T0)
    late.check(now=T0 + timedelta(hours=1) - MAX_CLOCK_SKEW)


# --- decide: one event at a time -----------------------------------------------------------


def test_no_event_means_no_consent() -> None:
    state = decide([], purpose=CROSS_SELL, recipient=BLUEWATER, now=T0)
    assert state == ConsentState(CROSS_SELL, BLUEWATER, ConsentStatus.NONE)
    assert not state.valid
    assert decide_latest(None, purpose=CROSS_SELL, recipient=BLUEWATER, now=T0) == state


def test_a_given_consent_is_valid_with_its_channels() -> None:
    grant = event(at=T0 - timedelta(days=2), channels=(Channel.EMAIL, Channel.POST))
    grant = replace(grant, expires_at=T0 + timedelta(days=3))
    state = decide([grant], purpose=CROSS_SELL, recipient=BLUEWATER, now=T0)
    assert state == ConsentState(
        purpose=CROSS_SELL,
        recipient=BLUEWATER,
        status=ConsentStatus.VALID,
        channels=(Channel.EMAIL, Channel.POST),
        event_id=grant.event_id,
        since=grant.collected_at,
        expires_at=grant.expires_at,
    )
    assert state.valid


def test_a_renewed_consent_is_valid() -> None:
    assert status([event(EventType.RENEWED)]) is ConsentStatus.VALID


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [
        (EventType.REQUESTED, ConsentStatus.REQUESTED),
        (EventType.REFUSED, ConsentStatus.REFUSED),
        (EventType.WITHDRAWN, ConsentStatus.WITHDRAWN),
        (EventType.EXPIRED, ConsentStatus.EXPIRED),
    ],
)
def test_events_that_are_not_grants_give_no_consent(
    event_type: EventType, expected: ConsentStatus
) -> None:
    grant = event()
    ending = event(event_type, channels=(Channel.EMAIL,))  # later; channels must not leak
    state = decide([grant, ending], purpose=CROSS_SELL, recipient=BLUEWATER, now=T0)
    assert state.status is expected
    assert not state.valid
    assert state.channels == ()
    assert state.event_id == ending.event_id


def test_a_consent_expires_exactly_at_expires_at() -> None:
    expires_at = T0 + timedelta(days=1)
    grant = event(expires_at=expires_at)
    assert status([grant], now=expires_at - MICROSECOND) is ConsentStatus.VALID
    at_expiry = decide([grant], purpose=CROSS_SELL, recipient=BLUEWATER, now=expires_at)
    assert at_expiry.status is ConsentStatus.EXPIRED
    assert at_expiry.channels == ()
    assert at_expiry.expires_at == expires_at
    assert status([grant], now=expires_at + timedelta(days=400)) is ConsentStatus.EXPIRED


def test_expiry_is_compared_as_an_instant_across_time_zones() -> None:
    plus_two = timezone(timedelta(hours=2))
    grant = event(expires_at=datetime(2026, 3, 1, 14, 0, tzinfo=plus_two))  # == T0
    assert status([grant], now=T0 - MICROSECOND) is ConsentStatus.VALID
    assert status([grant], now=T0) is ConsentStatus.EXPIRED


def test_a_consent_without_expiry_stays_valid() -> None:
    assert status([event()], now=T0 + timedelta(days=10_000)) is ConsentStatus.VALID


# --- decide: which event decides -----------------------------------------------------------


def test_a_withdrawal_before_the_flow_ends_the_consent() -> None:
    history = [event(at=T0 - timedelta(days=1)), event(EventType.WITHDRAWN, at=T0 - SECOND)]
    assert status(history) is ConsentStatus.WITHDRAWN


def test_a_withdrawal_after_the_flow_time_does_not_count_yet() -> None:
    history = [event(at=T0 - timedelta(days=1)), event(EventType.WITHDRAWN, at=T0 + SECOND)]
    assert status(history) is ConsentStatus.VALID
    assert status(history, now=T0 + SECOND) is ConsentStatus.WITHDRAWN


def test_events_collected_after_now_are_ignored() -> None:
    future_grant = event(at=T0 + MICROSECOND)
    assert status([future_grant]) is ConsentStatus.NONE
    assert status([future_grant], now=T0 + MICROSECOND) is ConsentStatus.VALID
    refusal = event(EventType.REFUSED, at=T0 - timedelta(hours=1))
    assert status([refusal, future_grant]) is ConsentStatus.REFUSED


def test_a_specific_refusal_beats_an_earlier_wildcard_grant() -> None:
    history = [
        event(recipient=ANY_RECIPIENT, at=T0 - timedelta(days=2)),
        event(EventType.REFUSED, recipient=BLUEWATER, at=T0 - timedelta(days=1)),
    ]
    assert status(history, recipient=BLUEWATER) is ConsentStatus.REFUSED
    # The refusal names one partner: the grant to any partner still holds for the others,
    # and asking about ``*`` considers only events for ``*``.
    assert status(history, recipient=SOLENT) is ConsentStatus.VALID
    assert status(history, recipient=ANY_RECIPIENT) is ConsentStatus.VALID


def test_a_later_wildcard_withdrawal_beats_an_earlier_specific_grant() -> None:
    history = [
        event(recipient=BLUEWATER, at=T0 - timedelta(days=2)),
        event(recipient=SOLENT, at=T0 - timedelta(days=2)),
        event(EventType.WITHDRAWN, recipient=ANY_RECIPIENT, at=T0 - timedelta(days=1)),
    ]
    for recipient in (BLUEWATER, SOLENT, ANY_RECIPIENT):
        assert status(history, recipient=recipient) is ConsentStatus.WITHDRAWN


def test_a_later_wildcard_grant_beats_an_earlier_specific_refusal() -> None:
    history = [
        event(EventType.REFUSED, recipient=BLUEWATER, at=T0 - timedelta(days=2)),
        event(recipient=ANY_RECIPIENT, at=T0 - timedelta(days=1)),
    ]
    assert status(history, recipient=BLUEWATER) is ConsentStatus.VALID


def test_asking_about_any_partner_ignores_grants_to_one_partner() -> None:
    assert status([event(recipient=BLUEWATER)], recipient=ANY_RECIPIENT) is ConsentStatus.NONE
    assert status([event(recipient=BLUEWATER)], recipient=SOLENT) is ConsentStatus.NONE


def test_other_purposes_do_not_count() -> None:
    history = [event(), event(EventType.WITHDRAWN, purpose_id=DIRECT, at=T0 - SECOND)]
    assert status(history) is ConsentStatus.VALID
    state = decide(history, purpose=DIRECT, recipient=BLUEWATER, now=T0)
    assert state.status is ConsentStatus.WITHDRAWN
    assert decide(history, purpose="service.support", recipient=BLUEWATER, now=T0).status is (
        ConsentStatus.NONE
    )


def test_a_tie_on_collected_at_is_broken_by_log_position() -> None:
    at = T0 - timedelta(hours=1)
    grant = event(at=at, leaf_index=5)
    withdrawal = event(EventType.WITHDRAWN, at=at, leaf_index=6)
    assert status([grant, withdrawal]) is ConsentStatus.WITHDRAWN
    assert status([withdrawal, grant]) is ConsentStatus.WITHDRAWN
    regrant = replace(grant, leaf_index=7)
    assert status([regrant, withdrawal]) is ConsentStatus.VALID
    assert status([withdrawal, regrant]) is ConsentStatus.VALID


def test_collection_time_beats_log_position() -> None:
    # Recorded late (higher leaf index) but collected earlier: the later decision wins.
    withdrawal = event(EventType.WITHDRAWN, at=T0 - timedelta(hours=1), leaf_index=1)
    backfilled_grant = event(at=T0 - timedelta(days=30), leaf_index=2)
    assert status([withdrawal, backfilled_grant]) is ConsentStatus.WITHDRAWN


def test_collection_times_are_compared_as_instants_across_time_zones() -> None:
    plus_two = timezone(timedelta(hours=2))
    grant = event(at=T0 - timedelta(hours=1), leaf_index=1)  # 11:00Z
    withdrawal = event(  # 12:30+02:00 is 10:30Z: before the grant
        EventType.WITHDRAWN, at=datetime(2026, 3, 1, 12, 30, tzinfo=plus_two), leaf_index=2
    )
    assert status([grant, withdrawal]) is ConsentStatus.VALID


@pytest.mark.parametrize("version", [0, 2])
def test_a_grant_under_another_purpose_version_is_invalidated(version: int) -> None:
    grant = replace(event(), purpose_version=version)
    state = decide([grant], purpose=CROSS_SELL, recipient=BLUEWATER, now=T0)
    assert state.status is ConsentStatus.INVALIDATED
    assert state.channels == ()
    assert not state.valid
    renewed = event(EventType.RENEWED, at=T0 - SECOND)
    assert status([grant, renewed]) is ConsentStatus.VALID


def test_a_grant_for_a_purpose_no_longer_in_the_taxonomy_is_invalidated() -> None:
    grant = event(purpose_id="marketing.retired")
    state = decide([grant], purpose="marketing.retired", recipient=BLUEWATER, now=T0)
    assert state.status is ConsentStatus.INVALIDATED


def test_the_purpose_version_does_not_matter_for_a_withdrawal() -> None:
    withdrawal = replace(event(EventType.WITHDRAWN), purpose_version=2)
    assert status([withdrawal]) is ConsentStatus.WITHDRAWN


def test_expiry_is_reported_before_a_version_change() -> None:
    # The docstring does not rank the two; the code reports ``expired`` (pinned here).
    grant = replace(event(expires_at=T0), purpose_version=2)
    assert status([grant], now=T0) is ConsentStatus.EXPIRED
    assert status([grant], now=T0 - MICROSECOND) is ConsentStatus.INVALIDATED


def test_states_of_gives_one_sorted_state_per_purpose_and_recipient() -> None:
    history = [
        event(recipient=SOLENT),
        event(recipient=ANY_RECIPIENT, purpose_id=DIRECT),
        event(recipient=BLUEWATER),
        event(EventType.WITHDRAWN, recipient=BLUEWATER, at=T0 - SECOND),
    ]
    states = states_of(history, now=T0)
    assert [(s.purpose, s.recipient, s.status) for s in states] == [
        (CROSS_SELL, BLUEWATER, ConsentStatus.WITHDRAWN),
        (CROSS_SELL, SOLENT, ConsentStatus.VALID),
        (DIRECT, ANY_RECIPIENT, ConsentStatus.VALID),
    ]
    assert states_of([], now=T0) == []


# --- the reference: the docstring's rule, by brute force -----------------------------------

GRANTS = {EventType.GIVEN, EventType.RENEWED}
NOT_GRANTS = {
    EventType.REQUESTED: ConsentStatus.REQUESTED,
    EventType.REFUSED: ConsentStatus.REFUSED,
    EventType.WITHDRAWN: ConsentStatus.WITHDRAWN,
    EventType.EXPIRED: ConsentStatus.EXPIRED,
}


@dataclass(frozen=True)
class Expected:
    event: ConsentEvent | None
    statuses: frozenset[ConsentStatus]  # more than one only where the docstring allows it


def reference_decision(
    events: list[ConsentEvent], *, purpose_id: str, recipient: str, now: datetime
) -> Expected:
    # "Only events of the purpose, for the recipient asked about or for ``*``, collected
    # at or before ``now``, count." (For ``*``, both alternatives are ``*``.)
    counting = [
        e
        for e in events
        if e.purpose == purpose_id
        and e.recipient in (recipient, ANY_RECIPIENT)
        and e.collected_at <= now
    ]
    # "The latest of them decides (by collected_at, then by log position)": the one that
    # no other counting event comes after.
    latest = [
        e
        for e in counting
        if not any(
            (o.collected_at, o.leaf_index) > (e.collected_at, e.leaf_index) for o in counting
        )
    ]
    if not latest:
        return Expected(None, frozenset({ConsentStatus.NONE}))
    (deciding,) = latest
    if deciding.event_type not in GRANTS:
        return Expected(deciding, frozenset({NOT_GRANTS[deciding.event_type]}))
    # "valid for processing while now < expires_at and while the purpose's version is the
    # one they were given under; otherwise the status is expired or invalidated."
    expired = deciding.expires_at is not None and not now < deciding.expires_at
    current = PURPOSES.get(purpose_id)
    invalidated = current is None or current.version != deciding.purpose_version
    reasons = set()
    if expired:
        reasons.add(ConsentStatus.EXPIRED)
    if invalidated:
        reasons.add(ConsentStatus.INVALIDATED)
    return Expected(deciding, frozenset(reasons or {ConsentStatus.VALID}))


RECIPIENTS = [BLUEWATER, SOLENT, ANY_RECIPIENT]
PURPOSE_IDS = [CROSS_SELL, DIRECT]
ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
# A coarse grid of minutes, so that ties, expiries at ``now`` and ``now`` at a collection
# time all happen often; a microsecond either side of a grid point now and then.
minutes = st.integers(min_value=0, max_value=12)
jitter = st.sampled_from([timedelta(0), timedelta(0), MICROSECOND, -MICROSECOND])


@st.composite
def moments(draw: st.DrawFn) -> datetime:
    moment = T0 + timedelta(minutes=draw(minutes)) + draw(jitter)
    return moment.astimezone(draw(st.sampled_from(ZONES)))


@st.composite
def histories(draw: st.DrawFn) -> list[ConsentEvent]:
    size = draw(st.integers(min_value=0, max_value=10))
    positions = draw(st.permutations(range(size)))
    history = []
    for leaf_index in positions:
        event_type = draw(st.sampled_from(EventType))
        collected_at = draw(moments())
        expires_at = None
        if draw(st.booleans()):
            expires_at = collected_at + timedelta(minutes=draw(st.integers(1, 8)))
        channels: tuple[Channel, ...] = ()
        if event_type in GRANTS or event_type is EventType.REQUESTED:
            channels = tuple(draw(st.sets(st.sampled_from(Channel))))
        history.append(
            replace(
                event(event_type, leaf_index=leaf_index),
                purpose=draw(st.sampled_from(PURPOSE_IDS)),
                recipient=draw(st.sampled_from(RECIPIENTS)),
                purpose_version=draw(st.sampled_from([1, 1, 1, 2])),
                channels=channels,
                collected_at=collected_at,
                expires_at=expires_at,
            )
        )
    return history


def moments_to_ask(history: list[ConsentEvent], now: datetime) -> list[datetime]:
    """``now``, and every time in the history with a microsecond either side."""
    edges = [e.collected_at for e in history] + [e.expires_at for e in history if e.expires_at]
    return [now] + [edge + d for edge in edges for d in (-MICROSECOND, timedelta(0), MICROSECOND)]


@settings(max_examples=300)
@given(history=histories(), now=moments(), shuffle=st.randoms(use_true_random=False))
def test_decide_agrees_with_the_docstring_reference(
    history: list[ConsentEvent], now: datetime, shuffle: Any
) -> None:
    # The order events arrive in does not matter; only their times and positions do.
    shuffled = list(history)
    shuffle.shuffle(shuffled)
    for moment in moments_to_ask(history, now):
        for purpose_id in PURPOSE_IDS:
            for recipient in RECIPIENTS:
                expected = reference_decision(
                    history, purpose_id=purpose_id, recipient=recipient, now=moment
                )
                state = decide(history, purpose=purpose_id, recipient=recipient, now=moment)
                check_state(state, expected, purpose_id=purpose_id, recipient=recipient)
                assert decide(shuffled, purpose=purpose_id, recipient=recipient, now=moment) == (
                    state
                )


def check_state(
    state: ConsentState, expected: Expected, *, purpose_id: str, recipient: str
) -> None:
    assert state.purpose == purpose_id
    assert state.recipient == recipient
    assert state.status in expected.statuses
    if expected.event is None:
        assert state == ConsentState(purpose_id, recipient, ConsentStatus.NONE)
    else:
        assert state.event_id == expected.event.event_id
        assert state.since == expected.event.collected_at
        assert state.expires_at == expected.event.expires_at
        valid = state.status is ConsentStatus.VALID
        assert state.channels == (expected.event.channels if valid else ())
