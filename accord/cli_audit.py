"""``accord audit …``: verify the node's audit log, export heads and subject proofs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from sqlalchemy import Engine

from accord._options import (
    DEFAULT_DB,
    DEFAULT_KEYS,
    DEFAULT_REGION,
    DbOption,
    JsonOption,
    KeysOption,
    RegionOption,
    engine_for,
    fail,
    keystore_for,
    node_context,
    out,
    print_json,
    region_for,
)
from accord.cli_consent import SubjectArgument, resolve_subject
from broker import open_broker_store
from broker.errors import BrokerError
from consent import SignedTreeHead, check_subject_proof, verify_log
from consent.errors import ConsentError, LedgerTampered, ProofBundleInvalid, SubjectNotFound
from consent.serde import witnessed_head_from_proto
from kernel.crypto import key_id
from kernel.db import database_url
from kernel.errors import KernelError
from kernel.keys import PartyIdentity
from kernel.rpc import all_pages, connect
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc

audit_app = typer.Typer(help="Verify the audit log; export heads and proofs.", no_args_is_help=True)

IdentityOption = Annotated[
    Path | None,
    typer.Option(
        "--identity",
        help="The node's published identity.json (its public key), instead of --keys.",
    ),
]


def _party(keys: Path, identity: Path | None) -> PartyIdentity:
    if identity is not None:
        try:
            data = json.loads(identity.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            fail(f"cannot read the identity file {identity}", code=2)
        return PartyIdentity.from_json(data)
    return keystore_for(keys).identity


def _public_key(keys: Path, identity: Path | None) -> bytes:
    return _party(keys, identity).signing_public_key


def _log_engine(db: str, party: PartyIdentity) -> Engine:
    """The database holding the party's log: a broker's is opened as a broker's, so
    verifying it never adds a node's tables to it."""
    if party.role != "broker":
        return engine_for(db)
    try:
        return open_broker_store(database_url(db))
    except (KernelError, BrokerError) as exc:
        fail(str(exc), code=2)


class WitnessRejected(Exception):
    """The broker's witnessed heads cannot be trusted (bad cosignature, wrong key)."""


def _witnessed_heads(
    broker: str, party: PartyIdentity, pinned_witness: PartyIdentity | None
) -> list[SignedTreeHead]:
    """Every head of ``party``'s log the broker cosigned, each cosignature checked against
    the broker's key (``pinned_witness`` if given, else the key the broker states)."""
    channel = connect(broker, identity=party.name, insecure_loopback=True)
    stub = broker_pb2_grpc.BrokerServiceStub(channel)
    try:
        stated = stub.GetBrokerInfo(broker_pb2.GetBrokerInfoRequest(), timeout=30).keys
        witness_key = bytes(stated.signing_public_key)
        if pinned_witness is not None and witness_key != pinned_witness.signing_public_key:
            raise WitnessRejected(
                f"the broker at {broker} signs with key {key_id(witness_key)[:16]}…, not the "
                f"pinned witness key {key_id(pinned_witness.signing_public_key)[:16]}…"
            )
        heads: list[SignedTreeHead] = []
        for page in all_pages(
            lambda page: stub.ListWitnessedHeads(
                broker_pb2.ListWitnessedHeadsRequest(origin=party.origin, page=page), timeout=60
            )
        ):
            for message in page.heads:
                head, cosignature = witnessed_head_from_proto(message)
                if head.origin != party.origin or not cosignature.covers(head):
                    raise WitnessRejected(
                        f"the broker returned a head of size {head.tree_size} that its "
                        "cosignature does not cover"
                    )
                try:
                    cosignature.verify(witness_key)
                except ConsentError as exc:
                    raise WitnessRejected(
                        f"the broker's cosignature on the head of size {head.tree_size} does "
                        f"not verify: {exc}"
                    ) from None
                heads.append(head)
        return heads
    except grpc.RpcError as exc:
        fail(f"the broker at {broker} did not answer: {exc.details()}", code=2)
    finally:
        channel.close()


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"no such file: {path}", code=2)
    except (OSError, ValueError):
        fail(f"{path} is not a {what} (JSON)", code=2)


@audit_app.command("verify")
def verify(
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    identity: IdentityOption = None,
    trusted_head: Annotated[
        Path | None,
        typer.Option(
            "--trusted-head",
            help="A signed head published earlier (accord audit head): the log must extend it.",
        ),
    ] = None,
    witnessed: Annotated[
        bool,
        typer.Option(
            "--witnessed",
            help="Also check the log against every head of it the broker cosigned (--broker).",
        ),
    ] = False,
    broker: Annotated[
        str | None, typer.Option("--broker", help="The broker (host:port) that witnessed heads.")
    ] = None,
    witness_identity: Annotated[
        Path | None,
        typer.Option(
            "--witness-identity",
            help="The broker's published identity.json: pin its key instead of asking it.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute every head, check every signature and record; exit 1 naming the first fault.

    Works on a node's log and on a broker's (``--db`` the broker's database, ``--keys`` its
    key directory or ``--identity`` its identity.json). With ``--witnessed --broker ADDR``
    the log must also extend every head the broker cosigned: a log rewritten or truncated
    since the broker saw it fails, even when its own heads were re-signed."""
    party = _party(keys, identity)
    public_key = party.signing_public_key
    trusted = None
    if trusted_head is not None:
        try:
            trusted = SignedTreeHead.from_json(_read_json(trusted_head, "signed tree head"))
        except ProofBundleInvalid as exc:
            fail(f"{trusted_head}: {exc}", code=2)
    seen: list[SignedTreeHead] = []
    if witnessed:
        if broker is None:
            fail("--witnessed needs --broker HOST:PORT, the broker that witnessed the heads", 2)
        pinned = None if witness_identity is None else _party(Path(), witness_identity)
        try:
            seen = _witnessed_heads(broker, party, pinned)
        except WitnessRejected as exc:
            if as_json:
                print_json({"verified": False, "problem": str(exc)})
            else:
                out.print(f"[bold red]witnessed heads do NOT check:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
    engine = _log_engine(db, party)
    try:
        report = verify_log(
            engine, public_key=public_key, trusted_head=trusted, witnessed_heads=seen
        )
    except LedgerTampered as exc:
        if as_json:
            print_json({"verified": False, "problem": str(exc)})
        else:
            out.print(f"[bold red]audit log does NOT verify:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    summary = {
        "verified": True,
        "entries": report.entries,
        "heads": report.heads,
        "records_checked": report.records_checked,
        "consent_events_checked": report.consent_events_checked,
        "erased_entries": report.erased_entries,
        "trusted_head_size": report.trusted_head_size,
        "witnessed_heads": len(seen),
        "latest_witnessed_size": max((h.tree_size for h in seen), default=None),
        "tree_head": None if report.latest_head is None else report.latest_head.to_json(),
    }
    if as_json:
        print_json(summary)
        return
    out.print(
        f"[bold green]audit log verifies[/]: {report.entries} entries, {report.heads} signed "
        f"heads, {report.records_checked} records checked against their commitments, "
        f"{report.erased_entries} erased"
        + (
            f"; consistent with the trusted head of size {report.trusted_head_size}"
            if report.trusted_head_size is not None
            else ""
        )
        + (f"; extends all {len(seen)} heads the broker witnessed" if witnessed else ""),
        highlight=False,
    )


@audit_app.command("head")
def head(
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the head here (default: print it).")
    ] = None,
) -> None:
    """The latest signed tree head, as JSON: publish it, use it later as --trusted-head."""
    context = node_context(db, keys)
    try:
        latest = context.ledger.latest_head()
    finally:
        context.close()
    if latest is None:
        fail("the audit log has no signed head yet (run `accord node init`)")
    document = latest.to_json()
    if out_file is None:
        print_json(document)
    else:
        out_file.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        out.print(f"signed head of size {latest.tree_size} written to {out_file}", highlight=False)


@audit_app.command("proof")
def proof(
    subject: SubjectArgument,
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the proof file.")],
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    region: RegionOption = DEFAULT_REGION,
) -> None:
    """Export a subject's entries with inclusion proofs and the signed head (offline-checkable)."""
    context = node_context(db, keys)
    try:
        external_id = resolve_subject(context, subject, region_for(region), allow_new=False)
        try:
            bundle = context.ledger.subject_proof(context.ledger.pseudonym_for(external_id))
        except SubjectNotFound as exc:
            fail(str(exc))
        identity = context.keys.identity
    finally:
        context.close()
    bundle["signing_public_key"] = base64.b64encode(identity.signing_public_key).decode()
    out_file.write_text(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    out.print(
        f"{len(bundle['entries'])} entries with inclusion proofs against the signed head of "
        f"size {bundle['tree_head']['tree_size']} written to {out_file}",
        highlight=False,
    )


@audit_app.command("check-proof")
def check_proof(
    file: Annotated[Path, typer.Argument(help="A file written by `accord audit proof`.")],
    identity: IdentityOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a proof file with no database and no network."""
    bundle = _read_json(file, "proof file")
    pinned = identity is not None
    if pinned:
        public_key = _public_key(Path(), identity)
    else:
        try:
            public_key = base64.b64decode(bundle.get("signing_public_key") or "", validate=True)
        except (ValueError, AttributeError):
            fail("the proof file carries no public key: pass --identity", code=2)
    try:
        head_checked, entries = check_subject_proof(bundle, public_key=public_key)
    except (ProofBundleInvalid, ConsentError) as exc:
        if as_json:
            print_json({"verified": False, "problem": str(exc)})
        else:
            out.print(f"[bold red]proof does NOT check:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    result = {
        "verified": True,
        "origin": head_checked.origin,
        "tree_size": head_checked.tree_size,
        "key_id": head_checked.key_id,
        "key_pinned": pinned,
        "entries": [
            {"leaf_index": e.leaf_index, "kind": e.kind, "record": e.record} for e in entries
        ],  # fmt: skip
    }
    if as_json:
        print_json(result)
        return
    out.print(
        f"[bold green]proof checks[/]: {len(entries)} entries are in {head_checked.origin} as "
        f"signed at size {head_checked.tree_size} by key {head_checked.key_id[:16]}…",
        highlight=False,
    )
    if not pinned:
        out.print(
            "[yellow]checked against the key inside the file; compare its key id with the "
            "node's published identity, or pass --identity to pin it[/]",
            highlight=False,
        )
