"""``accord revocation list``: the owner's revocations and their acknowledgements.

For compliance: every revocation this node issued (after a withdrawal, an erasure or an
agreement's end), whether the recipient acknowledged it, how many records it deleted
and how often the running node tried to relay it. Read from the node's database; the
running node retries pending ones on its own.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from accord._options import (
    DEFAULT_DB,
    DEFAULT_KEYS,
    DbOption,
    JsonOption,
    KeysOption,
    node_context,
    out,
    print_json,
)
from node import RevocationOutbox

revocation_app = typer.Typer(
    help="Revocations this node issued to partners, and their acknowledgements.",
    no_args_is_help=True,
)


@revocation_app.command("list")
def list_revocations(
    pending: Annotated[bool, typer.Option("--pending", help="Only unacknowledged ones.")] = False,
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    as_json: JsonOption = False,
) -> None:
    """Revocations and their state; exits 1 when any is still unacknowledged."""
    context = node_context(db, keys)
    try:
        outbox = RevocationOutbox(
            context.engine,
            node_name=context.keys.identity.name,
            ledger=context.ledger,
            signing_key=None,
        )
        states = outbox.states(pending_only=pending)
    finally:
        context.close()
    unacknowledged = sum(1 for s in states if s.state == "pending")
    if as_json:
        print_json({"revocations": [s.as_dict() for s in states], "pending": unacknowledged})
    else:
        table = Table(title="revocations")
        for column in ("id", "agreement", "recipient", "reason", "releases", "state",
                       "attempts", "deleted"):  # fmt: skip
            table.add_column(column)
        for s in states:
            table.add_row(
                s.revocation_id, s.agreement_id, s.recipient, s.reason,
                "all" if s.all_releases else str(s.releases), s.state, str(s.attempts),
                "" if s.deleted_records is None else str(s.deleted_records),
            )  # fmt: skip
        out.print(table)
        out.print(f"{unacknowledged} unacknowledged", highlight=False)
    if unacknowledged:
        raise typer.Exit(1)
