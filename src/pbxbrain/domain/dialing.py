"""Which numbers pbxbrain may dial out to: the toll-fraud guard of click-to-call.

Rules, in the order they are checked (the first one broken is the reason given):

1. the input is at most 20 characters of ASCII digits, ``+``, spaces, ``(``, ``)``, ``-``
   and ``.``; a ``+`` only as the first character (anything else, including letters,
   ``&``, ``/``, ``,``, ``@``, ``;``, control characters and non-ASCII digits, is refused);
2. phonenumbers parses it (national forms need ``numbers.default_region``) and says it is a
   valid number; premium-rate numbers are refused whatever the prefixes say;
3. its E.164 form starts with one of ``numbers.dial_allowed``; an empty list allows nothing.

What comes out is only ever ``+`` followed by digits, so nothing a client sends can reach
an Asterisk dial string (``PJSIP/<number>@<trunk>``) except a checked E.164 number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import phonenumbers

__all__ = ["MAX_INPUT_LENGTH", "DialRefused", "validate_dial_number"]

MAX_INPUT_LENGTH = 20

_ALLOWED = re.compile(r"[0-9+() .\-]*")  # ASCII only: [0-9] is not \d
_BAD_CHAR = re.compile(r"[^0-9+() .\-]")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


class DialRefused(ValueError):
    """A number pbxbrain will not dial; ``reason`` says why, in words for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def validate_dial_number(raw: str, region: str | None, allowed_prefixes: Sequence[str]) -> str:
    """The E.164 form of ``raw`` if pbxbrain may dial it, else raise ``DialRefused``.

    ``region`` is ``numbers.default_region`` (None: only international forms are read);
    ``allowed_prefixes`` is ``numbers.dial_allowed`` (E.164 prefixes such as ``+7``).
    """
    if len(raw) > MAX_INPUT_LENGTH:
        raise DialRefused(f"the number is too long ({len(raw)} characters; at most "
                          f"{MAX_INPUT_LENGTH})")
    if not _ALLOWED.fullmatch(raw):
        bad = _BAD_CHAR.search(raw)
        shown = repr(bad.group()) if bad else "a character"
        raise DialRefused(f"the number contains {shown}; only digits, '+', spaces, '(', ')', "
                          f"'-' and '.' may be used")
    text = raw.strip()
    if not any(ch.isdigit() for ch in text):
        raise DialRefused("the number is empty")
    if "+" in text[1:]:
        raise DialRefused("'+' may only start the number")
    if not text.startswith("+") and region is None:
        raise DialRefused("write the number in international form, with + and the country "
                          "code (no default region is configured)")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise DialRefused("not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise DialRefused("not a valid phone number (wrong length or no such range)")
    if phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.PREMIUM_RATE:
        raise DialRefused("premium-rate numbers are never dialed")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not _E164.fullmatch(e164):  # defensive: phonenumbers' output is trusted, not assumed
        raise DialRefused("not a phone number")
    if not allowed_prefixes:
        raise DialRefused("outbound calls are disabled on this PBX (numbers.dial_allowed is "
                          "empty)")
    if not any(e164.startswith(prefix) for prefix in allowed_prefixes):
        raise DialRefused(f"{e164} is not among the destinations this PBX may call "
                          f"(numbers.dial_allowed)")
    return e164
