"""Phone numbers: everything pbxbrain stores or compares is E.164 (``+74951234567``).

Parsing is phonenumbers' (Google's libphonenumber metadata); this module only decides
what to try, in which order, for the shapes Asterisk trunks hand us: ``+7495...``,
``7495...`` (international without ``+``), ``8495...`` (Russian trunk prefix), ``495...``.
"""

from __future__ import annotations

import functools
import re

import phonenumbers

_JUNK = re.compile(r"[\s()\-.]")
_DIGITS = re.compile(r"\+?[0-9]{1,20}")


@functools.lru_cache(maxsize=65536)
def to_e164(raw: str, default_region: str) -> str | None:
    """The E.164 form of ``raw``, or None when it is not a valid public number.

    Short internal numbers (``101``) and anonymous callers give None. Cached: parsing is
    the costliest part of a routing decision, and callers and DIDs repeat.
    """
    text = _JUNK.sub("", raw or "")
    if text.startswith("00"):
        text = "+" + text[2:]
    if not _DIGITS.fullmatch(text):
        return None
    candidates = [text] if text.startswith("+") else [text, "+" + text]
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, default_region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def normalize_caller(raw: str, default_region: str) -> str:
    """E.164 when possible, else the raw digits as given (for the journal, never empty)."""
    return to_e164(raw, default_region) or (raw.strip() or "anonymous")


@functools.lru_cache(maxsize=65536)
def region_of(e164: str) -> str | None:
    """The ISO region code phonenumbers assigns to an E.164 number (``RU``), if any."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.region_code_for_number(number)
