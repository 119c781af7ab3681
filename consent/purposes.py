"""The purpose taxonomy: a fixed, versioned list of what consent can be given for.

Purposes are a controlled vocabulary (GDPR 6(1)(a) "specific purposes"; TCF purpose
ids; DPV purposes). Each has a version: when its description, data categories or
recipients change materially, the version goes up, and consents given under an older
version are no longer valid for processing (status ``invalidated``) until renewed.
``TAXONOMY_VERSION`` names the list as a whole, for records of processing (GDPR 30).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from consent.errors import UnknownPurpose

__all__ = ["PURPOSES", "TAXONOMY_VERSION", "Purpose", "purpose"]

TAXONOMY_VERSION: Final = "2026.1"


@dataclass(frozen=True, slots=True)
class Purpose:
    id: str
    version: int
    title: str
    description: str
    # Fides data categories the purpose may touch (records of processing, GDPR 30).
    data_categories: tuple[str, ...]
    legal_basis: str = "consent"  # GDPR 6(1)(a)


_ALL = (
    Purpose(
        id="marketing.cross_sell",
        version=1,
        title="Offers from partner companies",
        description=(
            "A partner company named in the consent (or any partner under a signed "
            "agreement, if the customer chose so) may send the customer offers of its "
            "own products, through the channels the customer accepts."
        ),
        data_categories=("user.contact.email", "user.contact.phone_number", "user.name"),
    ),
    Purpose(
        id="marketing.direct",
        version=1,
        title="Our own offers",
        description="The company itself may send the customer offers of its own products.",
        data_categories=("user.contact.email", "user.contact.phone_number", "user.name"),
    ),
    Purpose(
        id="analytics.overlap",
        version=1,
        title="Counting shared customers",
        description=(
            "The customer may be counted, never named, when the company and a partner "
            "measure how many customers they share; counts are noised and small ones "
            "suppressed."
        ),
        data_categories=("user.contact.email", "user.contact.phone_number"),
    ),
    Purpose(
        id="service.support",
        version=1,
        title="Service and support",
        description="Contact about the customer's own orders, bookings and support requests.",
        data_categories=("user.contact.email", "user.contact.phone_number", "user.name"),
    ),
)

PURPOSES: Final[Mapping[str, Purpose]] = MappingProxyType({p.id: p for p in _ALL})


def purpose(purpose_id: str) -> Purpose:
    """The purpose named ``purpose_id``; ``UnknownPurpose`` lists the known ones."""
    try:
        return PURPOSES[purpose_id]
    except KeyError:
        raise UnknownPurpose(
            f"unknown purpose {purpose_id!r}; the taxonomy ({TAXONOMY_VERSION}) has "
            + ", ".join(sorted(PURPOSES))
        ) from None
