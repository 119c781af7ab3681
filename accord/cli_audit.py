"""``accord audit …``: verify the node's audit log, export heads and subject proofs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any

import typer

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
from consent import SignedTreeHead, check_subject_proof, verify_log
from consent.errors import ConsentError, LedgerTampered, ProofBundleInvalid, SubjectNotFound
from kernel.keys import PartyIdentity

audit_app = typer.Typer(help="Verify the audit log; export heads and proofs.", no_args_is_help=True)

IdentityOption = Annotated[
    Path | None,
    typer.Option(
        "--identity",
        help="The node's published identity.json (its public key), instead of --keys.",
    ),
]


def _public_key(keys: Path, identity: Path | None) -> bytes:
    if identity is not None:
        try:
            data = json.loads(identity.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            fail(f"cannot read the identity file {identity}", code=2)
        return PartyIdentity.from_json(data).signing_public_key
    return keystore_for(keys).identity.signing_public_key


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
    as_json: JsonOption = False,
) -> None:
    """Recompute every head, check every signature and record; exit 1 naming the first fault."""
    public_key = _public_key(keys, identity)
    trusted = None
    if trusted_head is not None:
        try:
            trusted = SignedTreeHead.from_json(_read_json(trusted_head, "signed tree head"))
        except ProofBundleInvalid as exc:
            fail(f"{trusted_head}: {exc}", code=2)
    engine = engine_for(db)
    try:
        report = verify_log(engine, public_key=public_key, trusted_head=trusted)
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
        ),
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
