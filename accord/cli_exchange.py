"""``accord agreement …`` and ``accord audience …``: talk to the node's running service."""

from __future__ import annotations

import json
from typing import Annotated, Any

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from rich.table import Table

from accord._options import JsonOption, fail, out, print_json
from accord.client import Terms, operator_stub
from consent.agreements import OutputMode, SignedAgreement
from kernel.errors import KernelError
from kernel.wire.accord.common.v1 import agreement_pb2, flow_pb2
from kernel.wire.accord.node.v1 import node_pb2, node_pb2_grpc

agreement_app = typer.Typer(help="Propose, sign and list agreements.", no_args_is_help=True)
audience_app = typer.Typer(help="Request audiences under agreements.", no_args_is_help=True)

NodeOption = Annotated[
    str,
    typer.Option("--node", envvar="ACCORD_NODE", help="The node's service (HOST:PORT)."),
]
DEFAULT_NODE = "127.0.0.1:7701"
_STATES = {v: k.removeprefix("AGREEMENT_STATE_").lower() for k, v in
           agreement_pb2.AgreementState.items()}  # fmt: skip
_FLOW_STATES = {v: k.removeprefix("FLOW_STATE_").lower() for k, v in flow_pb2.FlowState.items()}
_REASONS = {v: k.removeprefix("FLOW_FAILURE_REASON_") for k, v in
            flow_pb2.FlowFailureReason.items()}  # fmt: skip


def _stub(node: str) -> node_pb2_grpc.NodeServiceStub:
    try:
        return operator_stub(node)
    except KernelError as exc:
        fail(str(exc), code=2)


def _call(method: Any, request: Any, timeout: float = 60) -> Any:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            fail("the node's service is not reachable: is `accord node serve` running (--node)?")
        fail(exc.details() or exc.code().name)


def _status_json(status: agreement_pb2.AgreementStatus) -> dict[str, Any]:
    agreement = SignedAgreement(
        status.signed_agreement.canonical_agreement,
        status.signed_agreement.owner_signature,
        status.signed_agreement.recipient_signature,
    ).agreement
    terms = agreement.to_json()
    for party in ("owner", "recipient"):
        terms[party] = terms[party]["name"]
    return {
        "agreement_id": agreement.agreement_id,
        "state": _STATES.get(status.state, "unknown"),
        "digest": status.agreement_digest.hex(),
        "signed_by_recipient": bool(status.signed_agreement.recipient_signature),
        "terms": terms,
    }


def _print_status(status: agreement_pb2.AgreementStatus) -> None:
    data = _status_json(status)
    terms = data["terms"]
    out.print(
        f"agreement [bold]{data['agreement_id']}[/] ({data['state']}): "
        f"{terms['owner']} → {terms['recipient']}, {terms['output_mode']} of "
        f"{', '.join(terms['segment_ids'])} for {terms['purpose']}",
        highlight=False,
    )
    out.print(f"  digest to review and sign: {data['digest']}", highlight=False)


@agreement_app.command("propose")
def propose(
    partner: Annotated[str, typer.Option("--partner", help="The recipient node's name.")],
    segment: Annotated[list[str], typer.Option("--segment", help="Owner segment(s) covered.")],
    purpose: Annotated[str, typer.Option("--purpose", help="A purpose from the taxonomy.")],
    mode: Annotated[OutputMode, typer.Option("--mode", help="What the recipient learns.")],
    k: Annotated[int, typer.Option("--k", min=1, help="Minimum audience size.")] = 50,
    max_set_size: Annotated[int, typer.Option(min=1, help="Max tokens per side and flow.")] = (
        2_000_000
    ),
    epoch_cap: Annotated[
        int, typer.Option(min=1, help="Max identifiers blinded per epoch per side.")
    ] = 10_000_000,
    epoch_days: Annotated[int, typer.Option(min=1, max=30, help="Epoch length.")] = 7,
    retention_days: Annotated[int, typer.Option(min=1, help="Recipient keeps results.")] = 30,
    valid_days: Annotated[int, typer.Option(min=1, help="Validity from now.")] = 365,
    rate_limit: Annotated[int, typer.Option(min=1, help="Flows per UTC day.")] = 24,
    released_field: Annotated[
        list[str] | None, typer.Option("--field", help="Released field (release mode).")
    ] = None,
    epsilon_total: Annotated[str | None, typer.Option(help="Overlap: lifetime epsilon.")] = None,
    epsilon_per_count: Annotated[str | None, typer.Option(help="Overlap: epsilon per count.")] = (
        None
    ),
    node: NodeOption = DEFAULT_NODE,
    as_json: JsonOption = False,
) -> None:
    """Propose an agreement as owner: this node signs it and submits it to the broker."""
    terms = Terms(
        partner=partner,
        segments=tuple(segment),
        purpose=purpose,
        mode=mode,
        k=k,
        max_set_size=max_set_size,
        epoch_cap=epoch_cap,
        epoch_days=epoch_days,
        retention_days=retention_days,
        valid_days=valid_days,
        rate_limit=rate_limit,
        released_fields=tuple(released_field or ()),
        epsilon_total=epsilon_total,
        epsilon_per_count=epsilon_per_count,
    )
    response = _call(
        _stub(node).ProposeAgreement, node_pb2.ProposeAgreementRequest(agreement=terms.to_proto())
    )
    if as_json:
        print_json(_status_json(response.status))
    else:
        _print_status(response.status)


@agreement_app.command("sign")
def sign(
    agreement_id: Annotated[str, typer.Argument(help="The proposed agreement's id.")],
    digest: Annotated[
        str, typer.Option("--digest", help="SHA-256 (hex) of the terms you reviewed.")
    ],
    node: NodeOption = DEFAULT_NODE,
    as_json: JsonOption = False,
) -> None:
    """Countersign a proposed agreement as recipient (only the reviewed bytes)."""
    try:
        reviewed = bytes.fromhex(digest)
    except ValueError:
        fail("--digest is the agreement's SHA-256 in hex", code=2)
    response = _call(
        _stub(node).SignAgreement,
        node_pb2.SignAgreementRequest(agreement_id=agreement_id, agreement_digest=reviewed),
    )
    if as_json:
        print_json(_status_json(response.status))
    else:
        _print_status(response.status)


@agreement_app.command("list")
def list_agreements(node: NodeOption = DEFAULT_NODE, as_json: JsonOption = False) -> None:
    """Agreements this node is party to (its own signed copies)."""
    response = _call(_stub(node).ListAgreements, node_pb2.ListAgreementsRequest())
    statuses = [_status_json(s) for s in response.agreements]
    if as_json:
        print_json({"agreements": statuses})
        return
    table = Table(title="agreements")
    for column in ("id", "state", "owner", "recipient", "mode", "purpose", "segments"):
        table.add_column(column)
    for s in statuses:
        t = s["terms"]
        table.add_row(s["agreement_id"], s["state"], t["owner"], t["recipient"],
                      t["output_mode"], t["purpose"], ",".join(t["segment_ids"]))  # fmt: skip
    out.print(table)


@agreement_app.command("show")
def show(
    agreement_id: Annotated[str, typer.Argument(help="The agreement's id.")],
    node: NodeOption = DEFAULT_NODE,
) -> None:
    """Every term of one agreement, as JSON."""
    response = _call(_stub(node).ListAgreements, node_pb2.ListAgreementsRequest())
    for status in response.agreements:
        data = _status_json(status)
        if data["agreement_id"] == agreement_id:
            typer.echo(json.dumps(data, indent=2, sort_keys=True))
            return
    fail("this node holds no such agreement")


@agreement_app.command("revoke")
def revoke(
    agreement_id: Annotated[str, typer.Argument(help="The agreement's id.")],
    reason: Annotated[
        str, typer.Option("--reason", help="For the audit logs; never customer data.")
    ] = "revoked by the operator",
    node: NodeOption = DEFAULT_NODE,
    as_json: JsonOption = False,
) -> None:
    """End an agreement (either party): no flow runs under it again, and the recipient
    deletes what it received under it."""
    response = _call(
        _stub(node).RevokeAgreement,
        node_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason=reason),
    )
    if as_json:
        print_json(_status_json(response.status))
    else:
        _print_status(response.status)


def _find_agreement(
    stub: node_pb2_grpc.NodeServiceStub, partner: str, segment: str, purpose: str,
    mode: OutputMode | None,
) -> str:  # fmt: skip
    """The one active agreement under which ``partner`` owns ``segment`` for ``purpose``."""
    response = _call(stub.ListAgreements, node_pb2.ListAgreementsRequest())
    found: list[str] = []
    for status in response.agreements:
        data = _status_json(status)
        terms = data["terms"]
        if (
            data["state"] == "active"
            and terms["owner"] == partner
            and (not segment or segment in terms["segment_ids"])
            and (not purpose or terms["purpose"] == purpose)
            and (mode is None or terms["output_mode"] == mode.value)
        ):
            found.append(str(data["agreement_id"]))
    if not found:
        fail(
            f"this node holds no active agreement under which {partner} offers "
            f"{segment or 'a segment'} for {purpose or 'a purpose'}"
            f"{'' if mode is None else f' in {mode.value} mode'}: propose or sign one first"
        )
    if len(found) > 1:
        fail(f"several agreements fit ({', '.join(found)}): name one with --agreement")
    return found[0]


@audience_app.command("request")
def request(
    partner: Annotated[
        str, typer.Option("--partner", help="The partner that owns the segment.")
    ] = "",
    segment: Annotated[str, typer.Option("--segment", help="The partner's segment.")] = "",
    purpose: Annotated[str, typer.Option("--purpose", help="The agreement's purpose.")] = "",
    mode: Annotated[
        OutputMode | None, typer.Option("--mode", help="overlap, match or release.")
    ] = None,
    agreement: Annotated[
        str, typer.Option("--agreement", help="The agreement's id (instead of finding it).")
    ] = "",
    own_segment: Annotated[
        str, typer.Option("--own-segment", help="Restrict this node's own set to a segment.")
    ] = "",
    wait: Annotated[bool, typer.Option(help="Wait until the flow ends.")] = True,
    node: NodeOption = DEFAULT_NODE,
    as_json: JsonOption = False,
) -> None:
    """Ask a partner for an audience under an agreement (this node is the recipient).

    Name the agreement with --agreement, or let the node find the one active agreement
    that fits --partner, --segment, --purpose and --mode.
    """
    stub = _stub(node)
    if not agreement:
        if not partner:
            fail("name the partner (--partner) or the agreement (--agreement)", code=2)
        agreement = _find_agreement(stub, partner, segment, purpose, mode)
    response = _call(
        stub.RequestAudience,
        node_pb2.RequestAudienceRequest(
            agreement_id=agreement,
            owner_segment_id=segment,
            recipient_segment_id=own_segment,
            wait=wait,
        ),
        timeout=7200,
    )
    flow = response.flow
    result = {
        "flow_id": flow.flow_id,
        "agreement_id": flow.agreement_id,
        "state": _FLOW_STATES.get(flow.state, "unknown"),
        "failure_reason": _REASONS.get(flow.failure_reason) if flow.failure_reason else None,
        "failure_detail": flow.failure_detail or None,
        "owner_set_size": flow.owner_set_size,
        "recipient_set_size": flow.recipient_set_size,
    }
    if response.HasField("summary"):
        result["summary"] = MessageToDict(
            response.summary,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
    if as_json:
        print_json(result)
    elif result["state"] == "succeeded" and "summary" in result:
        out.print(f"flow {flow.flow_id} succeeded: {_describe(response.summary, flow)}",
                  highlight=False)  # fmt: skip
    else:
        out.print(f"flow {flow.flow_id}: {result['state']}", highlight=False)
        if result["failure_reason"]:
            out.print(f"  {result['failure_reason']}: {result['failure_detail']}", highlight=False)
    if result["state"] == "failed":
        raise typer.Exit(1)


def _describe(summary: node_pb2.AudienceSummary, flow: flow_pb2.Flow) -> str:
    kind = summary.WhichOneof("result")
    if kind == "overlap":
        if summary.overlap.suppressed:
            return "the overlap is below the agreement's minimum audience (suppressed)"
        return (
            f"about {summary.overlap.noised_count} shared consented customers "
            "(noised by the partner; exact counts are never released)"
        )
    if kind == "release":
        return (
            f"{summary.release.records} records received, to be deleted at "
            f"{summary.release.delete_after.ToDatetime().date()}"
        )
    return (
        f"{summary.match.matched_customers} of this node's customers are in the partner's "
        f"segment (padded sets: {flow.owner_set_size} and {flow.recipient_set_size} tokens)"
    )
