"""Rule 0 of the routing core: a manager dials out from his desk phone."""

from __future__ import annotations

import pytest

from pbxbrain.config import Config, parse_config
from pbxbrain.domain.model import CallOutcome, Direction, InboundCall
from pbxbrain.domain.plan import Facts, Reject, Ring, Target
from pbxbrain.domain.routing import decide
from tests.unit.test_routing import BASE, OPEN

CONFIG: Config = parse_config(
    BASE.replace("numbers: {default_region: RU}",
                 'numbers: {default_region: RU, dial_allowed: ["+7"]}')
    .replace("strategy: round_robin, ring_seconds: 20}",
             'strategy: round_robin, ring_seconds: 20, caller_id: "+74951234567"}')
    + "click_to_call: {client_ring_seconds: 30}\n", env={})


def outbound(phone: str, dialed: str) -> InboundCall:
    return InboundCall("c1", "ch1", phone, phone, dialed, OPEN, direction=Direction.OUTBOUND)


@pytest.mark.parametrize(
    ("phone", "dialed", "caller_id"),
    [("101", "89163000001", "+74951234567"),  # a member: his department's number
     ("109", "+79163000001", "+74951234567"),  # the head of sales: the same number
     ("104", "8 916 300-00-01", None)],  # spb has no caller_id: the phone's own
)
def test_given_a_manager_dials_an_allowed_number_then_one_ring_of_the_client(
    phone: str, dialed: str, caller_id: str | None
) -> None:
    plan = decide(outbound(phone, dialed), Facts(), CONFIG, OPEN)
    assert plan.rule == "outbound"
    assert plan.record
    assert plan.responsible is None
    assert plan.unanswered_outcome is CallOutcome.NO_ANSWER
    (ring,) = plan.steps
    assert isinstance(ring, Ring)
    assert ring.targets == (Target("", "PJSIP/+79163000001@pstn", kind="client"),)
    assert ring.caller_id == caller_id
    assert ring.timeout_s == 30


@pytest.mark.parametrize(
    ("phone", "dialed", "why"),
    [("101", "+442079460000", "numbers.dial_allowed"),  # not in the allowed countries
     ("101", "+7916300&PJSIP", "'&'"),  # injection
     ("101", "88095551234", "premium"),  # premium rate
     ("999", "+79163000001", "no manager's short number")],
)
def test_given_a_number_that_may_not_be_dialed_then_refused(
    phone: str, dialed: str, why: str
) -> None:
    plan = decide(outbound(phone, dialed), Facts(), CONFIG, OPEN)
    assert plan.rule == "outbound_refused"
    assert plan.unanswered_outcome is CallOutcome.REJECTED
    (step,) = plan.steps
    assert isinstance(step, Reject)
    assert step.cause == "congestion"
    assert why in step.why
