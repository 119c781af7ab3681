"""Blinded matching end to end: a broker and two nodes as separate processes.

Each claim of DESIGN.md "Who learns what" that matching touches is a test here. Where a
test plays the broker itself (calling a node's broker RPCs directly), it is to look at
exactly what a broker would receive.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, inspect, text

from accord.client import request_audience
from consent.agreements import SignedAgreement
from kernel.crypto import BlindingKey, blinding_secret, hash_to_curve
from kernel.db import database_url
from kernel.keys import KeyStore
from kernel.rpc import connect
from kernel.wire.accord.common.v1 import flow_pb2
from kernel.wire.accord.node.v1 import node_pb2, node_pb2_grpc
from node import delete_customer, open_store

from .conftest import OWNER, PURPOSE, RECIPIENT, Running, accord


def as_broker(running: Running, name: str) -> Any:
    channel = connect(running.nodes[name].address, identity="broker", insecure_loopback=True)
    return node_pb2_grpc.NodeServiceStub(channel)


def context(agreement_id: str, role: int) -> flow_pb2.FlowContext:
    started = flow_pb2.FlowContext(
        flow_id=str(uuid.uuid4()), agreement_id=agreement_id, role=role,  # type: ignore[arg-type]
        owner_segment_id="all",
    )  # fmt: skip
    started.started_at.FromDatetime(datetime.now(UTC))
    return started


Set = tuple[list[bytes], list[bytes]]


def blind_set(running: Running, name: str, agreement_id: str, role: int,
              ctx: flow_pb2.FlowContext | None = None) -> Set:  # fmt: skip
    tokens: list[bytes] = []
    handles: list[bytes] = []
    for response in as_broker(running, name).BlindSet(
        node_pb2.BlindSetRequest(flow=ctx or context(agreement_id, role)), timeout=120
    ):
        tokens.extend(response.batch.tokens)
        handles.extend(response.batch.handles)
    return tokens, handles


def reblind(running: Running, name: str, agreement_id: str, role: int, tokens: list[bytes],
            handles: list[bytes]) -> Set:  # fmt: skip
    ctx = context(agreement_id, role)

    def requests() -> Any:
        for index, start in enumerate(range(0, max(len(tokens), 1), 100)):
            yield node_pb2.ReblindSetRequest(
                flow=ctx if index == 0 else None,
                batch=flow_pb2.TokenBatch(
                    flow_id=ctx.flow_id, batch_index=index, tokens=tokens[start : start + 100],
                    handles=handles[start : start + 100], set_size=len(tokens),
                    final=start + 100 >= len(tokens),
                ),
            )  # fmt: skip

    out_tokens: list[bytes] = []
    out_handles: list[bytes] = []
    for response in as_broker(running, name).ReblindSet(requests(), timeout=120):
        out_tokens.extend(response.batch.tokens)
        out_handles.extend(response.batch.handles)
    return out_tokens, out_handles


def node_key(running: Running, name: str, agreement_id: str) -> BlindingKey:
    """What only the node holds: its blinding key for this agreement's current epoch."""
    store = running.world.stores[name]
    master = KeyStore.open(store.keys).master_secret()
    engine = create_engine(f"sqlite:///{store.db}")
    try:
        with engine.connect() as connection:
            canonical = connection.execute(
                text("SELECT canonical FROM node_agreements WHERE agreement_id = :a"),
                {"a": agreement_id},
            ).scalar_one()
    finally:
        engine.dispose()
    epoch = SignedAgreement(bytes(canonical), b"").agreement.epoch_at(datetime.now(UTC))
    return BlindingKey(blinding_secret(master, scope=agreement_id, segment="all", epoch=epoch))


# --- the match ---------------------------------------------------------------------------


def test_match_finds_exactly_the_consented_overlap(running: Running) -> None:
    agreement_id = running.agreement()
    response = request_audience(running.stub(RECIPIENT), agreement_id)
    assert response.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, response.flow.failure_detail
    assert response.summary.match.matched_customers == running.world.expected_overlap() > 0
    # Padded sets: the broker saw bucket sizes, not the consented sizes.
    assert response.flow.owner_set_size % 32 == 0
    again = request_audience(running.stub(RECIPIENT), agreement_id)
    assert again.summary.match.matched_customers == running.world.expected_overlap()


def test_consent_is_decided_at_flow_time(running: Running) -> None:
    agreement_id = running.agreement()
    owner = running.world.stores[OWNER]
    recipient = running.world.stores[RECIPIENT]
    person = min(owner.consented & recipient.consented & owner.truth.valid_people
                 & recipient.truth.valid_people)  # fmt: skip
    before = request_audience(running.stub(RECIPIENT), agreement_id)
    accord("consent", "withdraw", owner.truth.external_ids[person], "--purpose", PURPOSE,
           "--db", str(owner.db), "--keys", str(owner.keys))  # fmt: skip
    after = request_audience(running.stub(RECIPIENT), agreement_id)
    assert after.summary.match.matched_customers == before.summary.match.matched_customers - 1
    running.world.stores[OWNER].consented.discard(person)


def test_a_repeated_flow_sees_a_store_change(running: Running) -> None:
    """The node reuses its consented set between flows only while no customer, identifier
    or consent changed: a re-import that replaces a matched customer's identifiers (from
    another process, while the node serves) shows in the very next flow."""
    agreement_id = running.agreement()
    owner = running.world.stores[OWNER]
    recipient = running.world.stores[RECIPIENT]
    person = max(owner.consented & recipient.consented & owner.truth.valid_people
                 & recipient.truth.valid_people)  # fmt: skip
    before = request_audience(running.stub(RECIPIENT), agreement_id)
    cached = request_audience(running.stub(RECIPIENT), agreement_id)
    assert cached.summary.match.matched_customers == before.summary.match.matched_customers
    changed = running.world.root / "changed.csv"
    changed.write_text(
        f"external_id,email\n{recipient.truth.external_ids[person]},moved-{person}@example.net\n"
    )
    imported = accord("node", "import", str(changed), "--db", str(recipient.db), "--json")
    assert json.loads(imported.stdout)["updated"] == 1
    after = request_audience(running.stub(RECIPIENT), agreement_id)
    assert after.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, after.flow.failure_detail
    assert after.summary.match.matched_customers == before.summary.match.matched_customers - 1
    running.world.stores[RECIPIENT].consented.discard(person)


# --- who learns what ------------------------------------------------------------------------


def test_stream_order_does_not_follow_store_order(running: Running) -> None:
    agreement_id = running.agreement()
    one_tokens, one_handles = blind_set(running, OWNER, agreement_id, flow_pb2.FLOW_ROLE_OWNER)
    two_tokens, two_handles = blind_set(running, OWNER, agreement_id, flow_pb2.FLOW_ROLE_OWNER)
    assert sorted(one_tokens) == sorted(two_tokens)  # same epoch: the same tokens …
    assert one_tokens != two_tokens  # … in a fresh order every time
    assert not set(one_handles) & set(two_handles)  # and under fresh handles
    assert all(len(h) == 16 for h in one_handles)
    # The order is not the store's: blind the store's points in store order ourselves.
    key = node_key(running, OWNER, agreement_id)
    owner = running.world.stores[OWNER]
    store_order = [key.blind(hash_to_curve("email", _email(owner, p)))
                   for p in sorted(owner.consented)]  # fmt: skip
    positions = [one_tokens.index(t) for t in store_order if t in one_tokens]
    assert len(positions) == len(store_order)  # every consented customer is in the set
    ascending = sum(1 for a, b in zip(positions, positions[1:], strict=False) if a < b)
    assert 0.3 < ascending / (len(positions) - 1) < 0.7  # no trace of the store's order


def _email(store: Any, person_index: int) -> str:
    from accord.synthetic import person
    from node.normalize import normalize_email

    p = person(11, person_index)
    return normalize_email(f"{p.email_local}@{p.email_domain}")


def test_reblinding_strips_handles_and_order_unless_the_partner_is_entitled(
    running: Running,
) -> None:
    agreement_id = running.agreement()
    owner_tokens, owner_handles = blind_set(running, OWNER, agreement_id,
                                            flow_pb2.FLOW_ROLE_OWNER)  # fmt: skip
    # The recipient re-blinds the owner's set: the owner is not entitled to rows.
    doubly, handles = reblind(running, RECIPIENT, agreement_id, flow_pb2.FLOW_ROLE_RECIPIENT,
                              owner_tokens, owner_handles)  # fmt: skip
    assert handles == []
    recipient_key = node_key(running, RECIPIENT, agreement_id)
    in_input_order = [recipient_key.blind(t) for t in owner_tokens]
    assert sorted(doubly) == sorted(in_input_order)
    assert doubly != in_input_order  # shuffled: position does not lead back to a handle
    # The owner re-blinds the recipient's set: a match recipient gets its own rows back.
    mine, my_handles = blind_set(running, RECIPIENT, agreement_id,
                                 flow_pb2.FLOW_ROLE_RECIPIENT)  # fmt: skip
    back, back_handles = reblind(running, OWNER, agreement_id, flow_pb2.FLOW_ROLE_OWNER, mine,
                                 my_handles)  # fmt: skip
    assert back_handles == my_handles
    owner_key = node_key(running, OWNER, agreement_id)
    assert back == [owner_key.blind(t) for t in mine]


def _deliver(running: Running, ctx: flow_pb2.FlowContext, handles: list[bytes]) -> None:
    as_broker(running, RECIPIENT).DeliverMatchResult(
        node_pb2.DeliverMatchResultRequest(
            flow=ctx,
            match=flow_pb2.MatchResult(
                agreement_id=ctx.agreement_id, flow_id=ctx.flow_id, matched_handles=handles,
                final=True, matched_total=len(handles),
            ),
        ),
        timeout=60,
    )  # fmt: skip


def _matched(running: Running, flow_id: str) -> tuple[int, list[int], list[Any]]:
    """The recipient's stored result of a flow: its count, its rows, and what SQLite's
    foreign-key check finds wrong in the store."""
    engine = create_engine(f"sqlite:///{running.world.stores[RECIPIENT].db}")
    try:
        with engine.connect() as connection:
            count = connection.execute(
                text("SELECT matched_customers FROM node_flows WHERE flow_id = :f"),
                {"f": flow_id},
            ).scalar_one()
            rows = (
                connection.execute(
                    text("SELECT customer_id FROM node_match_results WHERE flow_id = :f"),
                    {"f": flow_id},
                )
                .scalars()
                .all()
            )
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    finally:
        engine.dispose()
    return count, list(rows), broken


def test_a_recipient_reads_back_only_handles_it_issued_for_that_flow(running: Running) -> None:
    agreement_id = running.agreement()

    def blinded() -> tuple[flow_pb2.FlowContext, list[bytes]]:
        role = flow_pb2.FLOW_ROLE_RECIPIENT
        ctx = context(agreement_id, role)
        return ctx, blind_set(running, RECIPIENT, agreement_id, role, ctx)[1]

    for forged in (
        lambda own, other: [own[0], bytes(16)],  # made up
        lambda own, other: [own[0], other[1]],  # issued, but for another flow
        lambda own, other: [own[0], own[1][:8]],  # cut short
    ):
        (ctx, own), (_, other) = blinded(), blinded()
        with pytest.raises(grpc.RpcError) as caught:
            _deliver(running, ctx, forged(own, other))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not one this node sent" in (caught.value.details() or "")
    ctx, own = blinded()
    _deliver(running, ctx, own)  # everything matched: every consented customer, no padding
    matched, rows, _ = _matched(running, ctx.flow_id)
    assert 0 < matched == len(rows) < len(own)  # the set was padded: dummies never count


def test_a_customer_erased_during_a_flow_is_left_out_of_its_result(running: Running) -> None:
    """The node checks its result rows' keys itself rather than row by row in SQLite: a
    customer erased between the recipient's set and its result is neither counted nor
    stored, and the store's keys stay whole."""
    agreement_id = running.agreement()
    recipient = running.world.stores[RECIPIENT]
    role = flow_pb2.FLOW_ROLE_RECIPIENT
    before_ctx, after_ctx = context(agreement_id, role), context(agreement_id, role)
    before = blind_set(running, RECIPIENT, agreement_id, role, before_ctx)[1]
    after = blind_set(running, RECIPIENT, agreement_id, role, after_ctx)[1]
    _deliver(running, before_ctx, before)  # everything matched
    count, rows, broken = _matched(running, before_ctx.flow_id)
    assert count == len(rows) > 0 and not broken
    person = max(recipient.consented & recipient.truth.valid_people)
    engine = open_store(database_url(str(recipient.db)))  # the node's own settings: FKs on
    try:
        with engine.connect() as connection:
            erased_id = connection.execute(
                text("SELECT id FROM customers WHERE external_id = :e"),
                {"e": recipient.truth.external_ids[person]},
            ).scalar_one()
        assert erased_id in rows
        assert delete_customer(engine, recipient.truth.external_ids[person])  # another process
    finally:
        engine.dispose()
    recipient.consented.discard(person)
    _deliver(running, after_ctx, after)  # everything matched, the erased customer too
    count_after, rows_after, broken = _matched(running, after_ctx.flow_id)
    assert count_after == len(rows_after) == count - 1
    assert erased_id not in rows_after and not broken


def test_the_broker_keeps_no_tokens(running: Running) -> None:
    running.agreement()
    engine = create_engine(f"sqlite:///{running.world.root / 'broker.db'}")
    try:
        columns = {
            table: {c["name"] for c in inspect(engine).get_columns(table)}
            for table in inspect(engine).get_table_names()
        }
        with engine.connect() as connection:
            flows = connection.execute(text("SELECT * FROM broker_flows")).mappings().all()
            # The broker's audit log shares the consent ledger's schema; it records no
            # consent of its own.
            subjects = connection.execute(text("SELECT count(*) FROM consent_subjects")).scalar()
            events = connection.execute(text("SELECT count(*) FROM consent_events")).scalar()
    finally:
        engine.dispose()
    broker_tables = {"broker_nodes", "broker_agreements", "broker_flows", "broker_catalog",
                     "broker_revocations", "broker_witnessed_heads",
                     "accord_broker_alembic_version"}  # fmt: skip
    audit_tables = {"audit_entries", "audit_records", "audit_tree_heads", "audit_log_state",
                    "consent_subjects", "consent_events",
                    "accord_consent_alembic_version"}  # fmt: skip
    assert set(columns) <= broker_tables | audit_tables
    assert (subjects, events) == (0, 0)
    assert not any("token" in c or "handle" in c for cs in columns.values() for c in cs)
    assert flows and all(set(f) == columns["broker_flows"] for f in flows)


# --- bad input ------------------------------------------------------------------------------

P = 2**255 - 19


def _twist() -> bytes:
    u = 2
    while pow((u**3 + 486662 * u * u + u) % P, (P - 1) // 2, P) == 1:
        u += 1
    return u.to_bytes(32, "little")


INVALID = {
    "short": bytes(31),
    "top bit": (9).to_bytes(32, "little")[:31] + b"\x80",
    "non-canonical": (P + 1).to_bytes(32, "little"),
    "small order": (1).to_bytes(32, "little"),
    "twist": _twist(),
}


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_an_invalid_token_aborts_the_flow(running: Running, kind: str) -> None:
    agreement_id = running.agreement()
    good = [hash_to_curve("email", f"x{i}@example.com") for i in range(20)]
    with pytest.raises(grpc.RpcError) as caught:
        reblind(running, OWNER, agreement_id, flow_pb2.FLOW_ROLE_OWNER,
                [*good[:7], INVALID[kind], *good[7:]], [])  # fmt: skip
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid" in (caught.value.details() or "")
    reasons = dict(caught.value.trailing_metadata() or ())
    assert reasons.get("accord-failure-reason") == "PEER_REJECTED"


def test_only_the_broker_may_call_broker_rpcs(running: Running) -> None:
    agreement_id = running.agreement()
    channel = connect(running.nodes[OWNER].address, identity="intruder", insecure_loopback=True)
    with pytest.raises(grpc.RpcError) as caught:
        list(node_pb2_grpc.NodeServiceStub(channel).BlindSet(
            node_pb2.BlindSetRequest(flow=context(agreement_id, flow_pb2.FLOW_ROLE_OWNER))
        ))  # fmt: skip
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"k": 100_000}, flow_pb2.FLOW_FAILURE_REASON_BELOW_MIN_AUDIENCE),
        ({"max_set_size": 64}, flow_pb2.FLOW_FAILURE_REASON_SET_TOO_LARGE),
        ({"epoch_cap": 100}, flow_pb2.FLOW_FAILURE_REASON_SET_TOO_LARGE),
    ],
)
def test_limits_refuse_the_flow_with_a_reason(
    running: Running, changes: dict[str, int], reason: int
) -> None:
    agreement_id = running.agreement(**changes)
    response = request_audience(running.stub(RECIPIENT), agreement_id)
    assert response.flow.state == flow_pb2.FLOW_STATE_FAILED
    assert response.flow.failure_reason == reason
    assert response.flow.failure_detail
    assert not response.HasField("summary")


def test_plaintext_serving_is_loopback_only(tmp_path: Any) -> None:
    for args, message in (
        (["--listen", "0.0.0.0:0", "--insecure-loopback"], "not a loopback address"),
        (["--listen", "127.0.0.1:0"], "--insecure-loopback"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "accord", "broker", "serve", "--db",
             str(tmp_path / "b.db"), "--keys", str(tmp_path / "keys"), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert run.returncode == 2 and message in run.stderr, run.stderr
        assert not (tmp_path / "keys").exists() and not (tmp_path / "b.db").exists()
