"""Phone-number normalisation: every shape a trunk sends ends up E.164."""

from __future__ import annotations

import pytest

from pbxbrain.domain.phone import normalize_caller, region_of, to_e164


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+74951234567", "+74951234567"),
        ("74951234567", "+74951234567"),  # international without "+"
        ("84951234567", "+74951234567"),  # Russian trunk prefix 8
        ("4951234567", "+74951234567"),  # national without prefix
        ("8 (916) 123-45-67", "+79161234567"),
        ("0049301234567", "+49301234567"),  # 00 international prefix
        ("+1 212 555 0100", "+12125550100"),
        ("101", None),  # short internal number
        ("", None),
        ("anonymous", None),
        ("+7495&123", None),
        ("1" * 30, None),
    ],
)
def test_given_a_raw_number_then_e164_or_none(raw: str, expected: str | None) -> None:
    assert to_e164(raw, "RU") == expected


def test_given_an_unparseable_caller_then_the_journal_keeps_it_raw() -> None:
    assert normalize_caller("101", "RU") == "101"
    assert normalize_caller("", "RU") == "anonymous"
    assert normalize_caller("89161234567", "RU") == "+79161234567"


def test_given_e164_then_region_is_known() -> None:
    assert region_of("+78121234567") == "RU"
    assert region_of("+12125550100") == "US"
    assert region_of("garbage") is None
