"""Identifier normalization: known answers, laws for all inputs, phonenumbers parity."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from node.errors import InvalidEmail, InvalidIdentifier, InvalidPhone
from node.normalize import (
    _PARSE_ERRORS,
    IdentifierKind,
    _is_valid_number,
    _parse_plain,
    normalize_email,
    normalize_identifier,
    normalize_phone,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "normalize.json").read_text("utf-8")
)


def case_id(case: dict[str, Any]) -> str:
    return str(case["desc"])


@pytest.mark.parametrize("case", VECTORS["email"], ids=case_id)
def test_email_vectors(case: dict[str, Any]) -> None:
    if "normalized" in case:
        assert normalize_email(case["input"]) == case["normalized"]
    else:
        with pytest.raises(InvalidEmail, match=case["error"]):
            normalize_email(case["input"])


@pytest.mark.parametrize("case", VECTORS["phone"], ids=case_id)
def test_phone_vectors(case: dict[str, Any]) -> None:
    if "normalized" in case:
        assert normalize_phone(case["input"], case["region"]) == case["normalized"]
    else:
        with pytest.raises(InvalidPhone, match=case["error"]):
            normalize_phone(case["input"], case["region"])


def test_vectors_cover_what_the_issue_names() -> None:
    inputs = " ".join(c["input"] for c in VECTORS["email"] + VECTORS["phone"])
    for needle in ("straße.de", "Example.COM", "  ", "07911 123456", "+44", "0044"):
        assert needle in inputs
    assert sum("error" in c for c in VECTORS["email"]) >= 10
    assert sum("error" in c for c in VECTORS["phone"]) >= 5


@pytest.mark.parametrize("case", VECTORS["email"] + VECTORS["phone"], ids=case_id)
def test_error_messages_never_echo_the_value(case: dict[str, Any]) -> None:
    if "error" not in case or len(case["input"].strip()) < 4:
        return
    try:
        normalize_identifier(
            IdentifierKind.PHONE if "region" in case else IdentifierKind.EMAIL,
            case["input"],
            default_region=case.get("region", "GB"),
        )
    except InvalidIdentifier as exc:
        message = str(exc)
        assert case["input"].strip() not in message
        for fragment in re.findall(r"[A-Za-z0-9]{5,}", case["input"]):
            assert fragment not in message, (fragment, message)


# --- laws ----------------------------------------------------------------------------------

LOCAL_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~" + "éüßøæ"
local_parts = st.text(LOCAL_CHARS, min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 64)
labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=12)
idn_labels = st.sampled_from(["straße", "bücher", "münchen", "café", "ελληνικά", "例え"])
domains = st.builds(
    lambda parts, tld: ".".join([*parts, tld]),
    st.lists(st.one_of(labels, idn_labels), min_size=1, max_size=3),
    st.sampled_from(["com", "de", "example", "co.uk", "fr"]),
)
emails = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)
whitespace = st.text(" \t\n\r\u00a0", max_size=3)


@given(email=emails)
def test_email_normalization_is_idempotent(email: str) -> None:
    once = normalize_email(email)
    assert normalize_email(once) == once


@given(email=emails, before=whitespace, after=whitespace, upper=st.booleans())
def test_case_and_surrounding_whitespace_do_not_matter(
    email: str, before: str, after: str, upper: bool
) -> None:
    variant = email.upper() if upper else email.title()
    # Upper-casing can change the length of non-ASCII letters (ß -> SS): only compare when
    # lower-casing the variant gives the original back.
    assume(variant.lower() == email.lower())
    assert normalize_email(before + variant + after) == normalize_email(email)


@given(email=emails)
def test_normalized_email_is_lowercase_ascii_domain(email: str) -> None:
    local, domain = normalize_email(email).split("@")
    assert domain.isascii() and domain == domain.lower()
    assert local == local.lower()


# Every valid GB mobile number, in every format a CRM writes, becomes the same E.164 string.
gb_mobiles = st.integers(min_value=7_400_000_000, max_value=7_999_999_999).map(str)


@given(national=gb_mobiles, region=st.sampled_from(["GB", "FR", "US", "DE"]))
def test_phone_formats_normalize_alike(national: str, region: str) -> None:
    number = phonenumbers.parse("+44" + national, None)
    assume(phonenumbers.is_valid_number(number))
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    spellings = [
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.RFC3966),
        e164,
        "00" + e164[1:] if region != "US" else "011" + e164[1:],
    ]
    for spelling in spellings:
        assert normalize_phone(spelling, region) == e164
    national_spelling = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    assert normalize_phone(national_spelling, "GB") == e164


@given(e164=st.sampled_from([c["normalized"] for c in VECTORS["phone"] if "normalized" in c]))
def test_phone_normalization_is_idempotent(e164: str) -> None:
    assert normalize_phone(e164, "GB") == e164


@settings(max_examples=1500)
@given(
    region=st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)),
    digits=st.text("0123456789", min_size=3, max_size=17),
    international=st.booleans(),
)
def test_fast_validity_equals_phonenumbers(region: str, digits: str, international: bool) -> None:
    raw = ("+" + digits) if international else digits
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return
    valid = phonenumbers.is_valid_number(number)
    assert fast_valid(number) == valid
    if valid:  # and normalize_phone writes what phonenumbers' E.164 formatting would
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        assert normalize_phone(raw, region) == e164


def fast_valid(number: phonenumbers.PhoneNumber) -> bool:
    return _is_valid_number(number, phonenumbers.national_significant_number(number))


@pytest.mark.parametrize("region", sorted(phonenumbers.SUPPORTED_REGIONS))
def test_fast_validity_on_each_regions_example_numbers(region: str) -> None:
    # Example numbers of every type are valid; each digit changed near the end mostly is not.
    for kind in (
        phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.TOLL_FREE,
        phonenumbers.PhoneNumberType.VOIP,
    ):
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            continue
        assert fast_valid(example) == phonenumbers.is_valid_number(example)
        national = phonenumbers.national_significant_number(example)
        for cut in (1, 2):
            shorter = phonenumbers.parse(f"+{example.country_code}{national[:-cut]}", None)
            assert fast_valid(shorter) == phonenumbers.is_valid_number(shorter)


def reference_phone(raw: str, region: str) -> str:
    """normalize_phone's rules through phonenumbers.parse alone: the behaviour the plain
    path must reproduce."""
    try:
        number = phonenumbers.parse(raw.strip(), region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(_PARSE_ERRORS.get(exc.error_type, "phone cannot be parsed")) from None
    if number.extension:
        raise InvalidPhone("phone has an extension")
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("phone is not a valid number for its country")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def phone_outcome(read: Any, raw: str, region: str) -> str:
    try:
        return str(read(raw, region))
    except InvalidPhone as exc:
        return f"refused: {exc}"


@st.composite
def plainly_written_phones(draw: st.DrawFn) -> tuple[str, str]:
    """A region and a number as people write it there or abroad: a prefix (none, +, the
    region's own country code, 00, 011, a trunk 0 or (0)), digits, and separators."""
    region = draw(st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)))
    code = str(phonenumbers.country_code_for_region(region))
    other = str(
        phonenumbers.country_code_for_region(draw(st.sampled_from(["GB", "US", "IT", "AR", "DE"])))
    )
    prefix = draw(
        st.sampled_from(
            ["", "+", f"+{code} ", f"+{code} (0)", f"+{other} ", code, "00", "011", "0", "(0", "+0"]
        )
    )
    example = phonenumbers.example_number(region)
    national = str(example.national_number) if example is not None else "2015550123"
    digits = draw(st.just(national) | st.text("0123456789", min_size=1, max_size=18))
    if draw(st.booleans()):  # change a digit or two of a real number
        at = draw(st.integers(0, len(digits) - 1))
        digits = digits[:at] + draw(st.sampled_from("0123456789")) + digits[at + 1 :]
    pieces, rest = [], digits
    while rest:
        size = draw(st.integers(1, 4))
        pieces.append(rest[:size])
        rest = rest[size:]
    separator = draw(st.sampled_from([" ", "-", ".", "", ") "]))
    return prefix + separator.join(pieces), region


@settings(max_examples=3000)
@given(case=plainly_written_phones())
@example(case=("1-2", "GB"))
@example(case=("07911 123456", "gb"))
@example(case=("+44 (0) 7911 123456", "GB"))
@example(case=("0044 7911 123456", "GB"))
@example(case=("447911123456", "GB"))
@example(case=("06 12 34 56 78", "IT"))
def test_the_plain_path_reads_phones_as_phonenumbers_parse_does(case: tuple[str, str]) -> None:
    raw, region = case
    assert phone_outcome(normalize_phone, raw, region) == phone_outcome(
        reference_phone, raw, region
    )
    plain = _parse_plain(raw, region)
    if plain is not None:
        parsed = phonenumbers.parse(raw, region)
        assert (parsed.country_code, phonenumbers.national_significant_number(parsed)) == plain


def test_the_plain_path_is_taken_for_the_usual_spellings() -> None:
    for raw in ("07911 123456", "(07911) 123-456", "+44 7911 123456", "+44 (0)7911 123456"):
        assert _parse_plain(raw, "GB") == (44, "7911123456")
    for raw in ("0044 7911 123456", "447911123456", "7911 123456 ext. 12", "+44 7911 123456#"):
        assert _parse_plain(raw, "GB") is None
