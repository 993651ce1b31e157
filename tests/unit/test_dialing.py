"""The toll-fraud guard: which numbers click-to-call may dial, and that nothing else passes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxbrain.domain.dialing import DialRefused, validate_dial_number

ALLOWED = ("+7",)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+74951234567", "+74951234567"),
        ("+7 (495) 123-45-67", "+74951234567"),
        ("8 495 123 45 67", "+74951234567"),  # national form, default region RU
        ("84951234567", "+74951234567"),
        ("  +79161234567  ", "+79161234567"),
        ("+7.916.123.45.67", "+79161234567"),
    ],
)
def test_given_an_allowed_number_then_its_e164_form(raw: str, expected: str) -> None:
    assert validate_dial_number(raw, "RU", ALLOWED) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("+7495&PJSIP/666", "contains '&'"),
        ("+7495/1234567", "contains '/'"),
        ("+7495,1234567", "contains ','"),
        ("+74951234567@evil", "contains '@'"),
        ("+7495;1234567", "contains ';'"),
        ("+7495\n1234567", "contains '\\n'"),
        ("+7495\t1234567", "contains '\\t'"),
        ("+7495abc4567", "contains 'a'"),
        ("+7495\u0661\u0662\u0663\u0664567", "contains '\u0661'"),  # Arabic-Indic digits
        ("\uff0b74951234567", "contains '\uff0b'"),  # fullwidth plus
        ("+7495\u00a01234567", "contains '\\xa0'"),  # no-break space
        ("+7495 123 45 67 000 00", "too long"),  # 22 characters
        ("1" * 200, "too long"),
        ("", "empty"),
        ("   ", "empty"),
        ("()-.", "empty"),
        ("+7495+1234567", "'+' may only start"),
        ("++74951234567", "'+' may only start"),
        ("+7495123", "not a valid phone number"),
        ("+999123456789", "not a"),  # no such country code
        ("+79001234567890", "not a valid"),  # too long for +7
        ("+78091234567", "premium-rate"),  # Russian 809: premium rate
        ("+12125550100", "not among the destinations"),  # valid but not +7
        ("+4930123456", "not among the destinations"),
    ],
)
def test_given_a_refused_number_then_the_reason_says_why(raw: str, reason: str) -> None:
    with pytest.raises(DialRefused) as refused:
        validate_dial_number(raw, "RU", ALLOWED)
    assert reason in refused.value.reason
    assert str(refused.value) == refused.value.reason


def test_given_no_allowed_prefixes_then_nothing_may_be_dialed() -> None:
    with pytest.raises(DialRefused, match="disabled"):
        validate_dial_number("+74951234567", "RU", ())


def test_given_a_longer_prefix_then_only_numbers_under_it_pass() -> None:
    assert validate_dial_number("+74951234567", "RU", ("+7495",)) == "+74951234567"
    with pytest.raises(DialRefused, match="not among"):
        validate_dial_number("+79161234567", "RU", ("+7495",))


def test_given_no_default_region_then_a_national_form_is_refused() -> None:
    with pytest.raises(DialRefused, match="international form"):
        validate_dial_number("8 495 123 45 67", None, ALLOWED)
    assert validate_dial_number("+74951234567", None, ALLOWED) == "+74951234567"


@given(st.text(max_size=40))
def test_given_any_text_then_the_answer_is_e164_or_refused(raw: str) -> None:
    try:
        result = validate_dial_number(raw, "RU", ("+",))
    except DialRefused:
        return
    assert re.fullmatch(r"\+[1-9][0-9]{1,14}", result)


@given(st.text(alphabet="0123456789+() .-", max_size=20))
def test_given_allowed_characters_then_still_only_e164_or_refused(raw: str) -> None:
    try:
        result = validate_dial_number(raw, "RU", ("+7",))
    except DialRefused:
        return
    assert re.fullmatch(r"\+7[0-9]{10}", result)
