"""Overlap, release, revocation and retention end to end: a broker and two nodes as
separate processes (docs/audiences.md).

The boat dealer (owner) offers a segment of sailing customers; the travel agency
(recipient) asks for a noised overlap count, then for a release of the segment's
consented customers. Expected figures come from the generator's files (ground truth),
never from the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, text

from accord.client import Terms, propose, request_audience, sign
from accord.synthetic import NOTICE_SHA256, TRAVEL_AGENCY, write_consents
from consent import Ledger
from consent.agreements import OutputMode
from consent.signed import ReleaseBatchSeal, release_context
from kernel.crypto import HpkeKeyPair, random_bytes, seal
from kernel.keys import KeyStore
from kernel.rpc import connect
from kernel.wire.accord.broker.v1 import broker_pb2, broker_pb2_grpc
from kernel.wire.accord.common.v1 import agreement_pb2, flow_pb2
from kernel.wire.accord.node.v1 import node_pb2, node_pb2_grpc
from node._exchange import ReleasedRecordData, purge_expired
from node._service import encode_release

from .conftest import OWNER, PURPOSE, RECIPIENT, SEED, Running, accord, build_world, start

OVERLAP_PURPOSE = "analytics.overlap"
SAILORS = "sailors"
FIELDS = ("first_name", "email", "interests")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("audiences")
    world = build_world(root)
    recipient = world.stores[RECIPIENT]
    # The recipient's customers who agreed to overlap counting with the boat dealer.
    overlap_file = root / "overlap-consents.csv"
    consented = write_consents(
        overlap_file,
        recipient.truth,
        company=TRAVEL_AGENCY,
        partner=OWNER,
        purpose=OVERLAP_PURPOSE,
        seed=SEED + 1,
        rate=0.9,
    )
    accord(
        "consent",
        "import",
        str(overlap_file),
        "--db",
        str(recipient.db),
        "--keys",
        str(recipient.keys),
        "--json",
    )
    world.extra_rows["overlap_consented"] = [[str(p)] for p in sorted(consented)]
    for running in start(world, root / "logs"):
        running.stub(OWNER).DefineSegment(
            node_pb2.DefineSegmentRequest(
                segment=node_pb2.Segment(
                    segment_id=SAILORS,
                    title="Sailors",
                    description="Customers interested in sailing",
                    filter=node_pb2.SegmentFilter(interests=["sailing"]),
                )
            ),
            timeout=30,
        )
        yield running


# --- ground truth ------------------------------------------------------------------------


def sailing_people(running: Running) -> set[int]:
    """Owner customers whose export row lists the sailing interest (the generator's truth)."""
    return running.world.stores[OWNER].truth.interested_in("sailing")


def expected_release(running: Running) -> set[int]:
    return sailing_people(running) & running.world.stores[OWNER].consented


def expected_overlap_count(running: Running) -> int:
    owner, recipient = running.world.stores[OWNER], running.world.stores[RECIPIENT]
    overlap_consented = {int(r[0]) for r in running.world.extra_rows["overlap_consented"]}
    return len(
        owner.truth.valid_people
        & recipient.truth.valid_people
        & owner.consented
        & overlap_consented
    )


def query(db: Path, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql), params))
    finally:
        engine.dispose()


def log_records(db: Path, schema: str) -> list[dict[str, Any]]:
    """The audit-log records of one schema in a node's database."""
    found = []
    for (record,) in query(db, "SELECT record FROM audit_records"):
        data = json.loads(bytes(record))
        if data.get("schema") == schema:
            found.append(data)
    return found


def eventually(check: Callable[[], bool], *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.2)


def release_agreement(running: Running, **changes: Any) -> str:
    return running.agreement(
        **{"segments": (SAILORS,), "mode": OutputMode.RELEASE, "released_fields": FIELDS, **changes}
    )


def failure(response: node_pb2.RequestAudienceResponse) -> int:
    assert response.flow.state == flow_pb2.FLOW_STATE_FAILED, response.flow
    assert response.flow.failure_detail
    assert not response.HasField("summary")
    return response.flow.failure_reason


# --- overlap -------------------------------------------------------------------------------


def test_overlap_is_a_noised_count_against_a_lifetime_budget(running: Running) -> None:
    agreement_id = running.agreement(
        mode=OutputMode.OVERLAP, epsilon_total="1.0", epsilon_per_count="0.5"
    )
    expected = expected_overlap_count(running)
    counts = []
    for _ in range(2):
        response = request_audience(running.stub(RECIPIENT), agreement_id)
        assert response.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, response.flow.failure_detail
        overlap = response.summary.overlap
        assert not overlap.suppressed
        counts.append(overlap.noised_count)
    # Discrete Laplace of scale 2: |noise| > 30 has probability ~3e-7.
    assert all(abs(c - expected) <= 30 for c in counts), (counts, expected)
    # The budget is spent: the third count is refused, by the owner, with a reason.
    third = request_audience(running.stub(RECIPIENT), agreement_id)
    assert failure(third) == flow_pb2.FLOW_FAILURE_REASON_BUDGET_EXHAUSTED
    owner_db = running.world.stores[OWNER].db
    (spent,) = query(
        owner_db, "SELECT spent FROM node_budgets WHERE agreement_id = :a", a=agreement_id
    )
    assert spent[0] == "1.0"
    released = [
        r
        for r in log_records(owner_db, "accord.flow-step/1")
        if r["agreement_id"] == agreement_id and r["step"] == "count-released"
    ]
    assert len(released) == 2
    # The exact count is in no log: only the noised one.
    assert all(set(r) >= {"noised_count", "epsilon_remaining"} for r in released)
    assert not any("intersection" in json.dumps(r) for r in released)
    refused = [
        r
        for r in log_records(owner_db, "accord.flow-step/1")
        if r["agreement_id"] == agreement_id and r["step"] == "refused"
    ]
    assert [r["reason"] for r in refused] == ["BUDGET_EXHAUSTED"]


def test_an_overlap_below_k_is_suppressed(running: Running) -> None:
    # Both sets are large enough to enter (k ≤ each consented set), the overlap is not.
    expected = expected_overlap_count(running)
    k = expected + 60
    agreement_id = running.agreement(
        mode=OutputMode.OVERLAP, epsilon_total="10", epsilon_per_count="2", k=k
    )
    response = request_audience(running.stub(RECIPIENT), agreement_id)
    assert response.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, response.flow.failure_detail
    assert response.summary.overlap.suppressed
    assert response.summary.overlap.noised_count == 0


# --- release -------------------------------------------------------------------------------


def test_release_delivers_exactly_the_consented_segment_and_only_named_fields(
    running: Running,
) -> None:
    agreement_id = release_agreement(running)
    response = request_audience(running.stub(RECIPIENT), agreement_id, owner_segment=SAILORS)
    assert response.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, response.flow.failure_detail
    expected = expected_release(running)
    assert response.summary.release.records == len(expected) > 0
    rows = query(
        running.world.stores[RECIPIENT].db,
        "SELECT fields, channels, delete_after FROM node_received WHERE agreement_id = :a",
        a=agreement_id,
    )
    assert len(rows) == len(expected)
    for fields, channels, _ in rows:
        names = set(json.loads(fields))
        assert names <= set(FIELDS)
        assert "sailing" in json.loads(fields)["interests"]
        assert channels  # consent to at least one channel came with the record
    # Retention: every record carries the agreement's delete_after (30 days by default).
    delete_after = response.summary.release.delete_after.ToDatetime(tzinfo=UTC)
    assert timedelta(days=29) < delete_after - datetime.now(UTC) <= timedelta(days=30)


def test_a_withdrawal_after_release_revokes_the_record_at_the_recipient(
    running: Running,
) -> None:
    agreement_id = release_agreement(running)
    response = request_audience(running.stub(RECIPIENT), agreement_id, owner_segment=SAILORS)
    assert response.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, response.flow.failure_detail
    owner, recipient = running.world.stores[OWNER], running.world.stores[RECIPIENT]

    def held() -> int:
        return len(
            query(
                recipient.db,
                "SELECT release_id FROM node_received WHERE agreement_id = :a",
                a=agreement_id,
            )
        )

    before = held()
    person = min(expected_release(running))
    accord(
        "consent",
        "withdraw",
        owner.truth.external_ids[person],
        "--purpose",
        PURPOSE,
        "--recipient",
        RECIPIENT,
        "--db",
        str(owner.db),
        "--keys",
        str(owner.keys),
    )
    owner.consented.discard(person)
    # The running owner node relays the revocation; the recipient deletes and acks.
    eventually(lambda: held() == before - 1)

    def acknowledged() -> list[dict[str, Any]]:
        return [
            r
            for r in log_records(owner.db, "accord.revocation-acknowledged/1")
            if r["agreement_id"] == agreement_id
        ]

    eventually(lambda: len(acknowledged()) == 1)
    assert acknowledged()[0]["deleted_records"] == 1
    carried_out = [
        r
        for r in log_records(recipient.db, "accord.revocation-carried-out/1")
        if r["agreement_id"] == agreement_id
    ]
    assert [r["deleted_records"] for r in carried_out] == [1]
    listed = accord(
        "revocation", "list", "--db", str(owner.db), "--keys", str(owner.keys), "--json"
    )
    states = json.loads(listed.stdout)["revocations"]
    assert any(s["agreement_id"] == agreement_id and s["state"] == "acknowledged" for s in states)


def test_consent_at_the_boundary_of_the_flow(running: Running) -> None:
    """Withdrawn a second before the flow: out. Expired a second before: out. Expiring a
    minute after: in."""
    owner = running.world.stores[OWNER]
    pool = sorted(expected_release(running))
    withdrawn, expired, expiring = pool[1], pool[2], pool[3]
    now = datetime.now(UTC)
    keys = ["--db", str(owner.db), "--keys", str(owner.keys)]
    accord(
        "consent",
        "withdraw",
        owner.truth.external_ids[withdrawn],
        "--purpose",
        PURPOSE,
        "--recipient",
        RECIPIENT,
        "--collected-at",
        (now - timedelta(seconds=1)).isoformat(),
        *keys,
    )
    for person, until in (
        (expired, now + timedelta(seconds=2)),
        (expiring, now + timedelta(minutes=1)),
    ):
        accord(
            "consent",
            "grant",
            owner.truth.external_ids[person],
            "--purpose",
            PURPOSE,
            "--recipient",
            RECIPIENT,
            "--channel",
            "email",
            "--method",
            "web_form",
            "--notice-ref",
            "https://solent.example/privacy",
            "--notice-version",
            "3",
            "--notice-sha256",
            NOTICE_SHA256,
            "--expires-at",
            until.isoformat(),
            "--collected-at",
            now.isoformat(),
            *keys,
        )
    owner.consented -= {withdrawn, expired}
    time.sleep(max(0.0, (now + timedelta(seconds=3) - datetime.now(UTC)).total_seconds()))
    agreement_id = release_agreement(running)
    response = request_audience(running.stub(RECIPIENT), agreement_id, owner_segment=SAILORS)
    assert response.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, response.flow.failure_detail
    assert response.summary.release.records == len(expected_release(running))
    assert expiring in expected_release(running)


def test_retention_ends_with_deletion_and_a_log_entry(running: Running) -> None:
    agreement_id = release_agreement(running, retention_days=1)
    response = request_audience(running.stub(RECIPIENT), agreement_id, owner_segment=SAILORS)
    assert response.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, response.flow.failure_detail
    recipient = running.world.stores[RECIPIENT]
    count = response.summary.release.records
    delete_after = response.summary.release.delete_after.ToDatetime(tzinfo=UTC)
    engine = create_engine(f"sqlite:///{recipient.db}")
    keystore = KeyStore.open(recipient.keys)
    ledger = Ledger(
        engine,
        origin=keystore.identity.origin,
        controller=keystore.identity.name,
        signing_key=keystore.signing_key(),
    )
    try:
        # A second before the end nothing goes; at the end, everything of this flow does.
        assert purge_expired(engine, ledger, now=delete_after - timedelta(seconds=1))[0] == 0
        records, _ = purge_expired(engine, ledger, now=delete_after)
    finally:
        engine.dispose()
    assert records >= count
    left = query(
        recipient.db, "SELECT count(*) FROM node_received WHERE agreement_id = :a", a=agreement_id
    )
    assert left[0][0] == 0
    assert any(
        r["records"] >= count for r in log_records(recipient.db, "accord.retention-deleted/1")
    )


# --- what the recipient accepts --------------------------------------------------------------


def as_broker(running: Running, name: str) -> Any:
    channel = connect(running.nodes[name].address, identity="broker", insecure_loopback=True)
    return node_pb2_grpc.NodeServiceStub(channel)


def forged_delivery(
    running: Running,
    agreement_id: str,
    *,
    records: list[ReleasedRecordData],
    hpke_public_key: bytes | None = None,
    signer: Path | None = None,
    tamper: bool = False,
) -> grpc.RpcError | None:
    """Play a broker (or a malicious owner) delivering one release batch to the recipient."""
    owner = running.world.stores[OWNER]
    recipient_keys = KeyStore.open(running.world.stores[RECIPIENT].keys).identity
    flow_id = str(uuid.uuid4())
    ctx = flow_pb2.FlowContext(
        flow_id=flow_id,
        agreement_id=agreement_id,
        role=flow_pb2.FLOW_ROLE_RECIPIENT,
        owner_segment_id=SAILORS,
    )
    ctx.started_at.FromDatetime(datetime.now(UTC))
    plaintext = encode_release(records, datetime.now(UTC) + timedelta(days=30))
    sealed = seal(
        plaintext,
        recipient_public_key=hpke_public_key or recipient_keys.hpke_public_key,
        context=release_context(agreement_id, flow_id, RECIPIENT, 0, True),
    )
    enc, ciphertext = sealed[:32], sealed[32:]
    signature = ReleaseBatchSeal(agreement_id, flow_id, 0, True, enc, ciphertext).sign(
        KeyStore.open(signer or owner.keys).signing_key()
    )
    if tamper:
        ciphertext = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    batch = flow_pb2.ReleaseBatch(
        agreement_id=agreement_id,
        flow_id=flow_id,
        batch_index=0,
        final=True,
        enc=enc,
        ciphertext=ciphertext,
        owner_signature=signature,
    )
    try:
        as_broker(running, RECIPIENT).DeliverReleaseBatch(
            iter([node_pb2.DeliverReleaseBatchRequest(flow=ctx, batch=batch)]), timeout=30
        )
    except grpc.RpcError as exc:
        return exc
    return None


def record(**fields: list[str]) -> ReleasedRecordData:
    return ReleasedRecordData(uuid.uuid4().bytes, dict(fields), ("email",))


def test_the_recipient_refuses_what_the_agreement_does_not_allow(
    running: Running, tmp_path: Path
) -> None:
    agreement_id = release_agreement(running)
    recipient_db = running.world.stores[RECIPIENT].db

    def held() -> int:
        return int(
            query(
                recipient_db,
                "SELECT count(*) FROM node_received WHERE agreement_id = :a",
                a=agreement_id,
            )[0][0]
        )

    genuine = [record(first_name=["Ada"], email=["ada@example.org"])] * 1
    # The control: a genuine batch of named fields is taken.
    assert forged_delivery(running, agreement_id, records=genuine) is None
    assert held() == 1
    other_key = HpkeKeyPair(random_bytes(32))
    impostor = tmp_path / "impostor-keys"
    KeyStore.create(impostor, name="impostor")
    refusals = {
        "a field the agreement does not name": forged_delivery(
            running, agreement_id, records=[record(first_name=["Ada"], phone=["+447700900123"])]
        ),
        "a batch sealed to another key": forged_delivery(
            running, agreement_id, records=genuine, hpke_public_key=other_key.public_key
        ),
        "a batch signed by someone else": forged_delivery(
            running, agreement_id, records=genuine, signer=impostor
        ),
        "a ciphertext changed after signing": forged_delivery(
            running, agreement_id, records=genuine, tamper=True
        ),
    }
    for case, error in refusals.items():
        assert error is not None, case
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert dict(error.trailing_metadata() or ())["accord-failure-reason"] == "PEER_REJECTED"
    assert held() == 1  # nothing of the refused batches was kept


# --- agreements that no longer hold ------------------------------------------------------------


def test_a_revoked_agreement_stops_flows_and_clears_what_was_received(running: Running) -> None:
    agreement_id = release_agreement(running)
    response = request_audience(running.stub(RECIPIENT), agreement_id, owner_segment=SAILORS)
    assert response.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, response.flow.failure_detail
    recipient = running.world.stores[RECIPIENT]
    accord(
        "agreement",
        "revoke",
        agreement_id,
        "--reason",
        "contract ended",
        "--node",
        running.nodes[OWNER].address,
    )

    def held() -> int:
        return int(
            query(
                recipient.db,
                "SELECT count(*) FROM node_received WHERE agreement_id = :a",
                a=agreement_id,
            )[0][0]
        )

    eventually(lambda: held() == 0)
    with pytest.raises(grpc.RpcError) as refused:
        request_audience(running.stub(RECIPIENT), agreement_id, owner_segment=SAILORS)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "revoked" in (refused.value.details() or "")


def test_an_expired_agreement_is_refused(running: Running) -> None:
    agreement_id = running.agreement(valid_days=0, valid_seconds=3)
    time.sleep(4)
    with pytest.raises(grpc.RpcError) as refused:
        request_audience(running.stub(RECIPIENT), agreement_id)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in (refused.value.details() or "")


def test_a_rate_limited_agreement_is_refused(running: Running) -> None:
    agreement_id = running.agreement(rate_limit=1)
    first = request_audience(running.stub(RECIPIENT), agreement_id)
    assert first.flow.state == flow_pb2.FLOW_STATE_SUCCEEDED, first.flow.failure_detail
    second = request_audience(running.stub(RECIPIENT), agreement_id)
    assert failure(second) == flow_pb2.FLOW_FAILURE_REASON_RATE_LIMITED


def test_an_unknown_segment_is_refused_by_the_owner(running: Running) -> None:
    agreement_id = running.agreement(segments=("no-such-segment",))
    response = request_audience(running.stub(RECIPIENT), agreement_id)
    assert failure(response) == flow_pb2.FLOW_FAILURE_REASON_SEGMENT_UNKNOWN
    assert "no-such-segment" in response.flow.failure_detail


def test_an_agreement_the_recipient_never_signed_runs_no_flow(running: Running) -> None:
    terms = Terms(partner=RECIPIENT, segments=("all",), purpose=PURPOSE, mode=OutputMode.MATCH, k=5)
    proposed = propose(running.stub(OWNER), terms)
    broker = broker_pb2_grpc.BrokerServiceStub(
        connect(running.broker.address, identity=RECIPIENT, insecure_loopback=True)
    )
    with pytest.raises(grpc.RpcError) as refused:
        broker.StartFlow(
            broker_pb2.StartFlowRequest(
                flow_id=str(uuid.uuid4()), agreement_id=proposed.agreement.agreement_id
            ),
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sign" in (refused.value.details() or "")


def test_a_tampered_agreement_is_neither_signed_nor_accepted(running: Running) -> None:
    terms = Terms(partner=RECIPIENT, segments=("all",), purpose=PURPOSE, mode=OutputMode.MATCH, k=5)
    proposed = propose(running.stub(OWNER), terms)
    # The recipient signs only the bytes its operator reviewed.
    with pytest.raises(grpc.RpcError) as refused:
        sign(
            running.stub(RECIPIENT),
            proposed.agreement.agreement_id,
            bytes(a ^ 1 for a in proposed.agreement_digest[:1]) + proposed.agreement_digest[1:],
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The broker accepts no agreement whose bytes differ from what the owner signed.
    signed = proposed.signed_agreement
    canonical = signed.canonical_agreement.replace(b'"min_audience_k":5', b'"min_audience_k":1')
    assert canonical != signed.canonical_agreement
    forged = agreement_pb2.SignedAgreement(
        canonical_agreement=canonical, owner_signature=signed.owner_signature
    )
    broker = broker_pb2_grpc.BrokerServiceStub(
        connect(running.broker.address, identity=OWNER, insecure_loopback=True)
    )
    with pytest.raises(grpc.RpcError) as rejected:
        broker.SubmitAgreement(
            broker_pb2.SubmitAgreementRequest(signed_agreement=forged), timeout=30
        )
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- audit ---------------------------------------------------------------------------------


def test_audit_verify_checks_the_log_against_the_heads_the_broker_witnessed(
    running: Running,
) -> None:
    recipient = running.world.stores[RECIPIENT]
    base = ("audit", "verify", "--db", str(recipient.db), "--keys", str(recipient.keys), "--json")
    witnessed = [*base, "--witnessed", "--broker", running.broker.address]

    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "accord", *args], capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip

    def seen() -> int:
        return int(json.loads(report(*witnessed).stdout).get("witnessed_heads", 0))

    # The node's housekeeping sends its heads to the broker within seconds; once the log
    # grows again, the next head goes with a proof built from the witnessed frontier.
    eventually(lambda: seen() > 0)
    before = seen()
    release = release_agreement(running)
    assert request_audience(running.stub(RECIPIENT), release, owner_segment=SAILORS).flow.state \
        == flow_pb2.FLOW_STATE_SUCCEEDED  # fmt: skip
    eventually(lambda: seen() > before)
    run = report(*witnessed)
    assert run.returncode == 0, run.stderr
    verified = json.loads(run.stdout)
    assert verified["verified"] and verified["latest_witnessed_size"] <= verified["entries"]
    # Pinning a key that is not the broker's: the cosignatures are not trusted.
    owner_identity = running.world.stores[OWNER].keys / "identity.json"
    pinned = report(*witnessed, "--witness-identity", str(owner_identity))
    assert pinned.returncode == 1
    assert "not the pinned witness key" in json.loads(pinned.stdout)["problem"]
    # --witnessed names its witness.
    alone = report(*base, "--witnessed")
    assert alone.returncode == 2 and "--broker" in alone.stderr
