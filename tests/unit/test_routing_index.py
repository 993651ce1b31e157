"""The routing core's per-Config index: derived once per Config, never shared between two.

``decide`` keeps lookups derived from a Config (targets, homes, members, ...) for the last
few configs it saw. These cases check that a plan only ever reflects its own config, and
that a hand-built Config (no ``parse_config`` reference checks) routes as it always did.
"""

from __future__ import annotations

from pbxbrain.config import Config, parse_config
from pbxbrain.domain.plan import Ring
from pbxbrain.domain.routing import decide
from tests.unit.test_routing import BASE, DID, OPEN, call, config, facts, skipped, summary


def test_given_two_configs_in_turn_then_each_plan_follows_its_own_config() -> None:
    sales = config("[{department: sales}]")
    support = config("[{department: support}]")
    for _ in range(3):
        assert summary(decide(call(), facts(), sales, OPEN)) == [
            "ring seq 20: ivanov, petrov, sidorov"]
        assert summary(decide(call(), facts(), support, OPEN)) == [
            "ring seq 15: belov, chernov, zaitsev"]


def test_given_many_configs_then_an_early_one_still_routes_by_itself() -> None:
    first = config("[{manager: petrov}]")
    assert summary(decide(call(), facts(), first, OPEN)) == ["ring all 20: petrov"]
    for seconds in range(21, 41):  # more configs than the index keeps
        other = parse_config(BASE.replace("ring_seconds: 20", f"ring_seconds: {seconds}")
                             + f'lines:\n  "{DID}":\n    route: [{{manager: petrov}}]\n',
                             env={})
        assert summary(decide(call(), facts(), other, OPEN)) == [f"ring all {seconds}: petrov"]
    assert summary(decide(call(), facts(), first, OPEN)) == ["ring all 20: petrov"]


def test_given_a_hand_built_config_listing_a_member_twice_then_he_is_rung_once() -> None:
    # Config.model_validate alone does not check references or duplicates.
    data = config("[{department: sales}]").model_dump()
    data["departments"]["sales"]["members"] = ("ivanov", "petrov", "ivanov", "sidorov")
    hand_built = Config.model_validate(data)
    plan = decide(call(), facts(cursors={"sales": 1}), hand_built, OPEN)
    assert summary(plan) == ["ring seq 20: petrov, ivanov, sidorov"]
    assert skipped(plan) == ["ivanov already rung in this plan"]  # his second listing
    plan = decide(call(), facts(busy="petrov"), hand_built, OPEN)
    assert summary(plan) == ["ring seq 20: ivanov, sidorov"]
    assert skipped(plan) == ["petrov busy", "ivanov already rung in this plan"]
    assert all(isinstance(step, Ring) for step in plan.steps)
    plan = decide(call(), facts(busy="ivanov"), hand_built, OPEN)
    assert summary(plan) == ["ring seq 20: petrov, sidorov"]
    assert skipped(plan) == ["ivanov busy"]
