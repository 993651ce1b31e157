"""The routing core: plain values in, a Plan out; tables of cases, given/then names.

Every case builds its config from YAML text (``parse_config``) and reads the plan through
``summary``: one short string per step, e.g. ``ring seq 20: petrov, sidorov`` or
``ring all 20: ivanov(mobile)``.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbxbrain.config import Config, parse_config
from pbxbrain.domain.model import CallOutcome, Direction, InboundCall
from pbxbrain.domain.plan import (
    Facts,
    Plan,
    Play,
    Reject,
    Ring,
    RingMode,
    Skip,
    Target,
    Voicemail,
)
from pbxbrain.domain.routing import (
    ALREADY_RUNG,
    cursor_groups,
    decide,
    explain,
    plan_to_journal,
    plan_to_json,
)

BUSY_PROMPT = "pls-hold-while-try"  # Line.busy_prompt when the YAML gives none

BASE = """\
asterisk:
  ari: {user: pbxbrain, password: secret}
  ami: {user: pbxbrain, secret: secret}
  trunk: pstn
numbers: {default_region: RU}
staff:
  ivanov:    {name: Ivan Ivanov, short: "101", phone: PJSIP/101, mobile: "+79161234567"}
  petrov:    {name: Petr Petrov, short: "102", phone: PJSIP/102}
  sidorov:   {name: Sidor Sidorov, short: "103", phone: PJSIP/103}
  kuznetsov: {name: Nikolai Kuznetsov, short: "109", phone: PJSIP/109, mobile: "+79031112233"}
  smirnova:  {name: Anna Smirnova, short: "104", phone: PJSIP/104}
  orlova:    {name: Olga Orlova, short: "105", phone: PJSIP/105}
  belov:     {name: Boris Belov, phone: PJSIP/111}
  chernov:   {name: Chen Chernov, phone: PJSIP/112}
  zaitsev:   {name: Zakhar Zaitsev, phone: PJSIP/113}
  volkova:   {name: Vera Volkova, phone: PJSIP/121}
  lebedev:   {name: Lev Lebedev, phone: PJSIP/122}
  sokolov:   {name: Semen Sokolov, phone: PJSIP/123}
  secretary: {name: Sveta Secretary, short: "100", phone: PJSIP/100}
  backup:    {name: Bella Backup, phone: PJSIP/106}
  roamer:    {name: Roman Roamer, short: "107", mobile: "+79035556677"}
  loner:     {name: Lena Loner, phone: PJSIP/130}
departments:
  sales:   {short: "200", members: [ivanov, petrov, sidorov], head: kuznetsov,
            strategy: round_robin, ring_seconds: 20}
  spb:     {short: "201", members: [smirnova, orlova], head: kuznetsov, strategy: ring_all,
            ring_seconds: 25}
  support: {members: [belov, chernov, zaitsev], strategy: sequential, ring_seconds: 15}
  vip:     {members: [volkova, lebedev, sokolov], head: kuznetsov, strategy: sticky,
            ring_seconds: 30}
  front:   {short: "202", members: [secretary, backup], strategy: fixed, ring_seconds: 40}
  field:   {members: [roamer], strategy: round_robin, ring_seconds: 45}
schedules:
  office:
    timezone: Europe/Moscow
    weekly: {mon-fri: "09:00-18:00"}
    holidays: [2027-01-01]
regions:
  spb:    {prefixes: ["+7812", "+7813"], department: spb}
  spbvip: {prefixes: ["+7812999", "+7727"], department: vip}
  abroad: {countries: [KZ, BY], department: front}
blacklist: ["+79000000000", "+7800555"]
"""

DID = "+74951234567"
CLIENT = "+79161112233"
OPEN = datetime(2026, 11, 23, 7, 15, tzinfo=UTC)  # Mon 10:15 in Moscow
CLOSED = datetime(2026, 11, 23, 16, 0, tzinfo=UTC)  # Mon 19:00 in Moscow
HOLIDAY = datetime(2027, 1, 1, 9, 0, tzinfo=UTC)  # Fri 12:00 in Moscow, a holiday


@cache
def config(route: str, busy: str = "next", extra: str = "") -> Config:
    """The base config plus one line (``DID``) with ``route`` (YAML flow sequence)."""
    line = textwrap.indent(f"route: {route}\nbusy: {busy}\n{textwrap.dedent(extra)}", "    ")
    text = f'{BASE}lines:\n  "{DID}":\n    name: Main line\n    source: website\n{line}'
    return parse_config(text, env={})


def call(caller: str = CLIENT, dialed: str = DID,
         direction: Direction = Direction.INBOUND) -> InboundCall:
    return InboundCall(call_id="c1", channel_id="ch1", caller=caller, caller_raw=caller,
                       dialed=dialed, at=OPEN, direction=direction)


def facts(owner: str | None = None, busy: str = "", offline: str = "",
          cursors: Mapping[str, int] | None = None, sticky: str | None = None,
          crm_ok: bool = True) -> Facts:
    return Facts(owner=owner, crm_ok=crm_ok, busy=frozenset(busy.split()),
                 offline=frozenset(offline.split()), cursors=dict(cursors or {}),
                 sticky=sticky)


def summary(plan: Plan) -> list[str]:
    out: list[str] = []
    for step in plan.steps:
        match step:
            case Ring():
                mode = "all" if step.mode is RingMode.ALL else "seq"
                who = ", ".join(t.staff_id + ("(mobile)" if t.kind == "mobile" else "")
                                for t in step.targets)
                out.append(f"ring {mode} {step.timeout_s}: {who}")
            case Play():
                out.append(f"play {step.prompt}")
            case Voicemail():
                out.append(f"voicemail {step.box}")
            case Reject():
                out.append(f"reject {step.cause}")
    return out


def skipped(plan: Plan) -> list[str]:
    return [f"{skip.staff_id} {skip.reason}" for skip in plan.skipped]


def rung(plan: Plan) -> list[str]:
    return [t.staff_id for step in plan.steps if isinstance(step, Ring) for t in step.targets]


# --- department strategies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("department", "given", "steps", "left_out"),
    [
        # round_robin: free members, one by one, from the cursor on
        ("sales", facts(), ["ring seq 20: ivanov, petrov, sidorov"], []),
        ("sales", facts(cursors={"sales": 1}), ["ring seq 20: petrov, sidorov, ivanov"], []),
        ("sales", facts(cursors={"sales": 5}), ["ring seq 20: sidorov, ivanov, petrov"], []),
        ("sales", facts(cursors={"sales": 1}, busy="petrov"),
         ["ring seq 20: sidorov, ivanov"], ["petrov busy"]),
        ("sales", facts(cursors={"sales": 2}, offline="sidorov"),
         ["ring seq 20: ivanov, petrov"], ["sidorov offline"]),
        ("sales", facts(busy="ivanov petrov"), ["ring all 20: sidorov"],
         ["ivanov busy", "petrov busy"]),
        ("sales", facts(busy="ivanov petrov", offline="sidorov"), [],
         ["ivanov busy", "petrov busy", "sidorov offline"]),
        # ring_all: free members at once
        ("spb", facts(), ["ring all 25: smirnova, orlova"], []),
        ("spb", facts(offline="smirnova"), ["ring all 25: orlova"], ["smirnova offline"]),
        # sequential: listed order, the cursor does not matter
        ("support", facts(cursors={"support": 2}), ["ring seq 15: belov, chernov, zaitsev"],
         []),
        ("support", facts(busy="chernov"), ["ring seq 15: belov, zaitsev"], ["chernov busy"]),
        # fixed: the first member alone (the first free one when she is away)
        ("front", facts(), ["ring all 40: secretary"], []),
        ("front", facts(busy="secretary"), ["ring all 40: backup"], ["secretary busy"]),
        ("front", facts(offline="secretary backup"), [],
         ["secretary offline", "backup offline"]),
        # sticky: the caller's manager first, then round robin of the rest
        ("vip", facts(sticky="lebedev", cursors={"vip": 2}),
         ["ring seq 30: lebedev, sokolov, volkova"], []),
        ("vip", facts(sticky="lebedev", busy="lebedev"),
         ["ring seq 30: volkova, sokolov"], ["lebedev busy"]),
        ("vip", facts(cursors={"vip": 1}), ["ring seq 30: lebedev, sokolov, volkova"], []),
        # a manager with only a mobile is rung on it
        ("field", facts(), ["ring all 45: roamer(mobile)"], []),
    ],
)
def test_given_a_department_step_then_its_strategy_picks_the_free_members(
    department: str, given: Facts, steps: list[str], left_out: list[str]
) -> None:
    plan = decide(call(), given, config(f"[{{department: {department}}}]"), OPEN)

    assert summary(plan) == steps
    assert skipped(plan) == left_out
    assert plan.rule == "route"
    assert plan.record is True


@pytest.mark.parametrize(
    ("given", "assigned", "responsible"),
    [
        (facts(cursors={"vip": 1}), "lebedev", "lebedev"),  # no sticky: the first pick
        (facts(cursors={"vip": 1}, busy="lebedev"), "sokolov", "sokolov"),
        (facts(sticky="sokolov"), None, "sokolov"),  # already his: nothing to assign
        (facts(sticky="sokolov", busy="sokolov"), None, "sokolov"),  # stays his
        (facts(sticky="ivanov", cursors={"vip": 2}), "sokolov", "sokolov"),  # not in vip
        (facts(busy="volkova lebedev sokolov"), None, "kuznetsov"),  # nobody to assign
    ],
)
def test_given_a_sticky_department_then_the_first_pick_is_assigned_only_without_sticky(
    given: Facts, assigned: str | None, responsible: str | None
) -> None:
    plan = decide(call(), given, config("[{department: vip}]"), OPEN)

    assert plan.assign_sticky == assigned
    assert plan.responsible == responsible


@pytest.mark.parametrize(
    ("route", "given", "cursor_used"),
    [
        ("[{department: sales}]", facts(cursors={"sales": 4}), {"sales": 1}),
        ("[{department: vip}]", facts(), {"vip": 0}),
        ("[{department: spb}]", facts(cursors={"spb": 3}), {}),  # ring_all uses none
        ("[{department: support}, {department: sales}]", facts(cursors={"sales": 2}),
         {"sales": 2}),
    ],
)
def test_given_a_round_robin_then_the_cursor_position_used_is_recorded(
    route: str, given: Facts, cursor_used: dict[str, int]
) -> None:
    assert decide(call(), given, config(route), OPEN).cursor_used == cursor_used


# --- the owner and his fallbacks ----------------------------------------------------------

OWNER_ROUTE = "[{owner: {then: [mobile, department, head]}}, {department: sales}]"


@pytest.mark.parametrize(
    ("route", "busy_policy", "given", "steps", "left_out"),
    [
        # free owner: desk, mobile, his department without him, the head
        (OWNER_ROUTE, "next", facts(owner="ivanov"),
         ["ring all 20: ivanov", "ring all 20: ivanov(mobile)",
          "ring seq 20: petrov, sidorov", "ring all 20: kuznetsov"],
         [f"ivanov {ALREADY_RUNG}", f"petrov {ALREADY_RUNG}", f"sidorov {ALREADY_RUNG}"]),
        # busy owner, policy next: straight to the fallbacks, his mobile is not rung
        (OWNER_ROUTE, "next", facts(owner="ivanov", busy="ivanov", cursors={"sales": 2}),
         ["ring seq 20: sidorov, petrov", "ring all 20: kuznetsov"],
         ["ivanov busy", f"sidorov {ALREADY_RUNG}", f"petrov {ALREADY_RUNG}"]),
        # busy owner, policy prompt: tell the caller, then the fallbacks
        (OWNER_ROUTE, "prompt", facts(owner="ivanov", busy="ivanov"),
         [f"play {BUSY_PROMPT}", "ring seq 20: petrov, sidorov", "ring all 20: kuznetsov"],
         ["ivanov busy", f"petrov {ALREADY_RUNG}", f"sidorov {ALREADY_RUNG}"]),
        # offline desk phone: his mobile still rings
        (OWNER_ROUTE, "next", facts(owner="ivanov", offline="ivanov"),
         ["ring all 20: ivanov(mobile)", "ring seq 20: petrov, sidorov",
          "ring all 20: kuznetsov"],
         ["ivanov offline", f"petrov {ALREADY_RUNG}", f"sidorov {ALREADY_RUNG}"]),
        # no owner: the owner step adds nothing
        (OWNER_ROUTE, "next", facts(), ["ring seq 20: ivanov, petrov, sidorov"], []),
        (OWNER_ROUTE, "next", facts(owner="ivanov", crm_ok=False),
         ["ring seq 20: ivanov, petrov, sidorov"], []),
        (OWNER_ROUTE, "next", facts(owner="nobody-we-know"),
         ["ring seq 20: ivanov, petrov, sidorov"], []),
        # an owner without a mobile
        ("[{owner: {then: [mobile]}}]", "next", facts(owner="petrov"),
         ["ring all 20: petrov"], []),
        # the owner's own department and ring time (spb: ring_all, 25 s)
        ("[{owner: {then: [department, head]}}]", "next", facts(owner="smirnova"),
         ["ring all 25: smirnova", "ring all 25: orlova", "ring all 20: kuznetsov"], []),
        # the head as owner: his department is the first he heads; he is not rung twice
        ("[{owner: {then: [department, head]}}]", "next", facts(owner="kuznetsov"),
         ["ring all 20: kuznetsov", "ring seq 20: ivanov, petrov, sidorov"],
         [f"kuznetsov {ALREADY_RUNG}"]),
        # the department fallback follows its strategy (sticky)
        ("[{owner: {then: [department]}}]", "next", facts(owner="volkova", sticky="sokolov"),
         ["ring all 30: volkova", "ring seq 30: sokolov, lebedev"], []),
        # a head who is busy is skipped
        ("[{owner: {then: [head]}}]", "next", facts(owner="petrov", busy="kuznetsov"),
         ["ring all 20: petrov"], ["kuznetsov busy"]),
        # no then: only the owner
        ("[{owner: {}}, {voicemail: sales}]", "next", facts(owner="sidorov"),
         ["ring all 20: sidorov", "voicemail sales"], []),
        # a manager in no department has no department or head to fall back to
        ("[{owner: {then: [department, head]}}]", "next", facts(owner="loner"),
         ["ring all 20: loner"], []),
    ],
)
def test_given_an_owner_route_then_owner_and_fallbacks_ring_in_order(
    route: str, busy_policy: str, given: Facts, steps: list[str], left_out: list[str]
) -> None:
    plan = decide(call(), given, config(route, busy_policy), OPEN)

    assert summary(plan) == steps
    assert skipped(plan) == left_out


@pytest.mark.parametrize(
    ("given", "note"),
    [
        (facts(owner="ivanov"), "owner ivanov from CRM"),
        (facts(owner="ivanov", busy="ivanov"), "ivanov busy → next"),
        (facts(owner="ivanov", offline="ivanov"), "ivanov offline → next"),
        (facts(), "no owner in CRM; owner step skipped"),
        (facts(owner="ivanov", crm_ok=False), "CRM did not answer in time; owner step skipped"),
        (facts(owner="ghost"), "owner ghost from CRM is not in staff; owner step skipped"),
    ],
)
def test_given_an_owner_step_then_the_notes_say_what_happened_to_it(
    given: Facts, note: str
) -> None:
    assert note in decide(call(), given, config(OWNER_ROUTE), OPEN).notes


def test_given_an_owner_with_no_mobile_then_the_mobile_fallback_is_noted() -> None:
    plan = decide(call(), facts(owner="petrov"), config("[{owner: {then: [mobile]}}]"), OPEN)

    assert "petrov has no mobile" in plan.notes


def test_given_the_owner_mobile_then_it_is_dialled_through_the_trunk() -> None:
    plan = decide(call(), facts(owner="ivanov"), config(OWNER_ROUTE), OPEN)

    mobile = plan.steps[1]
    assert isinstance(mobile, Ring)
    assert [(t.staff_id, t.endpoint, t.kind) for t in mobile.targets] == [
        ("ivanov", "PJSIP/+79161234567@pstn", "mobile")]


def test_given_a_busy_owner_then_the_notes_read_in_order() -> None:
    plan = decide(call(), facts(owner="ivanov", busy="ivanov"),
                  config(OWNER_ROUTE, extra="schedule: office"), OPEN)

    assert plan.notes[:4] == (
        "line +74951234567 (Main line, source website)",
        "open: Europe/Moscow Mon 10:15",
        "owner ivanov from CRM",
        "ivanov busy → next",
    )


# --- other route steps --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "busy_policy", "given", "steps", "left_out"),
    [
        ("[{manager: petrov}]", "next", facts(), ["ring all 20: petrov"], []),
        ("[{manager: kuznetsov}]", "next", facts(), ["ring all 20: kuznetsov"], []),
        ("[{manager: loner}]", "next", facts(), ["ring all 20: loner"], []),
        ("[{manager: roamer}]", "next", facts(), ["ring all 45: roamer(mobile)"], []),
        ("[{manager: petrov}, {manager: sidorov}]", "next", facts(busy="petrov"),
         ["ring all 20: sidorov"], ["petrov busy"]),
        ("[{manager: petrov}, {manager: sidorov}]", "prompt", facts(busy="petrov"),
         [f"play {BUSY_PROMPT}", "ring all 20: sidorov"], ["petrov busy"]),
        # the busy prompt is played once per plan
        ("[{manager: petrov}, {manager: ivanov}, {manager: sidorov}]", "prompt",
         facts(busy="petrov ivanov"), [f"play {BUSY_PROMPT}", "ring all 20: sidorov"],
         ["petrov busy", "ivanov busy"]),
        # offline is not busy: no prompt
        ("[{manager: petrov}, {manager: sidorov}]", "prompt", facts(offline="petrov"),
         ["ring all 20: sidorov"], ["petrov offline"]),
        ("[{ring_all: [ivanov, petrov, smirnova]}]", "next", facts(offline="petrov"),
         ["ring all 25: ivanov, smirnova"], ["petrov offline"]),
        # a voicemail step ends the route
        ("[{department: sales}, {voicemail: sales}, {manager: kuznetsov}]", "next",
         facts(busy="ivanov petrov sidorov"), ["voicemail sales"],
         ["ivanov busy", "petrov busy", "sidorov busy"]),
        # a manager's phone rings once per plan, whatever the steps
        ("[{manager: ivanov}, {department: sales}, {ring_all: [ivanov, smirnova]}, "
         "{manager: ivanov}]", "next", facts(),
         ["ring all 20: ivanov", "ring seq 20: petrov, sidorov", "ring all 25: smirnova"],
         [f"ivanov {ALREADY_RUNG}"]),
        ("[{ring_all: [petrov, petrov]}]", "next", facts(), ["ring all 20: petrov"],
         [f"petrov {ALREADY_RUNG}"]),
    ],
)
def test_given_route_steps_then_they_ring_in_order_and_skip_the_unavailable(
    route: str, busy_policy: str, given: Facts, steps: list[str], left_out: list[str]
) -> None:
    plan = decide(call(), given, config(route, busy_policy), OPEN)

    assert summary(plan) == steps
    assert skipped(plan) == left_out


def test_given_a_line_with_its_own_busy_prompt_then_that_sound_is_played() -> None:
    plan = decide(call(), facts(busy="petrov"),
                  config("[{manager: petrov}, {manager: sidorov}]", "prompt",
                         "busy_prompt: custom/manager-busy\n"), OPEN)
    assert summary(plan) == ["play custom/manager-busy", "ring all 20: sidorov"]


@pytest.mark.parametrize(
    ("caller", "default", "steps", "note"),
    [
        ("+78121234567", "sales", ["ring all 25: smirnova, orlova"],
         "caller +78121234567 in region spb (+7812) → department spb"),
        ("+78131234567", "sales", ["ring all 25: smirnova, orlova"],
         "caller +78131234567 in region spb (+7813) → department spb"),
        # the longest prefix wins
        ("+78129991234", "sales", ["ring seq 30: volkova, lebedev, sokolov"],
         "caller +78129991234 in region spbvip (+7812999) → department vip"),
        ("+79161112233", "sales", ["ring seq 20: ivanov, petrov, sidorov"],
         "caller +79161112233 in no region → default sales"),
        # no prefix matched: the country phonenumbers gives the number
        ("+77012345678", "sales", ["ring all 40: secretary"],
         "caller +77012345678 in region abroad (KZ) → department front"),
        ("+375291234567", None, ["ring all 40: secretary"],
         "caller +375291234567 in region abroad (BY) → department front"),
        # a prefix beats a country (+7727: Almaty, in Kazakhstan)
        ("+77272123456", "sales", ["ring seq 30: volkova, lebedev, sokolov"],
         "caller +77272123456 in region spbvip (+7727) → department vip"),
        ("+79161112233", None, [],
         "caller +79161112233 in no region and no default: region step skipped"),
        ("anonymous", "support", ["ring seq 15: belov, chernov, zaitsev"],
         "caller anonymous in no region → default support"),
    ],
)
def test_given_a_region_step_then_the_callers_prefix_picks_the_department(
    caller: str, default: str | None, steps: list[str], note: str
) -> None:
    route = f"[{{region: {{default: {default}}}}}]" if default else "[{region: {}}]"

    plan = decide(call(caller=caller), facts(), config(route), OPEN)

    assert summary(plan) == steps
    assert note in plan.notes


# --- blacklist, lines, internal calls -----------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "rejected"),
    [
        ("+79000000000", True),  # a full number
        ("89000000000", True),  # the same, as the trunk may send it
        ("+78005551234", True),  # a prefix
        ("+78005550000", True),
        ("+78005561234", False),
        ("+79000000001", False),
        ("anonymous", False),
    ],
)
def test_given_a_caller_on_the_blacklist_then_the_call_is_rejected_busy(
    caller: str, rejected: bool
) -> None:
    plan = decide(call(caller=caller), facts(owner="ivanov"), config(OWNER_ROUTE), OPEN)

    if rejected:
        assert plan.steps == (Reject("busy", why=plan.steps[0].why),)
        assert (plan.rule, plan.record, plan.responsible) == ("blacklist", False, None)
        assert plan.unanswered_outcome is CallOutcome.REJECTED
        assert plan.line == DID
    else:
        assert plan.rule == "route"


def test_given_a_blacklisted_caller_after_hours_then_still_rejected() -> None:
    plan = decide(call(caller="+79000000000"), facts(),
                  config("[{department: sales}]", extra="schedule: office"), CLOSED)

    assert plan.rule == "blacklist"


@pytest.mark.parametrize("dialed", ["+74951234567", "74951234567", "84951234567",
                                    "4951234567", "8 (495) 123-45-67"])
def test_given_the_did_in_any_trunk_form_then_the_line_is_found(dialed: str) -> None:
    plan = decide(call(dialed=dialed), facts(), config("[{department: sales}]"), OPEN)

    assert (plan.rule, plan.line, plan.source) == ("route", DID, "website")


@pytest.mark.parametrize(
    ("dialed", "direction"),
    [
        ("+74957654321", Direction.INBOUND),  # a number we have no line for
        ("not-a-number", Direction.INBOUND),
        ("101", Direction.INBOUND),  # short numbers are for internal calls only
        ("999", Direction.INTERNAL),  # nobody's short number
    ],
)
def test_given_an_unknown_line_then_the_plan_hands_the_call_to_the_dialplan(
    dialed: str, direction: Direction
) -> None:
    plan = decide(call(dialed=dialed, direction=direction), facts(owner="ivanov"),
                  config("[{department: sales}]"), OPEN)

    assert plan.steps == ()
    assert plan.fallback is True
    assert (plan.rule, plan.line, plan.responsible, plan.record) == (
        "unknown_line", None, None, False)
    assert plan.unanswered_outcome is CallOutcome.MISSED
    assert plan.notes[0].startswith(f"no line for dialed number {dialed}")
    assert "dialplan fallback" in plan.notes[0]


@pytest.mark.parametrize(
    ("dialed", "given", "rule", "steps"),
    [
        ("101", facts(), "short:ivanov", ["ring all 20: ivanov"]),  # his desk phone
        ("107", facts(), "short:roamer", ["ring all 45: roamer(mobile)"]),
        ("101", facts(busy="ivanov"), "short:ivanov", []),
        ("200", facts(cursors={"sales": 1}), "short:sales",
         ["ring seq 20: petrov, sidorov, ivanov"]),
        ("201", facts(), "short:spb", ["ring all 25: smirnova, orlova"]),
        ("202", facts(busy="secretary"), "short:front", ["ring all 40: backup"]),
        # an internal call to a DID is routed like any call to that line
        (DID, facts(), "route", ["ring seq 20: ivanov, petrov, sidorov"]),
    ],
)
def test_given_an_internal_call_to_a_short_number_then_it_rings_that_manager_or_department(
    dialed: str, given: Facts, rule: str, steps: list[str]
) -> None:
    plan = decide(call(caller="102", dialed=dialed, direction=Direction.INTERNAL), given,
                  config("[{department: sales}]", extra="schedule: office"), OPEN)

    assert plan.rule == rule
    assert summary(plan) == steps
    if rule.startswith("short:"):
        assert (plan.line, plan.responsible, plan.record) == (None, None, True)


def test_given_an_internal_short_call_out_of_hours_then_it_still_rings() -> None:
    plan = decide(call(caller="102", dialed="101", direction=Direction.INTERNAL), facts(),
                  config("[{department: sales}]", extra="schedule: office"), CLOSED)

    assert summary(plan) == ["ring all 20: ivanov"]


# --- working hours ------------------------------------------------------------------------

AFTER = "schedule: office\nafter_hours: {prompt: after-hours, voicemail: sales}"


@pytest.mark.parametrize(
    ("extra", "given", "now", "steps", "responsible"),
    [
        (AFTER, facts(), CLOSED, ["play after-hours", "voicemail sales"], "kuznetsov"),
        (AFTER, facts(), HOLIDAY, ["play after-hours", "voicemail sales"], "kuznetsov"),
        (AFTER, facts(owner="petrov"), CLOSED, ["play after-hours", "voicemail sales"],
         "petrov"),
        ("schedule: office\nafter_hours: {voicemail: petrov}", facts(), CLOSED,
         ["voicemail petrov"], "petrov"),
        ("schedule: office\nafter_hours: {voicemail: support}", facts(), CLOSED,
         ["voicemail support"], "belov"),  # no head: the first member
        ("schedule: office\nafter_hours: {prompt: after-hours}", facts(), CLOSED,
         ["play after-hours"], "kuznetsov"),  # no box: the route's first department
        ("schedule: office", facts(), CLOSED, [], "kuznetsov"),
    ],
)
def test_given_a_closed_schedule_then_after_hours_prompt_and_voicemail(
    extra: str, given: Facts, now: datetime, steps: list[str], responsible: str
) -> None:
    plan = decide(call(), given, config("[{department: sales}]", extra=extra), now)

    assert summary(plan) == steps
    assert (plan.rule, plan.record, plan.responsible) == ("after_hours", False, responsible)
    assert plan.unanswered_outcome is CallOutcome.AFTER_HOURS
    assert plan.cursor_used == {}


@pytest.mark.parametrize(
    ("now", "note"),
    [
        (OPEN, "open: Europe/Moscow Mon 10:15"),
        (datetime(2026, 11, 23, 5, 59, 59, tzinfo=UTC), "closed: Europe/Moscow Mon 08:59 "
                                                        "(outside working hours, schedule "
                                                        "office)"),
        (datetime(2026, 11, 23, 6, 0, tzinfo=UTC), "open: Europe/Moscow Mon 09:00"),
        (datetime(2026, 11, 23, 15, 0, tzinfo=UTC), "closed: Europe/Moscow Mon 18:00 "
                                                    "(outside working hours, schedule "
                                                    "office)"),
        (HOLIDAY, "closed: Europe/Moscow Fri 12:00 (holiday 2027-01-01, schedule office)"),
    ],
)
def test_given_a_schedule_then_the_plan_says_open_or_closed(now: datetime, note: str) -> None:
    plan = decide(call(), facts(), config("[{department: sales}]", extra=AFTER), now)

    assert plan.notes[1] == note


def test_given_no_schedule_then_always_open() -> None:
    plan = decide(call(), facts(), config("[{department: sales}]"), CLOSED)

    assert plan.rule == "route"
    assert "no schedule: always open" in plan.notes


# --- responsible --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "given", "responsible"),
    [
        (OWNER_ROUTE, facts(owner="petrov", busy="petrov"), "petrov"),  # the owner, busy
        (OWNER_ROUTE, facts(cursors={"sales": 2}), "sidorov"),  # the first round-robin pick
        (OWNER_ROUTE, facts(owner="petrov", crm_ok=False, cursors={"sales": 1}), "petrov"),
        ("[{department: vip}]", facts(sticky="lebedev"), "lebedev"),
        ("[{department: spb}, {department: sales}]", facts(), "ivanov"),
        ("[{department: spb}]", facts(), "kuznetsov"),  # ring_all: its head
        ("[{department: support}]", facts(), "belov"),  # no head: the first member
        ("[{department: sales}]", facts(busy="ivanov petrov sidorov"), "kuznetsov"),
        ("[{region: {default: support}}]", facts(), "belov"),
        ("[{manager: petrov}]", facts(), None),
        ("[{ring_all: [petrov, orlova]}, {voicemail: spb}]", facts(), "kuznetsov"),
        ("[{manager: petrov}, {voicemail: loner}]", facts(), "loner"),
    ],
)
def test_given_a_route_then_the_missed_call_task_goes_to_the_responsible(
    route: str, given: Facts, responsible: str | None
) -> None:
    assert decide(call(), given, config(route), OPEN).responsible == responsible


# --- purity, explain, JSON, cursor groups --------------------------------------------------


def test_given_the_same_inputs_then_the_same_plan() -> None:
    route_config = config(OWNER_ROUTE, "prompt")
    given = facts(owner="ivanov", busy="petrov", cursors={"sales": 7})

    assert decide(call(), given, route_config, OPEN) == decide(call(), given, route_config,
                                                               OPEN)


def test_given_a_plan_then_explain_tells_steps_outcome_and_reasons() -> None:
    plan = decide(call(), facts(owner="ivanov", busy="petrov"), config(OWNER_ROUTE), OPEN)

    text = explain(plan)

    assert text.splitlines()[0] == ("rule: route   line: +74951234567 (source website)   "
                                    "record: yes")
    assert "  1. ring at once, 20 s: ivanov PJSIP/101 — owner ivanov (desk)" in text
    assert "ivanov PJSIP/+79161234567@pstn" in text
    assert "if nobody answers: missed; missed-call task for ivanov" in text
    assert "skipped: petrov (busy)" in text
    assert "  - owner ivanov from CRM" in text


def test_given_an_unknown_line_then_explain_says_the_dialplan_takes_it() -> None:
    plan = decide(call(dialed="+74957654321"), facts(), config(OWNER_ROUTE), OPEN)

    assert "(none): hand the call to the dialplan fallback" in explain(plan)


def test_given_a_plan_then_its_json_is_plain_data() -> None:
    plan = decide(call(), facts(cursors={"vip": 1}), config(
        "[{department: vip}, {voicemail: vip}]", "prompt"), OPEN)

    document = json.loads(json.dumps(plan_to_json(plan)))

    assert document["rule"] == "route"
    assert document["steps"][0] == {
        "kind": "ring", "mode": "sequential", "timeout_s": 30, "why": "department vip: sticky",
        "targets": [{"staff_id": name, "endpoint": endpoint, "kind": "desk"} for name, endpoint
                    in (("lebedev", "PJSIP/122"), ("sokolov", "PJSIP/123"),
                        ("volkova", "PJSIP/121"))]}
    assert document["steps"][1] == {"kind": "voicemail", "box": "vip", "why": "route"}
    assert document["assign_sticky"] == "lebedev"
    assert document["cursor_used"] == {"vip": 1}
    assert document["unanswered_outcome"] == "missed"
    assert document["fallback"] is False
    assert document["notes"] == list(plan.notes)


def test_given_a_small_plan_then_the_journal_keeps_all_of_it() -> None:
    plan = decide(call(), facts(busy="petrov"), config("[{department: sales}]"), OPEN)

    entry = json.loads(json.dumps(plan_to_journal(plan)))

    assert entry == {
        "rule": "route", "notes": list(plan.notes), "responsible": plan.responsible,
        "skipped": {"petrov": "busy"},
        "steps": plan_to_json(plan)["steps"]}


def test_given_a_huge_hunt_list_then_the_journal_keeps_its_head_and_counts_the_rest() -> None:
    # A round-robin department of 600 made a 38 KB ``routed`` entry for every call.
    targets = tuple(Target(f"m{i:03d}", f"PJSIP/{i:03d}") for i in range(600))
    plan = Plan(steps=(Ring(targets, RingMode.SEQUENTIAL, 10, why="department big"),
                       Voicemail("big", why="route")),
                line=DID, source=None, rule="route", responsible="m000",
                skipped=tuple(Skip(f"b{i:02d}", "busy") for i in range(25)))

    entry = plan_to_journal(plan)

    ring, voicemail = entry["steps"]
    assert [t["staff_id"] for t in ring["targets"]] == [f"m{i:03d}" for i in range(10)]
    assert ring["more_targets"] == 590
    assert voicemail == {"kind": "voicemail", "box": "big", "why": "route"}
    assert list(entry["skipped"]) == [f"b{i:02d}" for i in range(20)]
    assert entry["more_skipped"] == 5
    assert len(json.dumps(entry)) < 2000


@pytest.mark.parametrize(
    ("route", "dialed", "caller", "owner", "groups"),
    [
        ("[{department: sales}]", DID, CLIENT, None, ("sales",)),
        ("[{department: sales}]", "84951234567", CLIENT, None, ("sales",)),
        ("[{department: spb}, {department: support}]", DID, CLIENT, None, ()),
        ("[{department: vip}, {department: sales}, {department: vip}]", DID, CLIENT, None,
         ("vip", "sales")),
        ("[{region: {default: sales}}]", DID, "+78121234567", None, ()),  # spb: ring_all
        ("[{region: {default: sales}}]", DID, "+78129991234", None, ("vip",)),
        ("[{region: {default: sales}}]", DID, "89161112233", None, ("sales",)),
        (OWNER_ROUTE, DID, CLIENT, None, ("sales",)),
        ("[{owner: {then: [department]}}, {department: support}]", DID, CLIENT, None, ()),
        ("[{owner: {then: [department]}}, {department: support}]", DID, CLIENT, "volkova",
         ("vip",)),
        ("[{owner: {then: [mobile]}}]", DID, CLIENT, "volkova", ()),
        ("[{department: support}]", "200", "101", None, ("sales",)),  # internal short
        ("[{department: support}]", "101", "102", None, ()),
        ("[{department: sales}]", "+74957654321", CLIENT, None, ()),
    ],
)
def test_given_a_call_then_cursor_groups_are_the_round_robin_departments_it_may_ring(
    route: str, dialed: str, caller: str, owner: str | None, groups: tuple[str, ...]
) -> None:
    assert cursor_groups(dialed, caller, config(route), owner=owner) == groups


def test_given_a_plan_then_skips_are_values() -> None:
    plan = decide(call(), facts(busy="ivanov"), config("[{manager: ivanov}]"), OPEN)

    assert plan.skipped == (Skip("ivanov", "busy"),)


# --- property: round robin never rings the unavailable, nor anybody twice -----------------

TEAM = ("ivanov", "petrov", "sidorov", "belov", "chernov", "zaitsev")
PROPERTY_CONFIG = parse_config(
    BASE.replace("  sales:   {short: \"200\", members: [ivanov, petrov, sidorov]",
                 "  sales:   {short: \"200\", members: [ivanov, petrov, sidorov, belov, chernov, "
                 "zaitsev]")
        .replace("  support: {members: [belov, chernov, zaitsev], strategy: sequential, "
                 "ring_seconds: 15}\n", "")
    + f'lines:\n  "{DID}":\n    busy: prompt\n'
      "    route: [{owner: {then: [mobile, department, head]}}, {department: sales},\n"
      "            {ring_all: [ivanov, petrov, kuznetsov]}, {manager: sidorov},\n"
      "            {department: sales}, {department: vip}]\n",
    env={},
)
PEOPLE = st.sampled_from((*TEAM, "kuznetsov", "volkova", "lebedev", "sokolov"))


@settings(max_examples=300, deadline=None)
@given(
    busy=st.frozensets(PEOPLE),
    offline=st.frozensets(PEOPLE),
    cursor=st.integers(min_value=0, max_value=10_000),
    vip_cursor=st.integers(min_value=0, max_value=10_000),
    owner=st.none() | PEOPLE,
    sticky=st.none() | PEOPLE,
)
def test_given_any_busy_offline_and_cursors_then_nobody_unavailable_or_twice_is_rung(
    busy: frozenset[str], offline: frozenset[str], cursor: int, vip_cursor: int,
    owner: str | None, sticky: str | None,
) -> None:
    given = Facts(owner=owner, busy=busy, offline=offline,
                  cursors={"sales": cursor, "vip": vip_cursor}, sticky=sticky)

    plan = decide(call(), given, PROPERTY_CONFIG, OPEN)

    targets = [t for step in plan.steps if isinstance(step, Ring) for t in step.targets]
    desk = [t.staff_id for t in targets if t.kind == "desk"]
    assert not {t.staff_id for t in targets} & busy
    assert not set(desk) & offline
    assert len(desk) == len(set(desk))
    assert len(targets) == len(set(targets))
    # only the owner's explicit mobile fallback reaches a manager a second time
    twice = {name for name in desk if any(t.staff_id == name and t.kind == "mobile"
                                          for t in targets)}
    assert twice <= ({owner} if owner else set())
    # the round robin starts at the cursor: the first sales member rung is the first free
    # one from the cursor on, unless the owner chain rang sales first
    if owner is None:
        rotated = [TEAM[(cursor + i) % len(TEAM)] for i in range(len(TEAM))]
        free = [name for name in rotated if name not in busy and name not in offline]
        sales_steps = [step for step in plan.steps if isinstance(step, Ring)
                       and step.why == "department sales: round_robin"]
        assert [t.staff_id for t in sales_steps[0].targets] == free if free else not sales_steps
    assert all(skip.reason in {"busy", "offline", ALREADY_RUNG} for skip in plan.skipped)
    assert len(set(plan.skipped)) == len(plan.skipped)
    assert plan.steps.count(Play(BUSY_PROMPT, why="")) == 0  # a prompt always says why
    assert sum(isinstance(step, Play) for step in plan.steps) <= 1
