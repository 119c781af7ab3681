"""``accord consent …``: record, show, import and erase consents (a node's own ledger)."""

from __future__ import annotations

import getpass
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from accord._options import (
    DEFAULT_DB,
    DEFAULT_KEYS,
    DEFAULT_REGION,
    DbOption,
    JsonOption,
    KeysOption,
    NodeContext,
    RegionOption,
    fail,
    node_context,
    out,
    print_json,
    region_for,
)
from consent import (
    ANY_RECIPIENT,
    PURPOSES,
    TAXONOMY_VERSION,
    Channel,
    CollectionMethod,
    ConsentEvent,
    EventType,
    NewConsentEvent,
    Notice,
    check_subject_proof,
    format_time,
    parse_time,
)
from consent._import import import_consents
from consent.errors import ConsentError, ProofBundleInvalid, SubjectNotFound
from kernel.crypto import sha256
from node import RevocationOutbox, customer_exists, delete_customer, find_customer
from node.errors import CustomerNotFound, NodeError

consent_app = typer.Typer(
    help="Record and inspect consents in the node's ledger.", no_args_is_help=True
)

SubjectArgument = Annotated[
    str, typer.Argument(help="The customer's external id, or one of their e-mails or phones.")
]
PurposeOption = Annotated[str, typer.Option("--purpose", help="A purpose from the taxonomy.")]
DEFAULT_VALIDITY_DAYS = 390  # 13 × 30 days, the refresh interval IAB TCF uses


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def resolve_subject(context: NodeContext, subject: str, region: str, *, allow_new: bool) -> str:
    """The external id ``subject`` names: a customer, a consent subject, or (if allowed) new."""
    try:
        return find_customer(context.engine, subject, default_region=region)
    except CustomerNotFound as exc:
        text = subject.strip()
        try:
            context.ledger.pseudonym_for(text)
            return text
        except SubjectNotFound:
            pass
        looks_like_identifier = "@" in text or text.lstrip("+").replace(" ", "").isdigit()
        if allow_new and text and not looks_like_identifier:
            return text
        fail(str(exc))


def _time_option(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        fail(f"{name} must be an ISO 8601 time with a zone, like 2026-11-23T10:00:00Z", code=2)


def _record(context: NodeContext, external_id: str, event: NewConsentEvent) -> ConsentEvent:
    try:
        (recorded,) = context.ledger.record([(external_id, event)])
    except ConsentError as exc:
        fail(str(exc))
    return recorded


def _report(recorded: ConsentEvent, external_id: str, as_json: bool) -> None:
    if as_json:
        print_json({"external_id": external_id, **_event_json(recorded)})
        return
    out.print(
        f"recorded {recorded.event_type} for {recorded.purpose} → {recorded.recipient} "
        f"(event {recorded.event_id}, audit-log entry {recorded.leaf_index})",
        highlight=False,
    )


def _outbox(context: NodeContext) -> RevocationOutbox:
    return RevocationOutbox(
        context.engine,
        node_name=context.keys.identity.name,
        ledger=context.ledger,
        signing_key=context.keys.signing_key(),
    )


def _report_revocations(issued: list[str], as_json: bool) -> None:
    if issued and not as_json:
        out.print(
            f"{len(issued)} revocation(s) issued to partners holding this customer's released "
            "records; the running node relays them through the broker "
            "(`accord revocation list` shows their acknowledgements)",
            highlight=False,
        )


def _event_json(event: ConsentEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "subject": event.subject,
        "event_type": event.event_type.value,
        "purpose": event.purpose,
        "purpose_version": event.purpose_version,
        "recipient": event.recipient,
        "channels": [c.value for c in event.channels],
        "collected_at": format_time(event.collected_at),
        "collection_method": event.collection_method.value,
        "notice": None
        if event.notice is None
        else {
            "reference": event.notice.reference,
            "version": event.notice.version,
            "sha256": event.notice.sha256,
            "language": event.notice.language,
        },
        "expires_at": None if event.expires_at is None else format_time(event.expires_at),
        "actor": event.actor,
        "supersedes": event.supersedes,
        "recorded_at": format_time(event.recorded_at),
        "leaf_index": event.leaf_index,
    }


def _grant(
    event_type: EventType,
    subject: str,
    purpose: str,
    recipient: str,
    channels: list[Channel] | None,
    method: CollectionMethod,
    notice_ref: str,
    notice_version: str,
    notice_sha256: str | None,
    notice_file: Path | None,
    language: str,
    expires_at: str | None,
    expires_in_days: int,
    collected_at: str | None,
    actor: str | None,
    event_id: str | None,
    supersedes: str | None,
    db: str,
    keys: Path,
    region: str,
    as_json: bool,
) -> None:
    if (notice_sha256 is None) == (notice_file is None):
        fail("give the notice's text as --notice-file, or its hash as --notice-sha256", code=2)
    if notice_file is not None:
        try:
            notice_sha256 = sha256(notice_file.read_bytes()).hex()
        except OSError as exc:
            fail(f"cannot read the notice file: {exc.strerror}", code=2)
    collected = _time_option(collected_at, "--collected-at") or datetime.now(UTC)
    expires = _time_option(expires_at, "--expires-at") or collected + timedelta(
        days=expires_in_days
    )
    context = node_context(db, keys, signing=True)
    try:
        external_id = resolve_subject(context, subject, region_for(region), allow_new=True)
        event = NewConsentEvent(
            event_id=event_id or str(uuid.uuid4()),
            event_type=event_type,
            purpose=purpose,
            recipient=recipient,
            collected_at=collected,
            collection_method=method,
            actor=actor or _actor(),
            channels=tuple(channels or ()),
            notice=Notice(notice_ref, notice_version, (notice_sha256 or "").lower(), language),
            expires_at=expires,
            supersedes=supersedes,
        )
        _report(_record(context, external_id, event), external_id, as_json)
    finally:
        context.close()


ChannelsOption = Annotated[
    list[Channel] | None,
    typer.Option("--channel", help="A channel the customer accepts (repeatable)."),
]
MethodOption = Annotated[
    CollectionMethod, typer.Option("--method", help="How the consent was collected.")
]
NoticeRef = Annotated[str, typer.Option("--notice-ref", help="Where the notice lives (URL, id).")]
NoticeVersion = Annotated[str, typer.Option("--notice-version", help="The notice's version.")]
NoticeSha = Annotated[
    str | None, typer.Option("--notice-sha256", help="SHA-256 (hex) of the notice's exact text.")
]
NoticeFile = Annotated[
    Path | None, typer.Option("--notice-file", help="The notice's exact text (hashed).")
]
LanguageOption = Annotated[str, typer.Option("--language", help="BCP 47 tag of the notice text.")]
ExpiresAt = Annotated[str | None, typer.Option("--expires-at", help="ISO 8601 time with a zone.")]
ExpiresIn = Annotated[
    int, typer.Option("--expires-in-days", min=1, help="Validity when --expires-at is not given.")
]
CollectedAt = Annotated[
    str | None, typer.Option("--collected-at", help="When the customer decided (default: now).")
]
ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who records this (default: cli:USER).")
]
EventIdOption = Annotated[str | None, typer.Option("--event-id", help="UUID (idempotency key).")]
SupersedesOption = Annotated[
    str | None, typer.Option("--supersedes", help="The event id this one replaces.")
]


@consent_app.command("grant")
def grant(
    subject: SubjectArgument,
    purpose: PurposeOption,
    recipient: Annotated[
        str, typer.Option("--recipient", help="A partner's node name, or * for any partner.")
    ],
    method: MethodOption,
    notice_ref: NoticeRef,
    notice_version: NoticeVersion,
    channels: ChannelsOption = None,
    notice_sha256: NoticeSha = None,
    notice_file: NoticeFile = None,
    language: LanguageOption = "en-GB",
    expires_at: ExpiresAt = None,
    expires_in_days: ExpiresIn = DEFAULT_VALIDITY_DAYS,
    collected_at: CollectedAt = None,
    actor: ActorOption = None,
    event_id: EventIdOption = None,
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    region: RegionOption = DEFAULT_REGION,
    as_json: JsonOption = False,
) -> None:
    """Record that a customer gave consent (with the notice shown and its validity)."""
    _grant(EventType.GIVEN, subject, purpose, recipient, channels, method, notice_ref,
           notice_version, notice_sha256, notice_file, language, expires_at, expires_in_days,
           collected_at, actor, event_id, None, db, keys, region, as_json)  # fmt: skip


@consent_app.command("renew")
def renew(
    subject: SubjectArgument,
    purpose: PurposeOption,
    recipient: Annotated[
        str, typer.Option("--recipient", help="A partner's node name, or * for any partner.")
    ],
    method: MethodOption,
    notice_ref: NoticeRef,
    notice_version: NoticeVersion,
    channels: ChannelsOption = None,
    notice_sha256: NoticeSha = None,
    notice_file: NoticeFile = None,
    language: LanguageOption = "en-GB",
    expires_at: ExpiresAt = None,
    expires_in_days: ExpiresIn = DEFAULT_VALIDITY_DAYS,
    collected_at: CollectedAt = None,
    actor: ActorOption = None,
    event_id: EventIdOption = None,
    supersedes: SupersedesOption = None,
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    region: RegionOption = DEFAULT_REGION,
    as_json: JsonOption = False,
) -> None:
    """Record a renewed consent (new notice or purpose version, or a refresh)."""
    _grant(EventType.RENEWED, subject, purpose, recipient, channels, method, notice_ref,
           notice_version, notice_sha256, notice_file, language, expires_at, expires_in_days,
           collected_at, actor, event_id, supersedes, db, keys, region, as_json)  # fmt: skip


def _ending(
    event_type: EventType,
    subject: str,
    purpose: str,
    recipient: str,
    method: CollectionMethod,
    collected_at: str | None,
    actor: str | None,
    event_id: str | None,
    db: str,
    keys: Path,
    region: str,
    as_json: bool,
) -> None:
    context = node_context(db, keys, signing=True)
    try:
        external_id = resolve_subject(
            context, subject, region_for(region), allow_new=event_type is EventType.REFUSED
        )
        event = NewConsentEvent(
            event_id=event_id or str(uuid.uuid4()),
            event_type=event_type,
            purpose=purpose,
            recipient=recipient,
            collected_at=_time_option(collected_at, "--collected-at") or datetime.now(UTC),
            collection_method=method,
            actor=actor or _actor(),
        )
        recorded = _record(context, external_id, event)
        issued = []
        if event_type is EventType.WITHDRAWN:
            # Partners that received this customer's record must delete it now.
            issued = _outbox(context).revoke_unconsented(external_id, reason="consent_withdrawn")
        if as_json:
            print_json({"external_id": external_id, **_event_json(recorded),
                        "revocations_issued": issued})  # fmt: skip
        else:
            _report(recorded, external_id, as_json)
            _report_revocations(issued, as_json)
    finally:
        context.close()


RecipientOrAny = Annotated[
    str,
    typer.Option("--recipient", help="A partner's node name, or * (default) for every partner."),
]


@consent_app.command("withdraw")
def withdraw(
    subject: SubjectArgument,
    purpose: PurposeOption,
    recipient: RecipientOrAny = ANY_RECIPIENT,
    method: Annotated[
        CollectionMethod, typer.Option("--method", help="How the withdrawal arrived.")
    ] = CollectionMethod.API,
    collected_at: CollectedAt = None,
    actor: ActorOption = None,
    event_id: EventIdOption = None,
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    region: RegionOption = DEFAULT_REGION,
    as_json: JsonOption = False,
) -> None:
    """Record a withdrawal: matching stops at once (GDPR 7(3))."""
    _ending(EventType.WITHDRAWN, subject, purpose, recipient, method, collected_at, actor,
            event_id, db, keys, region, as_json)  # fmt: skip


@consent_app.command("refuse")
def refuse(
    subject: SubjectArgument,
    purpose: PurposeOption,
    recipient: RecipientOrAny = ANY_RECIPIENT,
    method: Annotated[
        CollectionMethod, typer.Option("--method", help="How the refusal was collected.")
    ] = CollectionMethod.API,
    collected_at: CollectedAt = None,
    actor: ActorOption = None,
    event_id: EventIdOption = None,
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    region: RegionOption = DEFAULT_REGION,
    as_json: JsonOption = False,
) -> None:
    """Record a refusal (refusals are history too)."""
    _ending(EventType.REFUSED, subject, purpose, recipient, method, collected_at, actor,
            event_id, db, keys, region, as_json)  # fmt: skip


@consent_app.command("show")
def show(
    subject: SubjectArgument,
    at: Annotated[
        str | None, typer.Option("--at", help="Decide the states at this time (default: now).")
    ] = None,
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    region: RegionOption = DEFAULT_REGION,
    as_json: JsonOption = False,
) -> None:
    """Data-subject access report: states, every consent event with its proof, flows."""
    moment = _time_option(at, "--at") or datetime.now(UTC)
    context = node_context(db, keys)
    try:
        external_id = resolve_subject(context, subject, region_for(region), allow_new=False)
        try:
            pseudonym = context.ledger.pseudonym_for(external_id)
        except SubjectNotFound:
            fail("no consent has been recorded for this subject")
        events = context.ledger.events_of(pseudonym)
        states = context.ledger.states(pseudonym, now=moment)
        bundle = context.ledger.subject_proof(pseudonym)
        public_key = context.keys.identity.signing_public_key
        try:
            head, checked = check_subject_proof(bundle, public_key=public_key)
        except ProofBundleInvalid as exc:
            fail(f"the audit log does not prove this subject's events: {exc}")
        proven = {entry.leaf_index for entry in checked}
        customer = customer_exists(context.engine, external_id)
    finally:
        context.close()
    state_rows = [
        {
            "purpose": s.purpose,
            "recipient": s.recipient,
            "status": s.status.value,
            "channels": [c.value for c in s.channels],
            "event_id": s.event_id,
            "expires_at": None if s.expires_at is None else format_time(s.expires_at),
        }
        for s in states
    ]
    event_rows = [
        {**_event_json(e), "proof": "verified" if e.leaf_index in proven else "missing"}
        for e in events
    ]
    decided_at = format_time(moment)
    report = {
        "subject": {"external_id": external_id, "pseudonym": pseudonym, "customer": customer},
        "decided_at": decided_at,
        "states": state_rows,
        "events": event_rows,
        "tree_head": head.to_json(),
        "flows": [],
    }
    if as_json:
        print_json(report)
        return
    out.print(f"[bold]subject[/] {external_id} (pseudonym {pseudonym})", highlight=False)
    table = Table(title=f"consent at {decided_at}")
    for column in ("purpose", "recipient", "status", "channels", "expires"):
        table.add_column(column)
    for state in states:
        table.add_row(
            state.purpose,
            state.recipient,
            state.status.value,
            ",".join(c.value for c in state.channels),
            "" if state.expires_at is None else format_time(state.expires_at),
        )
    out.print(table)
    history = Table(title="events (oldest first)")
    for column in ("entry", "event", "purpose", "recipient", "collected", "method", "proof"):
        history.add_column(column)
    for event in events:
        history.add_row(
            str(event.leaf_index),
            event.event_type.value,
            event.purpose,
            event.recipient,
            format_time(event.collected_at),
            event.collection_method.value,
            "verified" if event.leaf_index in proven else "missing",
        )
    out.print(history)
    out.print(
        f"every event is proven against the signed head of size {head.tree_size} "
        f"(key {head.key_id[:16]}…); flows this subject took part in: none recorded",
        highlight=False,
    )


@consent_app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="CSV or JSON Lines file of consent events.")],
    rejects: Annotated[
        Path | None, typer.Option(help="Where rejected rows go.", show_default="FILE.rejects.csv")
    ] = None,
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    region: RegionOption = DEFAULT_REGION,
    as_json: JsonOption = False,
) -> None:
    """Record consent events from a file; bad rows go to a reject file with reasons."""
    if not file.is_file():
        fail(f"no such file: {file}", code=2)
    default_region = region_for(region)
    context = node_context(db, keys, signing=True)
    try:

        def resolve(text: str) -> str:
            try:
                return find_customer(context.engine, text, default_region=default_region)
            except CustomerNotFound as exc:
                raise NodeError(str(exc)) from None

        summary = import_consents(
            file,
            ledger=context.ledger,
            resolve_subject=resolve,
            rejects_path=rejects or file.with_name(file.name + ".rejects.csv"),
        )
        # Withdrawals in the file revoke what partners received, as single ones do.
        issued = _outbox(context).revoke_unconsented_all() if summary.recorded else []
    finally:
        context.close()
    if as_json:
        print_json({**summary.as_dict(), "revocations_issued": len(issued)})
        return
    _report_revocations(issued, as_json)
    table = Table(title="consent import", show_header=False)
    for key in ("rows", "recorded", "unchanged", "rejected"):
        table.add_row(key, str(getattr(summary, key)))
    out.print(table)
    if summary.rejected:
        out.print(f"rejected rows and reasons: {summary.rejects_path}", highlight=False)


@consent_app.command("erase")
def erase(
    subject: SubjectArgument,
    reason: Annotated[str, typer.Option("--reason", help="For the audit log; no customer data.")],
    actor: ActorOption = None,
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    region: RegionOption = DEFAULT_REGION,
    as_json: JsonOption = False,
) -> None:
    """Erase a subject (GDPR 17): customer record, consent records and salts; the log stays."""
    context = node_context(db, keys, signing=True)
    try:
        external_id = resolve_subject(context, subject, region_for(region), allow_new=False)
        # Before the customer row goes: partners holding released records must delete them.
        issued = _outbox(context).revoke_unconsented(external_id, reason="subject_erased")
        erased_entries = 0
        head_size = None
        try:
            result = context.ledger.erase(external_id, actor=actor or _actor(), reason=reason)
            erased_entries, head_size = result.erased_entries, result.tree_head.tree_size
        except SubjectNotFound:
            pass
        customer_deleted = delete_customer(context.engine, external_id)
    finally:
        context.close()
    summary = {
        "customer_deleted": customer_deleted,
        "consent_records_erased": erased_entries,
        "tree_size": head_size,
        "revocations_issued": len(issued),
    }
    if as_json:
        print_json(summary)
        return
    out.print(
        f"erased: customer record {'deleted' if customer_deleted else 'not present'}, "
        f"{erased_entries} consent records and salts deleted; the audit log keeps only "
        "commitments, so every proof stays valid",
        highlight=False,
    )
    _report_revocations(issued, as_json)


@consent_app.command("purposes")
def purposes(as_json: JsonOption = False) -> None:
    """The purpose taxonomy."""
    if as_json:
        print_json(
            {
                "taxonomy": TAXONOMY_VERSION,
                "purposes": [
                    {"id": p.id, "version": p.version, "title": p.title,
                     "description": p.description, "data_categories": list(p.data_categories)}
                    for p in PURPOSES.values()
                ],
            }
        )  # fmt: skip
        return
    table = Table(title=f"purposes ({TAXONOMY_VERSION})")
    for column in ("id", "version", "description"):
        table.add_column(column)
    for p in PURPOSES.values():
        table.add_row(p.id, str(p.version), p.description)
    out.print(table)
