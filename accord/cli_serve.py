"""``accord broker serve`` and ``accord node serve``: the long-running processes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from accord._options import DEFAULT_DB, DEFAULT_KEYS, DbOption, KeysOption, fail, keystore_for
from broker import create_broker_server, open_broker_keys, open_broker_store
from broker.errors import BrokerError
from kernel.db import database_url
from kernel.errors import KernelError
from kernel.rpc import check_bind, serve_until_signalled
from node import create_node_server, open_store, register_with_broker
from node.errors import NodeError

broker_app = typer.Typer(help="Run the broker.", no_args_is_help=True)

InsecureLoopback = Annotated[
    bool,
    typer.Option(
        "--insecure-loopback",
        help="Serve plaintext gRPC on a loopback address (until mutual TLS); required.",
    ),
]
ListenOption = Annotated[
    str, typer.Option("--listen", help="HOST:PORT to listen on (port 0: any).")
]


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


@broker_app.command("serve")
def broker_serve(
    db: Annotated[
        str, typer.Option("--db", envvar="ACCORD_BROKER_DB_URL", help="The broker's database.")
    ] = "accord-broker.db",
    listen: ListenOption = "127.0.0.1:7700",
    name: Annotated[str, typer.Option("--name", help="The broker's name in the exchange.")] = (
        "broker"
    ),
    keys: Annotated[
        Path,
        typer.Option(
            "--keys",
            envvar="ACCORD_BROKER_KEYS_DIR",
            help="The broker's key directory (created with fresh keys if it holds none).",
        ),
    ] = Path("accord-broker-keys"),
    insecure_loopback: InsecureLoopback = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Log flows at INFO.")] = False,
) -> None:
    """Run the broker: registry, catalog, agreements, flows, revocations, witness."""
    _logging(verbose)
    try:
        check_bind(listen, insecure_loopback=insecure_loopback)  # before keys are written
        keystore, created = open_broker_keys(keys, name=name)
        if created:
            typer.echo(
                f"created keys for broker {name} in {keys} "
                f"(signing key {keystore.identity.signing_key_id[:16]}…)"
            )
        engine = open_broker_store(database_url(db))
        try:
            broker = create_broker_server(
                engine, keystore, bind=listen, insecure_loopback=insecure_loopback
            )
        except BaseException:
            engine.dispose()
            raise
    except (KernelError, BrokerError) as exc:
        fail(str(exc), code=2)
    broker.start()
    host = listen.rpartition(":")[0]

    def stop() -> None:
        broker.stop()
        engine.dispose()

    serve_until_signalled(stop, f"accord broker {name} listening on {host}:{broker.port}")


def node_serve(
    db: DbOption = DEFAULT_DB,
    keys: KeysOption = DEFAULT_KEYS,
    listen: ListenOption = "127.0.0.1:7701",
    broker: Annotated[str, typer.Option("--broker", help="The broker's HOST:PORT.")] = (
        "127.0.0.1:7700"
    ),
    broker_name: Annotated[
        str, typer.Option("--broker-name", help="The broker's name (it calls this node as).")
    ] = "broker",
    display_name: Annotated[
        str | None, typer.Option("--display-name", help="The company's name, for people.")
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise", help="HOST:PORT the broker should call (default: where it listens)."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Blinding processes (default: one per core).")
    ] = None,
    insecure_loopback: InsecureLoopback = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Log at INFO.")] = False,
) -> None:
    """Run the node: its service for the broker and its operators, registered with the broker."""
    _logging(verbose)
    keystore = keystore_for(keys)
    try:
        engine = open_store(database_url(db))
        server = create_node_server(
            engine,
            keystore,
            bind=listen,
            broker_address=broker,
            broker_name=broker_name,
            insecure_loopback=insecure_loopback,
            workers=workers,
        )
    except (KernelError, NodeError) as exc:
        fail(str(exc), code=2)
    server.server.start()
    host = listen.rpartition(":")[0]
    endpoint = f"{host}:{server.port}"
    try:
        register_with_broker(
            server,
            keystore,
            endpoint=advertise or endpoint,
            display_name=display_name or keystore.identity.name,
        )
    except NodeError as exc:
        server.stop(0)
        fail(str(exc))

    def stop() -> None:
        server.stop()
        engine.dispose()

    serve_until_signalled(stop, f"accord node {keystore.identity.name} listening on {endpoint}")
