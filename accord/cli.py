"""The ``accord`` command line. Settings are built here, once, and passed down.

Each command group lives in its own module (``cli_node``, ``cli_consent``, ``cli_audit``,
``cli_bench``); this one assembles them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from accord._options import err, out
from accord.cli_audit import audit_app
from accord.cli_bench import bench_app
from accord.cli_consent import consent_app
from accord.cli_exchange import agreement_app, audience_app
from accord.cli_node import node_app
from accord.cli_revocation import revocation_app
from accord.cli_segment import segment_app
from accord.cli_serve import broker_app, node_serve

app = typer.Typer(
    help="Accord: a privacy-preserving exchange for collaborative CRM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
node_app.command("serve")(node_serve)
app.add_typer(node_app, name="node")
app.add_typer(broker_app, name="broker")
app.add_typer(agreement_app, name="agreement")
app.add_typer(audience_app, name="audience")
app.add_typer(segment_app, name="segment")
app.add_typer(consent_app, name="consent")
app.add_typer(revocation_app, name="revocation")
app.add_typer(audit_app, name="audit")
app.add_typer(bench_app, name="bench")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the demo writes its files.")] = Path(
        "demo-out"
    ),
    customers: Annotated[int, typer.Option(min=10, help="Customers per company.")] = 2000,
) -> None:
    """Run the exchange end to end on embedded defaults (grows with every issue)."""
    from accord.demo import run_demo

    code = run_demo(out_dir, customers=customers, console=out)
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
