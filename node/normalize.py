"""Identifier normalization: two nodes must turn the same person into the same bytes.

Plain Python, no database, no transport. The rules are in docs/normalization.md and pinned
by the known-answer vectors in tests/vectors/normalize.json; change neither without the
other, because a node that normalizes differently silently stops matching its partners.

E-mail: trim surrounding whitespace, NFC, exactly one ``@``, a dot-atom local part
(RFC 5322 ``atext`` plus non-ASCII characters as RFC 6531 allows) lower-cased, and a domain
mapped and checked by UTS-46 (the ``idna`` package, non-transitional, STD3 rules) and
written as its A-label (``straße.de`` → ``xn--strae-oqa.de``). No provider-specific
rewriting (dots and ``+tags`` in Gmail addresses stay): it would merge addresses that other
providers treat as different people.

Phone: phonenumbers parses the number with the node's (or the row's) default region for
numbers written without a country code; only valid numbers without an extension are
accepted, written in E.164 (``+447911123456``).

Error messages say which rule failed and never echo the value.
"""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum
from functools import cache, lru_cache
from typing import Any, Final

import idna
import phonenumbers
from phonenumbers import phonenumberutil as _phonenumberutil

from node.errors import InvalidEmail, InvalidPhone

__all__ = ["IdentifierKind", "normalize_email", "normalize_identifier", "normalize_phone"]

MAX_EMAIL_OCTETS: Final = 254  # RFC 5321 path limit (256) minus the angle brackets
MAX_LOCAL_OCTETS: Final = 64  # RFC 5321 §4.5.3.1.1
MAX_PHONE_CHARS: Final = 64
# An ASCII character outside RFC 5322 atext and the dot of a dot-atom. Non-ASCII characters
# are allowed (RFC 6531); control characters are refused before this is consulted.
_LOCAL_PART_FORBIDDEN: Final = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.\x80-\U0010ffff]")


class IdentifierKind(StrEnum):
    """The kinds of identifier a node matches on; the value is part of hash-to-curve input."""

    EMAIL = "email"
    PHONE = "phone"


def normalize_email(raw: str) -> str:
    """The normalized form of an e-mail address, or ``InvalidEmail`` naming the broken rule."""
    text = unicodedata.normalize("NFC", raw.strip())
    if not text:
        raise InvalidEmail("e-mail is empty")
    # isprintable() is False for control, format and unassigned characters and for every
    # space but U+0020, which the second test catches.
    if not text.isprintable() or " " in text:
        raise InvalidEmail("e-mail contains spaces or control characters")
    if text.count("@") != 1:
        raise InvalidEmail("e-mail must contain exactly one @")
    local, domain = text.split("@")
    local = _normalize_local_part(local)
    address = f"{local}@{_normalize_domain(domain)}"
    if len(address.encode("utf-8")) > MAX_EMAIL_OCTETS:
        raise InvalidEmail(f"e-mail is longer than {MAX_EMAIL_OCTETS} bytes")
    return address


def _normalize_local_part(local: str) -> str:
    if not local:
        raise InvalidEmail("e-mail has nothing before the @")
    if len(local.encode("utf-8")) > MAX_LOCAL_OCTETS:
        raise InvalidEmail(f"e-mail local part is longer than {MAX_LOCAL_OCTETS} bytes")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidEmail("e-mail local part has a leading, trailing or double dot")
    if _LOCAL_PART_FORBIDDEN.search(local):
        raise InvalidEmail(
            "e-mail local part has a character outside RFC 5322 atext "
            "(quoted local parts are not supported)"
        )
    return local.lower()


@lru_cache(maxsize=1 << 16)
def _normalize_domain(domain: str) -> str:
    # Most customers share a few hundred domains: UTS-46 runs once per distinct spelling.
    if not domain:
        raise InvalidEmail("e-mail has no domain after the @")
    if domain.startswith("["):
        raise InvalidEmail("e-mail domain is an address literal, not a domain name")
    if domain.endswith("."):
        domain = domain[:-1]  # the fully qualified spelling names the same domain
    try:
        ascii_domain = idna.encode(domain, uts46=True, std3_rules=True, transitional=False)
    except idna.IDNAError as exc:
        # idna's messages quote the domain; keep only the rule.
        raise InvalidEmail(f"e-mail domain fails UTS-46 ({_idna_rule(exc)})") from None
    result = ascii_domain.decode("ascii")
    labels = result.split(".")
    if len(labels) < 2:
        raise InvalidEmail("e-mail domain must have at least two labels (name.tld)")
    if labels[-1].isdigit():
        raise InvalidEmail("e-mail domain must be a name, not an IP address")
    return result


def _idna_rule(exc: idna.IDNAError) -> str:
    name = type(exc).__name__
    if name == "InvalidCodepoint":
        return "a character is not allowed in domain names"
    message = str(exc)
    for rule in (
        "Empty Label",
        "Label too long",
        "Domain too long",
        "Label must not start or end with a hyphen",
        "Label has disallowed hyphens",
        "Unknown directionality",
        "Invalid A-label",
    ):
        if message.startswith(rule):
            return rule.lower()
    return name


_PARSE_ERRORS: Final = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "phone has no valid country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "phone is not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "phone is too short",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "phone is too short",
    phonenumbers.NumberParseException.TOO_LONG: "phone is too long",
}


def normalize_phone(raw: str, default_region: str) -> str:
    """E.164 form of a phone number, or ``InvalidPhone`` naming the broken rule.

    ``default_region`` (ISO 3166 alpha-2) reads numbers written without a country code.
    """
    text = raw.strip()
    if not text:
        raise InvalidPhone("phone is empty")
    if len(text) > MAX_PHONE_CHARS:
        raise InvalidPhone(f"phone is longer than {MAX_PHONE_CHARS} characters")
    plain = _parse_plain(text, default_region)
    if plain is not None:
        number = phonenumbers.PhoneNumber(country_code=plain[0], national_number=int(plain[1]))
        national = plain[1]
    else:
        try:
            number = phonenumbers.parse(text, default_region)
        except phonenumbers.NumberParseException as exc:
            reason = _PARSE_ERRORS.get(exc.error_type, "phone cannot be parsed")
            raise InvalidPhone(reason) from None
        if number.extension:
            # Dropping it could merge everyone behind one switchboard; keeping it is not E.164.
            raise InvalidPhone("phone has an extension")
        national = phonenumbers.national_significant_number(number)
    if not _is_valid_number(number, national):
        raise InvalidPhone("phone is not a valid number for its country")
    # What format_number(number, E164) returns for every valid number, without its
    # second computation of the national significant number.
    return f"+{number.country_code}{national}"


# Digits written with spaces, hyphens, dots and parentheses, perhaps after a plus: how
# most exports write numbers.
_PLAIN_PHONE: Final = re.compile(r"\+?\(?[0-9][0-9 ().-]*")
_NOT_DIGITS: Final = str.maketrans("", "", " ().-+")
_MIN_NSN: Final = 2  # phonenumbers' bounds on a national significant number
_MAX_NSN: Final = 17
_STRIP_REFUSED: Final = (
    phonenumbers.ValidationResult.TOO_SHORT,
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    phonenumbers.ValidationResult.INVALID_LENGTH,
)


def _parse_plain(text: str, default_region: str) -> tuple[int, str] | None:
    """``phonenumbers.parse`` for a plainly written number: (country code, national
    significant number), or None when the number is not plain or takes a rarer path.

    ``parse`` spends most of its time on what such text cannot hold (letters, extensions,
    RFC 3966 context, other scripts' digits), so this takes the digits and follows
    ``parse``'s own steps, using phonenumbers' helpers for the country code, national
    prefix and length rules. Numbers dialled with an international prefix, with the
    country code but no plus, with leading zeros that stay (Italy) or out of bounds go
    to ``parse``. A property test checks the result against ``parse`` in every region.
    """
    if _PLAIN_PHONE.fullmatch(text) is None:
        return None
    digits = text.translate(_NOT_DIGITS)
    if len(digits) <= _MIN_NSN:
        return None  # parse's viability rule treats two digits with punctuation apart
    if text.startswith("+"):
        country_code, national = _phonenumberutil._extract_country_code(digits)
        if country_code == 0:
            return None
        metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
            country_code, phonenumbers.region_code_for_country_code(country_code)
        )
    else:
        if default_region not in phonenumbers.SUPPORTED_REGIONS:
            return None  # parse refuses it (and is case-sensitive here)
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(default_region, None)
        if metadata is None or metadata.country_code is None:
            return None
        country_code = metadata.country_code
        if _dials_abroad(metadata.international_prefix, digits) or digits.startswith(
            str(country_code)
        ):
            return None
        national = digits
    if metadata is None or len(national) < _MIN_NSN:
        return None
    _, stripped, _ = _phonenumberutil._maybe_strip_national_prefix_carrier_code(national, metadata)
    if _phonenumberutil._test_number_length(stripped, metadata) not in _STRIP_REFUSED:
        national = stripped
    if not _MIN_NSN <= len(national) <= _MAX_NSN or national.startswith("0"):
        return None
    return country_code, national


def _dials_abroad(international_prefix: str | None, digits: str) -> bool:
    return (
        international_prefix is not None
        and _prefix_pattern(international_prefix).match(digits) is not None
    )


@cache
def _prefix_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def example_phone(region: str) -> str | None:
    """A valid number of ``region`` as its people write it (national format), if any."""
    example = phonenumbers.example_number(region)
    if example is None:
        return None
    return str(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL))


def _is_valid_number(number: phonenumbers.PhoneNumber, national: str) -> bool:
    """``phonenumbers.is_valid_number``, several times faster for most numbers.

    ``is_valid_number`` finds the number's region by trying each region of its calling
    code in order (matching the number-type patterns), then validates against that region
    (matching them again), through many small calls that each look up a compiled regex.
    Validity for one region is "the general pattern matches and some number type's length
    and pattern match" (phonenumbers' ``_number_type_helper`` is not UNKNOWN); the main
    region comes first in the search, so when it has no leading-digits rule and that test
    passes, ``is_valid_number`` would say yes too. Otherwise we ask phonenumbers. A
    property test checks the equivalence over numbers of every region.
    """
    checks = _main_region_checks(number.country_code or 0)
    if checks is not None:
        general, types = checks
        if _matches(national, general):
            for number_type in types:
                if _matches(national, number_type):
                    return True
    return bool(phonenumbers.is_valid_number(number))


_DescCheck = tuple[frozenset[int], "re.Pattern[str]"]


def _matches(national: str, check: _DescCheck) -> bool:
    lengths, pattern = check
    return (not lengths or len(national) in lengths) and pattern.fullmatch(national) is not None


@cache
def _main_region_checks(country_code: int) -> tuple[_DescCheck, list[_DescCheck]] | None:
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region, None)
    if metadata is None or metadata.leading_digits is not None:
        return None
    general = _desc_check(metadata.general_desc)
    types = [
        _desc_check(desc)
        # Any matching type will do, so the types most numbers are come first.
        for desc in (
            metadata.mobile,
            metadata.fixed_line,
            metadata.toll_free,
            metadata.voip,
            metadata.premium_rate,
            metadata.shared_cost,
            metadata.personal_number,
            metadata.pager,
            metadata.uan,
            metadata.voicemail,
        )
        if desc is not None and desc.national_number_pattern
    ]
    if general is None:
        return None
    return general, [t for t in types if t is not None]


def _desc_check(desc: Any) -> _DescCheck | None:
    if desc is None or not desc.national_number_pattern:
        return None
    return frozenset(desc.possible_length or ()), re.compile(desc.national_number_pattern)


def normalize_identifier(kind: IdentifierKind, raw: str, *, default_region: str) -> str:
    """Normalize ``raw`` as an identifier of ``kind`` (for data-subject lookups and tools)."""
    if kind is IdentifierKind.EMAIL:
        return normalize_email(raw)
    return normalize_phone(raw, default_region)
