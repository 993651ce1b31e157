"""Why a rung phone did not take the call, from its hang-up cause or last SIP response:
the same words whether its leg was an ARI channel (Stasis) or one of Dial's (FastAGI)."""

from __future__ import annotations

import pytest

from pbxbrain.domain.model import leg_end_reason, sip_refusal_reason


@pytest.mark.parametrize(("response", "reason"), [
    ("SIP 486 Busy Here", "busy"),
    ("SIP 600 Busy Everywhere", "busy"),
    ("SIP 603 Decline", "rejected"),
    ("SIP 404 Not Found", "unallocated number"),
    ("SIP 480 Temporarily Unavailable", "no answer"),
    ("SIP 503 Service Unavailable", "congestion"),
    ("SIP 415 Unsupported Media Type", "SIP 415 Unsupported Media Type"),  # unnamed: as is
    ("SIP 580 Precondition Failure", "congestion"),  # chan_pjsip's default for a 5xx
    ("SIP 302 Moved Temporarily", "SIP 302 Moved Temporarily"),
])
def test_a_refusing_response_is_named_as_its_stasis_leg_would_be(response: str,
                                                                  reason: str) -> None:
    assert sip_refusal_reason(response) == reason


@pytest.mark.parametrize("response", [
    "SIP 180 Ringing",  # rang until Dial gave up: not a refusal
    "SIP 183 Session Progress",
    "SIP 200 OK",
    "SIP 487 Request Terminated",  # cancelled by Dial itself
    "", "SIP", "SIP abc Oops", "IAX2 busy",
])
def test_anything_but_a_refusal_has_no_reason_of_its_own(response: str) -> None:
    assert sip_refusal_reason(response) is None


def test_a_cause_without_a_name_says_asterisks_text_or_its_number() -> None:
    assert leg_end_reason(17) == "busy"
    assert leg_end_reason(127, "Interworking, unspecified") == "Interworking, unspecified"
    assert leg_end_reason(127) == "cause 127"
