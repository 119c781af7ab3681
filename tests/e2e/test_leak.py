"""The leak test: canary identifiers go through a match and a release; nothing about them
reaches the broker.

Canary e-mails and phones are customers of both nodes, with consent, so they are in the
overlap and in the release (sealed to the recipient). Every byte the broker received
(through a recording proxy on each path into it), its database files and its log are
scanned for every form a leak could take (leakscan.canary_forms). The positive control
then leaks one canary on purpose, through a path the broker really has, and the same scan
must catch it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from accord.client import request_audience
from accord.exchange import LocalExchange
from consent.agreements import OutputMode, PartyKeys
from consent.serde import keys_to_proto
from kernel.keys import KeyStore
from kernel.rpc import connect
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc
from kernel.wire.accord.common.v1 import flow_pb2

from .conftest import OWNER, RECIPIENT, Running, accord, build_world, free_port
from .leakscan import RecordingProxy, all_canary_forms, scan, sqlite_blobs


def canaries() -> dict[str, list[str]]:
    tag = secrets.token_hex(4)
    return {
        "emails": [f"Canary.{tag}.{i}@Leak-Test.example" for i in range(3)],
        "phones": [f"0739{i} {secrets.randbelow(10**6):06d}" for i in range(3)],
    }


def test_no_form_of_any_canary_reaches_the_broker(tmp_path: Path) -> None:
    planted = canaries()
    world = build_world(tmp_path, customers=160, canaries=planted)
    # A canary customer moves to a new e-mail (itself a canary) between two flows, so a
    # repeat goes through the nodes' patched consented sets and epoch caches too.
    moved = planted["emails"][0].replace(".0@", ".moved@")
    forms = all_canary_forms(
        [("email", e) for e in [*planted["emails"], moved]]
        + [("phone", p) for p in planted["phones"]]
    )
    broker_db = tmp_path / "broker.db"
    broker_port = free_port()
    node_ports = {name: free_port() for name in world.stores}
    logs = tmp_path / "logs"
    with (
        RecordingProxy("127.0.0.1", broker_port, name="broker") as to_broker,
        RecordingProxy("127.0.0.1", node_ports[OWNER], name=OWNER) as to_owner,
        RecordingProxy("127.0.0.1", node_ports[RECIPIENT], name=RECIPIENT) as to_recipient,
    ):
        proxies = {OWNER: to_owner, RECIPIENT: to_recipient}
        with LocalExchange(logs) as exchange:
            broker = exchange.start_broker(db=str(broker_db), listen=f"127.0.0.1:{broker_port}")
            nodes = {
                name: exchange.start_node(
                    name=name,
                    db=str(store.db),
                    keys=store.keys,
                    broker=broker,
                    workers=2,
                    listen=f"127.0.0.1:{node_ports[name]}",
                    advertise=proxies[name].address,
                    broker_address=to_broker.address,
                )  # fmt: skip
                for name, store in world.stores.items()
            }
            running = Running(world, exchange, broker, nodes)
            agreement_id = running.agreement()
            response = request_audience(running.stub(RECIPIENT), agreement_id)
            assert response.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED
            # The canaries matched, like every other shared customer.
            assert response.summary.match.matched_customers == world.expected_overlap() + 3
            for name, store in world.stores.items():
                change = tmp_path / f"{name}-moved.csv"
                change.write_text(
                    f"external_id,email,phone\nCANARY-0,{moved},{planted['phones'][0]}\n"
                )
                accord("node", "import", str(change), "--db", str(store.db), "--json")
            repeat = request_audience(running.stub(RECIPIENT), agreement_id)
            assert repeat.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, repeat.flow
            assert repeat.summary.match.matched_customers == world.expected_overlap() + 3
            # A release carries the canaries' own e-mails and phones, sealed to the
            # recipient: the broker relays them and must see only ciphertext.
            release_id = running.agreement(
                mode=OutputMode.RELEASE, released_fields=("first_name", "email", "phone")
            )
            released = request_audience(running.stub(RECIPIENT), release_id)
            assert released.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, released.flow
            assert released.summary.release.records >= 3

            def received() -> list[tuple[str, bytes]]:
                return [
                    *to_broker.blobs("client_to_server"),
                    *to_owner.blobs("server_to_client"),
                    *to_recipient.blobs("server_to_client"),
                ]

            traffic = received()
            assert sum(len(b) for _, b in traffic) > 100_000  # the sets really passed here
            findings = scan(forms, files=[broker_db, broker.log],
                            blobs=[*traffic, *sqlite_blobs(broker_db)])  # fmt: skip
            assert not findings, "\n".join(map(str, findings[:20]))

            # Positive control: the owner's operator puts a customer's e-mail where the
            # broker stores and logs it (its display name). The same scan must find it.
            leaked = planted["emails"][0]
            identity = KeyStore.open(world.stores[OWNER].keys).identity
            channel = connect(to_broker.address, identity=OWNER, insecure_loopback=True)
            broker_pb2_grpc.BrokerServiceStub(channel).RegisterNode(
                broker_pb2.RegisterNodeRequest(
                    keys=keys_to_proto(PartyKeys(identity.name, identity.signing_public_key,
                                                 identity.hpke_public_key)),
                    endpoint=to_owner.address,
                    display_name=f"Solent Boats (contact {leaked})",
                ),
                timeout=30,
            )  # fmt: skip
            channel.close()
            caught = scan(forms, files=[broker_db], blobs=[*received(), *sqlite_blobs(broker_db)])
    assert caught, "the positive control leaked a canary and the scan did not see it"
    assert all(f.form.startswith(f"email {leaked!r}") for f in caught), caught[:5]
    places = {f.where for f in caught}
    # Caught in what the broker received, and in what it stored.
    assert any(p.startswith("broker conn") and "client_to_server" in p for p in places), places
    assert any("broker_nodes" in p for p in places), places
