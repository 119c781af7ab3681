"""Data-sharing agreements: terms, their canonical encoding, signatures, and the checks
both nodes and the broker apply. Plain Python over the kernel's recipes.

The canonical encoding is RFC 8785 JSON of the terms (``Agreement.canonical``); it is
what both parties sign and what every party decodes — a structured copy that travels
beside it is for display only. Verification decodes, re-encodes and requires the same
bytes, so a non-canonical spelling of the same terms is refused too.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Final

from consent.errors import AgreementInactive, InvalidAgreement
from consent.purposes import purpose as lookup_purpose
from consent.records import format_time, parse_time
from kernel.crypto import (
    KEY_SIZE,
    SigningKey,
    canonical_json,
    sha256,
    verify_signature,
)
from kernel.errors import SignatureInvalid

__all__ = [
    "AGREEMENT_SCHEMA",
    "MAX_EPOCH_SECONDS",
    "Agreement",
    "AgreementState",
    "OutputMode",
    "PartyKeys",
    "SignedAgreement",
]

AGREEMENT_SCHEMA: Final = "accord.agreement/1"
MAX_EPOCH_SECONDS: Final = 30 * 24 * 3600
RELEASABLE_FIELDS: Final = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "country",
    "age_band",
    "region",
    "interests",
    "loyalty_tier",
)
IDENTIFIER_KINDS: Final = ("email", "phone")
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_SEGMENT = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}\Z")


class OutputMode(StrEnum):
    OVERLAP = "overlap"
    MATCH = "match"
    RELEASE = "release"


class AgreementState(StrEnum):
    PROPOSED = "proposed"
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class PartyKeys:
    """A node as an agreement names it: name, Ed25519 and HPKE public keys."""

    name: str
    signing_public_key: bytes
    hpke_public_key: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "signing_public_key": self.signing_public_key.hex(),
            "hpke_public_key": self.hpke_public_key.hex(),
        }

    @classmethod
    def from_json(cls, data: Any) -> PartyKeys:
        try:
            keys = cls(
                str(data["name"]),
                bytes.fromhex(data["signing_public_key"]),
                bytes.fromhex(data["hpke_public_key"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidAgreement("a party's keys are incomplete or malformed") from exc
        keys.check()
        return keys

    def check(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidAgreement("a party is named by its node name, like solent-boats")
        if len(self.signing_public_key) != KEY_SIZE or len(self.hpke_public_key) != KEY_SIZE:
            raise InvalidAgreement(f"{self.name}: public keys are {KEY_SIZE} bytes")


@dataclass(frozen=True, slots=True)
class Agreement:
    """The terms of one agreement (DESIGN.md "Agreements and flows")."""

    agreement_id: str
    owner: PartyKeys
    recipient: PartyKeys
    segment_ids: tuple[str, ...]
    purpose: str
    output_mode: OutputMode
    min_audience_k: int
    max_set_size: int
    epoch_identifier_cap: int
    epoch_length_seconds: int
    retention_days: int
    valid_from: datetime
    valid_until: datetime
    rate_limit_per_day: int
    released_fields: tuple[str, ...] = ()
    epsilon_total: str | None = None
    epsilon_per_count: str | None = None
    identifier_kinds: tuple[str, ...] = IDENTIFIER_KINDS

    # --- encoding ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": AGREEMENT_SCHEMA,
            "agreement_id": self.agreement_id,
            "owner": self.owner.to_json(),
            "recipient": self.recipient.to_json(),
            "segment_ids": list(self.segment_ids),
            "purpose": self.purpose,
            "output_mode": self.output_mode.value,
            "released_fields": list(self.released_fields),
            "min_audience_k": self.min_audience_k,
            "privacy_budget": None
            if self.epsilon_total is None
            else {"epsilon_total": self.epsilon_total, "epsilon_per_count": self.epsilon_per_count},
            "max_set_size": self.max_set_size,
            "epoch_identifier_cap": self.epoch_identifier_cap,
            "epoch_length_seconds": self.epoch_length_seconds,
            "retention_days": self.retention_days,
            "valid_from": format_time(self.valid_from),
            "valid_until": format_time(self.valid_until),
            "rate_limit_per_day": self.rate_limit_per_day,
            "identifier_kinds": list(self.identifier_kinds),
        }

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding: what an operator reviews and signs."""
        return sha256(self.canonical())

    @classmethod
    def from_canonical(cls, data: bytes) -> Agreement:
        """Decode canonical bytes; refuse anything that is not exactly canonical."""
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidAgreement("the agreement is not JSON") from exc
        agreement = cls.from_json(parsed)
        if agreement.canonical() != data:
            raise InvalidAgreement("the agreement bytes are not its canonical encoding")
        return agreement

    @classmethod
    def from_json(cls, data: Any) -> Agreement:
        if not isinstance(data, dict) or data.get("schema") != AGREEMENT_SCHEMA:
            raise InvalidAgreement(f"not an agreement ({AGREEMENT_SCHEMA})")
        try:
            budget = data.get("privacy_budget")
            agreement = cls(
                agreement_id=str(data["agreement_id"]),
                owner=PartyKeys.from_json(data["owner"]),
                recipient=PartyKeys.from_json(data["recipient"]),
                segment_ids=tuple(str(s) for s in data["segment_ids"]),
                purpose=str(data["purpose"]),
                output_mode=OutputMode(data["output_mode"]),
                released_fields=tuple(str(f) for f in data["released_fields"]),
                min_audience_k=int(data["min_audience_k"]),
                epsilon_total=None if budget is None else str(budget["epsilon_total"]),
                epsilon_per_count=None if budget is None else str(budget["epsilon_per_count"]),
                max_set_size=int(data["max_set_size"]),
                epoch_identifier_cap=int(data["epoch_identifier_cap"]),
                epoch_length_seconds=int(data["epoch_length_seconds"]),
                retention_days=int(data["retention_days"]),
                valid_from=parse_time(data["valid_from"]),
                valid_until=parse_time(data["valid_until"]),
                rate_limit_per_day=int(data["rate_limit_per_day"]),
                identifier_kinds=tuple(str(k) for k in data["identifier_kinds"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidAgreement(f"the agreement is incomplete or malformed ({exc})") from exc
        agreement.check()
        return agreement

    # --- rules ------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``InvalidAgreement`` naming the first term that breaks a rule."""
        try:
            canonical = str(uuid.UUID(self.agreement_id)) == self.agreement_id
        except ValueError:
            canonical = False
        if not canonical:
            raise InvalidAgreement("agreement_id must be a UUID in its canonical form")
        self.owner.check()
        self.recipient.check()
        if self.owner.name == self.recipient.name:
            raise InvalidAgreement("owner and recipient must be different nodes")
        if not self.segment_ids or any(not _SEGMENT.match(s) for s in self.segment_ids):
            raise InvalidAgreement("segment_ids must be one or more segment slugs")
        lookup_purpose(self.purpose)
        if self.min_audience_k < 1:
            raise InvalidAgreement("min_audience_k must be at least 1")
        if self.max_set_size < self.min_audience_k:
            raise InvalidAgreement("max_set_size must be at least min_audience_k")
        if self.epoch_identifier_cap < 1:
            raise InvalidAgreement("epoch_identifier_cap must be at least 1")
        if not 3600 <= self.epoch_length_seconds <= MAX_EPOCH_SECONDS:
            raise InvalidAgreement("the epoch is between one hour and 30 days")
        if self.retention_days < 1:
            raise InvalidAgreement("retention_days must be at least 1")
        if self.rate_limit_per_day < 1:
            raise InvalidAgreement("rate_limit_per_day must be at least 1")
        if self.valid_until <= self.valid_from:
            raise InvalidAgreement("valid_until must be after valid_from")
        if not self.identifier_kinds or set(self.identifier_kinds) - set(IDENTIFIER_KINDS):
            raise InvalidAgreement("identifier_kinds are among email, phone")
        if self.output_mode is OutputMode.RELEASE:
            if not self.released_fields:
                raise InvalidAgreement("a release agreement names the fields it releases")
            unknown = set(self.released_fields) - set(RELEASABLE_FIELDS)
            if unknown:
                raise InvalidAgreement(
                    f"fields that cannot be released: {', '.join(sorted(unknown))}"
                )
        elif self.released_fields:
            raise InvalidAgreement("only release agreements name released fields")
        if self.output_mode is OutputMode.OVERLAP:
            total, per_count = _epsilon(self.epsilon_total), _epsilon(self.epsilon_per_count)
            if per_count > total:
                raise InvalidAgreement("epsilon_per_count cannot exceed epsilon_total")
        elif self.epsilon_total is not None:
            raise InvalidAgreement("only overlap agreements carry a privacy budget")

    def epoch_at(self, moment: datetime) -> int:
        """The blinding epoch a flow at ``moment`` belongs to."""
        elapsed = (moment - self.valid_from).total_seconds()
        return max(0, int(elapsed // self.epoch_length_seconds))

    def delete_after(self, moment: datetime) -> datetime:
        return moment + timedelta(days=self.retention_days)

    def party(self, name: str) -> str:
        """``owner`` or ``recipient`` for a node name; ``InvalidAgreement`` otherwise."""
        if name == self.owner.name:
            return "owner"
        if name == self.recipient.name:
            return "recipient"
        raise InvalidAgreement(f"{name} is not party to agreement {self.agreement_id}")


def _epsilon(value: str | None) -> Decimal:
    try:
        epsilon = Decimal(value or "")
    except InvalidOperation:
        raise InvalidAgreement("privacy budget values are decimal strings like 0.5") from None
    if not epsilon.is_finite() or epsilon <= 0:
        raise InvalidAgreement("privacy budget values must be positive")
    return epsilon


@dataclass(frozen=True, slots=True)
class SignedAgreement:
    """Canonical terms with the owner's and (once countersigned) the recipient's signature."""

    canonical: bytes
    owner_signature: bytes
    recipient_signature: bytes = b""

    @property
    def agreement(self) -> Agreement:
        return Agreement.from_canonical(self.canonical)

    @classmethod
    def propose(cls, agreement: Agreement, owner_key: SigningKey) -> SignedAgreement:
        agreement.check()
        if owner_key.public_key != agreement.owner.signing_public_key:
            raise InvalidAgreement("the owner signs with the key the agreement names")
        return cls(agreement.canonical(), owner_key.sign("agreement", agreement.to_json()))

    def countersign(self, recipient_key: SigningKey, *, digest: bytes) -> SignedAgreement:
        """The recipient's signature, only over the bytes its operator reviewed."""
        agreement = self.verify_owner()
        if digest != agreement.digest:
            raise InvalidAgreement(
                "the agreement is not the one reviewed (its SHA-256 differs): refusing to sign"
            )
        if recipient_key.public_key != agreement.recipient.signing_public_key:
            raise InvalidAgreement("the recipient signs with the key the agreement names")
        return SignedAgreement(
            self.canonical,
            self.owner_signature,
            recipient_key.sign("agreement", agreement.to_json()),
        )

    def verify_owner(self) -> Agreement:
        agreement = self.agreement
        _verify(agreement.owner, agreement, self.owner_signature, "owner")
        return agreement

    def verify(self) -> Agreement:
        """Both signatures; ``AgreementInactive`` if the recipient's is missing or bad."""
        agreement = self.verify_owner()
        if not self.recipient_signature:
            raise AgreementInactive("the agreement is not countersigned by the recipient yet")
        _verify(agreement.recipient, agreement, self.recipient_signature, "recipient")
        return agreement

    def check_active(self, *, now: datetime, revoked: bool = False) -> Agreement:
        """The terms, if a flow may run under them at ``now``; else ``AgreementInactive``."""
        agreement = self.verify()
        if revoked:
            raise AgreementInactive("the agreement was revoked")
        if now < agreement.valid_from:
            raise AgreementInactive(
                f"the agreement is valid only from {format_time(agreement.valid_from)}"
            )
        if now >= agreement.valid_until:
            raise AgreementInactive(
                f"the agreement expired at {format_time(agreement.valid_until)}"
            )
        return agreement

    def state_at(self, *, now: datetime, revoked: bool = False) -> AgreementState:
        if revoked:
            return AgreementState.REVOKED
        agreement = self.agreement
        if now >= agreement.valid_until:
            return AgreementState.EXPIRED
        if not self.recipient_signature:
            return AgreementState.PROPOSED
        return AgreementState.ACTIVE


def _verify(party: PartyKeys, agreement: Agreement, signature: bytes, role: str) -> None:
    try:
        verify_signature(party.signing_public_key, "agreement", agreement.to_json(), signature)
    except SignatureInvalid as exc:
        raise InvalidAgreement(
            f"the {role}'s signature does not verify: the agreement was tampered with "
            "or signed with another key"
        ) from exc
