"""consent.agreements: the canonical encoding, every rule, signatures and lifecycle."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from consent.agreements import (
    Agreement,
    AgreementState,
    OutputMode,
    PartyKeys,
    SignedAgreement,
)
from consent.errors import AgreementInactive, InvalidAgreement, UnknownPurpose
from kernel.crypto import SigningKey, sha256

OWNER_KEY = SigningKey.from_seed(bytes(range(100, 132)))
RECIPIENT_KEY = SigningKey.from_seed(bytes(range(200, 232)))
START = datetime(2026, 11, 1, tzinfo=UTC)
VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "agreement.json"


def agreement(**changes: Any) -> Agreement:
    base = Agreement(
        agreement_id="7d1f1b0e-4a2c-4c8e-9a61-3f0b2d6e9c11",
        owner=PartyKeys("solent-boats", OWNER_KEY.public_key, bytes(range(32))),
        recipient=PartyKeys("bluewater-travel", RECIPIENT_KEY.public_key, bytes(range(1, 33))),
        segment_ids=("sailing",),
        purpose="marketing.cross_sell",
        output_mode=OutputMode.MATCH,
        min_audience_k=50,
        max_set_size=2_000_000,
        epoch_identifier_cap=10_000_000,
        epoch_length_seconds=7 * 86400,
        retention_days=30,
        valid_from=START,
        valid_until=START + timedelta(days=365),
        rate_limit_per_day=24,
    )
    return dataclasses.replace(base, **changes)


def test_canonical_encoding_known_answer() -> None:
    vector = json.loads(VECTOR.read_text(encoding="utf-8"))
    encoded = agreement().canonical()
    assert encoded.decode("utf-8") == vector["canonical"]
    assert sha256(encoded).hex() == vector["sha256"]
    assert encoded == rfc8785.dumps(json.loads(encoded))  # really RFC 8785


def test_round_trip_and_non_canonical_bytes_are_refused() -> None:
    terms = agreement()
    assert Agreement.from_canonical(terms.canonical()) == terms
    spaced = json.dumps(json.loads(terms.canonical()), indent=1).encode()
    with pytest.raises(InvalidAgreement, match="canonical"):
        Agreement.from_canonical(spaced)
    with pytest.raises(InvalidAgreement):
        Agreement.from_canonical(b"not json")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"agreement_id": "not-a-uuid"}, "UUID"),
        ({"agreement_id": "7D1F1B0E-4A2C-4C8E-9A61-3F0B2D6E9C11"}, "canonical"),
        ({"segment_ids": ()}, "segment"),
        ({"segment_ids": ("Bad Slug",)}, "segment"),
        ({"min_audience_k": 0}, "min_audience_k"),
        ({"max_set_size": 10}, "max_set_size"),
        ({"epoch_identifier_cap": 0}, "epoch_identifier_cap"),
        ({"epoch_length_seconds": 31 * 86400}, "30 days"),
        ({"epoch_length_seconds": 60}, "one hour"),
        ({"retention_days": 0}, "retention"),
        ({"rate_limit_per_day": 0}, "rate_limit"),
        ({"valid_until": START}, "valid_until"),
        ({"identifier_kinds": ("fax",)}, "identifier_kinds"),
        ({"released_fields": ("email",)}, "only release"),
        ({"output_mode": OutputMode.RELEASE}, "names the fields"),
        ({"output_mode": OutputMode.RELEASE, "released_fields": ("salary",)}, "salary"),
        ({"output_mode": OutputMode.OVERLAP}, "decimal"),
        ({"output_mode": OutputMode.OVERLAP, "epsilon_total": "1", "epsilon_per_count": "2"},
         "exceed"),
        ({"epsilon_total": "1", "epsilon_per_count": "0.5"}, "only overlap"),
    ],
)  # fmt: skip
def test_each_rule_is_enforced(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidAgreement, match=message):
        agreement(**changes).check()


def test_unknown_purpose_and_same_party_are_refused() -> None:
    with pytest.raises(UnknownPurpose):
        agreement(purpose="marketing.spam").check()
    owner = agreement().owner
    with pytest.raises(InvalidAgreement, match="different"):
        agreement(recipient=owner).check()


def test_propose_countersign_and_verify() -> None:
    proposed = SignedAgreement.propose(agreement(), OWNER_KEY)
    assert proposed.verify_owner() == agreement()
    with pytest.raises(AgreementInactive, match="countersigned"):
        proposed.verify()
    with pytest.raises(InvalidAgreement, match="reviewed"):
        proposed.countersign(RECIPIENT_KEY, digest=sha256(b"other terms"))
    with pytest.raises(InvalidAgreement, match="recipient signs"):
        proposed.countersign(OWNER_KEY, digest=agreement().digest)
    signed = proposed.countersign(RECIPIENT_KEY, digest=agreement().digest)
    assert signed.verify() == agreement()
    with pytest.raises(InvalidAgreement, match="owner signs"):
        SignedAgreement.propose(agreement(), RECIPIENT_KEY)


def test_tampered_terms_fail_both_signatures() -> None:
    signed = SignedAgreement.propose(agreement(), OWNER_KEY).countersign(
        RECIPIENT_KEY, digest=agreement().digest
    )
    forged = agreement(min_audience_k=1).canonical()
    with pytest.raises(InvalidAgreement, match="owner's signature"):
        SignedAgreement(forged, signed.owner_signature, signed.recipient_signature).verify()
    swapped = SignedAgreement(signed.canonical, signed.owner_signature, signed.owner_signature)
    with pytest.raises(InvalidAgreement, match="recipient's signature"):
        swapped.verify()


def test_lifecycle_against_an_explicit_now() -> None:
    signed = SignedAgreement.propose(agreement(), OWNER_KEY).countersign(
        RECIPIENT_KEY, digest=agreement().digest
    )
    inside = START + timedelta(days=10)
    assert signed.check_active(now=inside) == agreement()
    with pytest.raises(AgreementInactive, match="valid only from"):
        signed.check_active(now=START - timedelta(seconds=1))
    with pytest.raises(AgreementInactive, match="expired"):
        signed.check_active(now=START + timedelta(days=365))
    with pytest.raises(AgreementInactive, match="revoked"):
        signed.check_active(now=inside, revoked=True)
    assert signed.state_at(now=inside) is AgreementState.ACTIVE
    assert signed.state_at(now=inside, revoked=True) is AgreementState.REVOKED
    assert signed.state_at(now=START + timedelta(days=400)) is AgreementState.EXPIRED
    proposed = SignedAgreement(signed.canonical, signed.owner_signature)
    assert proposed.state_at(now=inside) is AgreementState.PROPOSED


def test_epochs_follow_the_validity_window() -> None:
    terms = agreement()
    assert terms.epoch_at(START) == 0
    assert terms.epoch_at(START + timedelta(days=6, hours=23)) == 0
    assert terms.epoch_at(START + timedelta(days=7)) == 1
    assert terms.epoch_at(START - timedelta(days=1)) == 0
    assert terms.party("solent-boats") == "owner"
    assert terms.party("bluewater-travel") == "recipient"
    with pytest.raises(InvalidAgreement):
        terms.party("someone-else")
