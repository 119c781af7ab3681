"""Operator calls to a running node, as functions (the CLI, demo and benchmarks use them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from consent.agreements import OutputMode
from consent.serde import mode_to_proto, time_to_proto
from kernel.rpc import connect
from kernel.wire.accord.common.v1 import agreement_pb2, common_pb2
from kernel.wire.accord.node.v1 import node_pb2, node_pb2_grpc

__all__ = ["OPERATOR", "Terms", "operator_stub", "propose", "request_audience", "sign"]

OPERATOR = "operator"


def operator_stub(address: str) -> node_pb2_grpc.NodeServiceStub:
    channel = connect(address, identity=OPERATOR, insecure_loopback=True)
    return node_pb2_grpc.NodeServiceStub(channel)


@dataclass(frozen=True)
class Terms:
    partner: str
    segments: tuple[str, ...]
    purpose: str
    mode: OutputMode
    k: int = 50
    max_set_size: int = 2_000_000
    epoch_cap: int = 10_000_000
    epoch_days: int = 7
    retention_days: int = 30
    valid_days: int = 365
    valid_seconds: int = 0  # added to valid_days (short-lived agreements, for tests)
    rate_limit: int = 24
    released_fields: tuple[str, ...] = ()
    epsilon_total: str | None = None
    epsilon_per_count: str | None = None

    def to_proto(self, now: datetime | None = None) -> agreement_pb2.Agreement:
        start = (now or datetime.now(UTC)).replace(microsecond=0)
        terms = agreement_pb2.Agreement(
            recipient=common_pb2.NodeKeys(node_name=self.partner),
            segment_ids=list(self.segments),
            purpose=self.purpose,
            output_mode=mode_to_proto(self.mode),
            released_fields=list(self.released_fields),
            min_audience_k=self.k,
            max_set_size=self.max_set_size,
            epoch_identifier_cap=self.epoch_cap,
            epoch_length_seconds=self.epoch_days * 86400,
            retention_days=self.retention_days,
            valid_from=time_to_proto(start - timedelta(minutes=1)),
            valid_until=time_to_proto(
                start + timedelta(days=self.valid_days, seconds=self.valid_seconds)
            ),
            rate_limit_per_day=self.rate_limit,
        )
        if self.epsilon_total is not None:
            terms.privacy_budget.epsilon_total = self.epsilon_total
            terms.privacy_budget.epsilon_per_count = self.epsilon_per_count or ""
        return terms


def propose(
    stub: node_pb2_grpc.NodeServiceStub, terms: Terms, *, timeout: float = 60
) -> agreement_pb2.AgreementStatus:
    response = stub.ProposeAgreement(
        node_pb2.ProposeAgreementRequest(agreement=terms.to_proto()), timeout=timeout
    )
    status: agreement_pb2.AgreementStatus = response.status
    return status


def sign(
    stub: node_pb2_grpc.NodeServiceStub, agreement_id: str, digest: bytes, *, timeout: float = 60
) -> agreement_pb2.AgreementStatus:
    response = stub.SignAgreement(
        node_pb2.SignAgreementRequest(agreement_id=agreement_id, agreement_digest=digest),
        timeout=timeout,
    )
    status: agreement_pb2.AgreementStatus = response.status
    return status


def request_audience(
    stub: node_pb2_grpc.NodeServiceStub,
    agreement_id: str,
    *,
    owner_segment: str = "",
    own_segment: str = "",
    wait: bool = True,
    timeout: float = 7200,
) -> node_pb2.RequestAudienceResponse:
    response: node_pb2.RequestAudienceResponse = stub.RequestAudience(
        node_pb2.RequestAudienceRequest(
            agreement_id=agreement_id,
            owner_segment_id=owner_segment,
            recipient_segment_id=own_segment,
            wait=wait,
        ),
        timeout=timeout,
    )
    return response
