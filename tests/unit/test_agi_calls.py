"""Plans run as dialplan applications over FastAGI (``AgiCallSession``), against a fake
AGI channel that plays Asterisk's part: what pbxbrain asks Asterisk to do, in order, and
what it journals. The real thing is proven in tests/e2e/test_agi.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pbxbrain.adapters.agi import AgiChannel, AgiHangup
from pbxbrain.adapters.agi_calls import AgiCalls, AgiCallSession
from pbxbrain.adapters.stasis import StasisApp, StasisSettings
from pbxbrain.domain.model import CallOutcome, Direction, EventKind, InboundCall
from pbxbrain.domain.plan import Plan, Play, Reject, Ring, RingMode, Target

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
IVANOV = Target("ivanov", "PJSIP/101")
PETROV = Target("petrov", "PJSIP/102")
MOBILE = Target("ivanov", "PJSIP/+79161234567@pstn", kind="mobile")


@dataclass
class FakeJournal:
    events: list[tuple[EventKind, dict[str, Any]]] = field(default_factory=list)
    answered_by: list[str | None] = field(default_factory=list)
    closed_as: list[tuple[CallOutcome, dict[str, object]]] = field(default_factory=list)

    def entered(self, call: InboundCall, **_: object) -> None:
        pass

    def event(self, call_id: str, at: datetime, kind: EventKind, **data: Any) -> None:
        self.events.append((kind, data))

    def answered(self, call_id: str, at: datetime, by: str | None) -> None:
        self.answered_by.append(by)

    def closed(self, call_id: str, outcome: CallOutcome, at: datetime, *,
               outbox: object = (), data: dict[str, object] | None = None) -> None:
        self.closed_as.append((outcome, dict(data or {})))

    def remembered(self, *_: object) -> None:
        pass

    def of(self, kind: EventKind) -> list[dict[str, Any]]:
        return [data for k, data in self.events if k is kind]


@dataclass
class FakePhones:
    reserved: dict[str, str] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)  # held by other calls
    ended: list[str] = field(default_factory=list)

    def reserve(self, staff_id: str, call_id: str) -> bool:
        if staff_id in self.taken:
            return False
        self.reserved[staff_id] = call_id
        return True

    def release(self, staff_id: str, call_id: str) -> None:
        if self.reserved.get(staff_id) == call_id:
            del self.reserved[staff_id]

    def release_all(self, call_id: str) -> None:
        for staff_id in [s for s, c in self.reserved.items() if c == call_id]:
            del self.reserved[staff_id]

    def changed(self, channel_id: str) -> None:
        self.ended.append(channel_id)


class FakeAgi:
    """Asterisk's side of one AGI session. ``dials`` plays each Dial in turn: a function
    of the session that may tell it of an answer, and returns DIALSTATUS."""

    def __init__(self, dials: list[Callable[[], str]] | None = None) -> None:
        self.env = {"channel": "PJSIP/pstn-00000001", "uniqueid": "1764583200.1",
                    "callerid": "+79161112233", "calleridname": "Client"}
        self.script = "inbound"
        self.args: tuple[str, ...] = ("74951234567",)
        self.hung_up = False
        self.sent: list[str] = []
        self.variables: dict[str, str] = {}
        self.dials = list(dials or [])
        self.hang_up_in = ""

    async def command(self, line: str, *, timeout_s: float | None = None) -> object:
        self.sent.append(line)
        return None

    async def exec(self, app: str, args: str = "", *, timeout_s: float | None = None) -> object:
        # Asterisk runs applications on a dead channel too: they end at once, -1.
        self.sent.append(f"EXEC {app} {args}".rstrip())
        if app == self.hang_up_in:
            self.hung_up = True  # the caller hangs up while this application runs
        if app == "HangupCauseClear":
            for name in [n for n in self.variables if n.startswith("HANGUPCAUSE")]:
                del self.variables[name]
        if app == "Dial":
            self.variables["DIALSTATUS"] = "CANCEL" if self.hung_up else self.dials.pop(0)()
        if app == "Playback":
            self.variables["PLAYBACKSTATUS"] = "FAILED" if self.hung_up else "SUCCESS"
        return SimpleNamespace(result=-1 if self.hung_up else 0)

    async def get_variable(self, name: str) -> str | None:
        return self.variables.get(name)

    async def set_variable(self, name: str, value: str) -> None:
        self.sent.append(f"SET {name}={value}")

    async def answer(self) -> None:
        self.sent.append("ANSWER")
        if self.hung_up:
            raise AgiHangup("ANSWER: 511 dead channel")

    async def hangup(self) -> None:
        self.sent.append("HANGUP")


@dataclass
class Router:
    plan_of: Callable[[], Plan]

    async def plan(self, call: InboundCall, now: datetime) -> tuple[Plan, None]:
        return self.plan_of(), None

    def manager_to_remember(self, plan: Plan, answered_by: str | None) -> None:
        return None


def make_session(plan: Plan | Callable[[], Plan], agi: FakeAgi,
                 phones: FakePhones | None = None) -> tuple[AgiCallSession, FakeJournal]:
    journal = FakeJournal()
    clock = iter(NOW + timedelta(seconds=i) for i in range(1000))
    app = cast(StasisApp, SimpleNamespace(
        journal=journal, phones=phones or FakePhones(),
        router=Router(plan if callable(plan) else lambda: plan),
        settings=StasisSettings(node="n1", default_region="RU",
                                fallback_context="pbxbrain-fallback"),
        clock=lambda: next(clock), publish=lambda _t, _d: None,
        follow_ups=lambda *_a, **_k: []))
    call = InboundCall(call_id="c1", channel_id="1764583200.1", caller="+79161112233",
                       caller_raw="+79161112233", dialed="74951234567", at=NOW,
                       direction=Direction.INBOUND, node="n1")
    return AgiCallSession(app, call, cast(AgiChannel, agi)), journal


def ring(*targets: Target, mode: RingMode = RingMode.ALL) -> Plan:
    return Plan(steps=(Ring(targets, mode, 5),), line="+74951234567", source=None,
                rule="route", responsible="ivanov")


def answered_by(session: AgiCallSession, target: Target, talk_ms: int = 2000
                ) -> Callable[[], str]:
    def dial() -> str:
        session.answered(target, "1764583200.7")
        session.agi.variables["ANSWEREDTIME_MS"] = str(talk_ms)  # type: ignore[attr-defined]
        return "ANSWER"

    return dial


async def test_given_ring_all_when_one_answers_then_the_other_is_free_at_once() -> None:
    agi, phones = FakeAgi(), FakePhones()
    session, journal = make_session(ring(IVANOV, PETROV), agi, phones)
    free_at_answer: list[set[str]] = []

    def dial() -> str:
        answer = answered_by(session, PETROV)()
        free_at_answer.append({"ivanov", "petrov"} - set(phones.reserved))
        return answer

    agi.dials = [dial]
    await session.run()

    assert agi.sent == [
        "SET PBXBRAIN_RESULT=ringing",
        "EXEC HangupCauseClear",
        "EXEC Dial PJSIP/101&PJSIP/102,5,gU(pbxbrain-answered^c1)",
        "SET PBXBRAIN_RESULT=done", "HANGUP"]
    assert free_at_answer == [{"ivanov"}]  # during petrov's conversation
    assert journal.answered_by == ["petrov"]
    assert journal.of(EventKind.LEG_ENDED) == [{"staff": "ivanov",
                                                "reason": "answered elsewhere"}]
    assert journal.of(EventKind.HANGUP) == [{"by": "petrov", "talk_s": 2.0}]
    assert journal.closed_as == [(CallOutcome.ANSWERED, {"answered_by": "petrov"})]
    assert phones.reserved == {}
    assert phones.ended == ["1764583200.7"]


async def test_given_a_sequential_hunt_when_nobody_answers_then_missed_and_hung_up() -> None:
    agi = FakeAgi([lambda: "NOANSWER", lambda: "BUSY"])
    session, journal = make_session(ring(IVANOV, PETROV, mode=RingMode.SEQUENTIAL), agi)

    await session.run()

    assert [line for line in agi.sent if line.startswith("EXEC")] == [
        "EXEC Dial PJSIP/101,5,gU(pbxbrain-answered^c1)",
        "EXEC Dial PJSIP/102,5,gU(pbxbrain-answered^c1)",
        "EXEC Hangup 19"]
    assert agi.sent.index("SET PBXBRAIN_RESULT=done") < agi.sent.index("EXEC Hangup 19")
    assert [(e["staff"], e["reason"]) for e in journal.of(EventKind.LEG_ENDED)] == [
        ("ivanov", "no answer in time"), ("petrov", "busy")]
    assert journal.closed_as == [(CallOutcome.MISSED, {"responsible": "ivanov"})]


async def test_given_a_ring_all_nobody_answers_then_each_phone_has_its_own_reason() -> None:
    # One Dial rang three; DIALSTATUS is NOANSWER for all: HANGUPCAUSE tells them apart.
    agi = FakeAgi()

    def first_dial() -> str:
        agi.variables.update({
            "HANGUPCAUSE_KEYS()": "PJSIP/103-00000003,PJSIP/102-00000002,PJSIP/101-00000001",
            "HANGUPCAUSE(PJSIP/101-00000001,tech)": "SIP 486 Busy Here",
            "HANGUPCAUSE(PJSIP/102-00000002,tech)": "SIP 180 Ringing",  # rang out
            "HANGUPCAUSE(PJSIP/103-00000003,tech)": "SIP 415 Unsupported Media Type"})
        return "NOANSWER"

    agi.dials = [first_dial, lambda: "NOANSWER"]
    sidorov = Target("sidorov", "PJSIP/103")
    plan = Plan(steps=(Ring((IVANOV, PETROV, sidorov), RingMode.ALL, 5),
                       Ring((IVANOV, PETROV), RingMode.ALL, 5)),
                line="+74951234567", source=None, rule="route", responsible="ivanov")
    session, journal = make_session(plan, agi)

    await session.run()

    assert [(e["staff"], e["reason"]) for e in journal.of(EventKind.LEG_ENDED)] == [
        ("ivanov", "busy"), ("petrov", "no answer in time"),
        ("sidorov", "SIP 415 Unsupported Media Type"),
        # The first Dial's causes were cleared before the second: not read as its own.
        ("ivanov", "no answer in time"), ("petrov", "no answer in time")]
    assert journal.closed_as == [(CallOutcome.MISSED, {"responsible": "ivanov"})]
    assert [line.split(" ")[1] for line in agi.sent if line.startswith("EXEC")] == [
        "HangupCauseClear", "Dial", "HangupCauseClear", "Dial", "Hangup"]


async def test_given_one_phone_rung_then_dialstatus_is_its_reason_and_nothing_more_asked(
) -> None:
    agi = FakeAgi([lambda: "BUSY"])
    asked: list[str] = []
    get = agi.get_variable

    async def get_variable(name: str) -> str | None:
        asked.append(name)
        return await get(name)

    agi.get_variable = get_variable  # type: ignore[method-assign]
    session, journal = make_session(ring(IVANOV), agi)

    await session.run()

    assert journal.of(EventKind.LEG_ENDED)[0]["reason"] == "busy"
    assert not [name for name in asked if name.startswith("HANGUPCAUSE")]


async def test_given_the_caller_hangs_up_while_phones_ring_then_abandoned() -> None:
    agi = FakeAgi()

    def dial() -> str:
        agi.hung_up = True
        return "CANCEL"

    agi.dials = [dial, lambda: "ANSWER"]
    session, journal = make_session(ring(IVANOV, PETROV, mode=RingMode.SEQUENTIAL), agi)

    await session.run()

    assert [line for line in agi.sent if line.startswith("EXEC")] == [
        "EXEC Dial PJSIP/101,5,gU(pbxbrain-answered^c1)"]  # petrov never rung
    assert "SET PBXBRAIN_RESULT=done" not in agi.sent
    assert journal.closed_as == [(CallOutcome.ABANDONED, {"responsible": "ivanov"})]


async def test_given_a_blacklisted_caller_then_hung_up_busy_after_saying_done() -> None:
    agi = FakeAgi()
    plan = Plan(steps=(Reject("busy"),), line=None, source=None, rule="blacklist",
                record=False, unanswered_outcome=CallOutcome.REJECTED)
    session, journal = make_session(plan, agi)

    await session.run()

    assert agi.sent == ["SET PBXBRAIN_RESULT=done", "EXEC Hangup 17"]
    assert journal.closed_as == [(CallOutcome.REJECTED, {})]


async def test_given_a_number_without_rules_then_the_dialplan_fallback_takes_it() -> None:
    agi = FakeAgi()
    plan = Plan(steps=(), line=None, source=None, rule="unknown_line", fallback=True)
    session, journal = make_session(plan, agi)

    await session.run()

    assert agi.sent == ["SET PBXBRAIN_RESULT=fallback"]
    assert journal.closed_as == [(CallOutcome.DIALPLAN, {})]


async def test_given_pbxbrain_fails_then_the_result_is_not_done_and_the_safety_net_acts(
) -> None:
    def broken() -> Plan:
        raise RuntimeError("a bug")

    agi = FakeAgi()
    session, journal = make_session(broken, agi)

    await session.run()

    assert agi.sent == []  # PBXBRAIN_RESULT unset: the dialplan rings the fallback group
    assert journal.closed_as == [(CallOutcome.DIALPLAN, {})]
    assert journal.of(EventKind.ERROR) == [{"error": "RuntimeError('a bug')"}]


async def test_given_other_calls_hold_every_target_then_nothing_is_dialed() -> None:
    agi = FakeAgi()
    session, journal = make_session(ring(IVANOV, PETROV), agi,
                                    FakePhones(taken={"ivanov", "petrov"}))

    await session.run()

    assert agi.sent == ["SET PBXBRAIN_RESULT=done", "EXEC Hangup 19"]
    assert journal.of(EventKind.NOT_RUNG) == [{"staff": ["ivanov", "petrov"],
                                               "reason": "taken by another call"}]


async def test_given_the_answer_was_not_told_then_dials_variables_say_who() -> None:
    agi = FakeAgi()

    def dial() -> str:
        agi.variables.update(DIALEDPEERNAME="PJSIP/102-0000002a", ANSWEREDTIME_MS="3000")
        return "ANSWER"

    agi.dials = [dial]
    session, journal = make_session(ring(IVANOV, PETROV), agi)

    await session.run()

    assert journal.answered_by == ["petrov"]
    assert journal.closed_as == [(CallOutcome.ANSWERED, {"answered_by": "petrov"})]
    (error,) = journal.of(EventKind.ERROR)
    assert "pbxbrain-fallback-c1.wav" in error["error"]


@pytest.mark.parametrize(("channel", "target"), [
    ("PJSIP/101-0000002a", IVANOV),
    ("PJSIP/102-0000002b", PETROV),
    ("PJSIP/pstn-0000002c", MOBILE),  # a mobile through the trunk
    ("PJSIP/103-0000002d", None),
])
def test_the_answering_channel_is_mapped_to_its_target(channel: str,
                                                       target: Target | None) -> None:
    session, _ = make_session(ring(IVANOV, PETROV, MOBILE), FakeAgi())
    session._dialing = (IVANOV, PETROV, MOBILE)
    assert session.target_of(channel) == target


async def test_given_pbxbrain_stops_while_phones_ring_then_journaled_for_the_safety_net(
) -> None:
    agi = FakeAgi()
    ringing = asyncio.Event()
    never = asyncio.Event()

    async def blocking_exec(app: str, args: str = "", **_: object) -> None:
        ringing.set()
        await never.wait()

    agi.exec = blocking_exec  # type: ignore[method-assign]
    session, journal = make_session(ring(IVANOV), agi)
    task = asyncio.create_task(session.run())
    await ringing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert journal.closed_as == [(CallOutcome.DIALPLAN, {
        "reason": "pbxbrain stopped while phones rang; the dialplan's safety net takes the "
                  "call if nobody answers"})]
    assert session.app.phones.reserved == {}  # type: ignore[attr-defined]


async def test_given_pbxbrain_stops_during_the_conversation_then_the_call_is_left_open(
) -> None:
    # Dial holds the conversation in Asterisk: the next pbxbrain follows it to its end
    # (StasisApp._adopt_dial), so nothing here closes the call or claims its end.
    agi = FakeAgi()
    talking = asyncio.Event()
    never = asyncio.Event()
    session, journal = make_session(ring(IVANOV), agi)

    async def blocking_exec(app: str, args: str = "", **_: object) -> None:
        session.answered(IVANOV, "1764583200.7")
        talking.set()
        await never.wait()

    agi.exec = blocking_exec  # type: ignore[method-assign]
    task = asyncio.create_task(session.run())
    await talking.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert journal.answered_by == ["ivanov"]
    assert journal.closed_as == []
    assert journal.of(EventKind.HANGUP) == []


async def test_given_an_unknown_request_then_nothing_is_done() -> None:
    agi = FakeAgi()
    agi.script = "bogus"
    calls = AgiCalls(cast(StasisApp, SimpleNamespace()))

    await calls.handle(cast(AgiChannel, agi))

    assert agi.sent == []


async def test_given_a_prompt_before_the_ring_then_the_talk_counts_from_the_answer() -> None:
    # ANSWEREDTIME counts from the caller's own answer, which the prompt made: not used.
    agi = FakeAgi()
    plan = Plan(steps=(Play("pls-hold-while-try"), Ring((IVANOV,), RingMode.ALL, 5)),
                line="+74951234567", source=None, rule="route")
    session, journal = make_session(plan, agi)
    agi.dials = [answered_by(session, IVANOV, talk_ms=40_000)]

    await session.run()

    assert agi.sent[:2] == ["ANSWER", "EXEC Playback pls-hold-while-try"]
    (hangup,) = journal.of(EventKind.HANGUP)
    assert hangup["talk_s"] < 40  # from the answer pbxbrain was told of, by its clock
    assert journal.of(EventKind.PLAYED) == [{"prompt": "pls-hold-while-try"}]


async def test_given_a_sequential_hunt_over_taken_managers_then_one_not_rung_entry() -> None:
    agi = FakeAgi([lambda: "NOANSWER"])
    targets = tuple(Target(f"m{i}", f"PJSIP/{100 + i}") for i in range(5))
    session, journal = make_session(ring(*targets, mode=RingMode.SEQUENTIAL), agi,
                                    FakePhones(taken={"m0", "m1", "m3", "m4"}))

    await session.run()

    assert journal.of(EventKind.NOT_RUNG) == [{"staff": ["m0", "m1", "m3", "m4"],
                                               "reason": "taken by another call"}]


async def test_given_a_department_caller_id_then_the_phones_see_it_not_the_caller() -> None:
    agi = FakeAgi([lambda: "NOANSWER"])
    plan = Plan(steps=(Ring((IVANOV,), RingMode.ALL, 5, caller_id="+74951234567"),),
                line=None, source=None, rule="outbound")
    session, _ = make_session(plan, agi)

    await session.run()

    assert "EXEC Dial PJSIP/101,5,gU(pbxbrain-answered^c1)f(+74951234567)" in agi.sent
    assert not [line for line in agi.sent if "CALLERID" in line]


async def test_given_a_ring_all_longer_than_asterisk_takes_then_the_safety_net_has_it(
) -> None:
    agi = FakeAgi()
    targets = tuple(Target(f"m{i}", f"PJSIP/manager-{i:04d}") for i in range(200))
    phones = FakePhones()
    session, journal = make_session(ring(*targets), agi, phones)

    await session.run()

    assert agi.sent == ["SET PBXBRAIN_RESULT=fallback"]
    assert not journal.of(EventKind.RINGING)  # nobody reserved, rung or popped up
    assert phones.reserved == {}
    assert journal.closed_as[0][0] is CallOutcome.DIALPLAN


async def test_given_two_mobiles_through_one_trunk_then_dials_number_tells_them_apart(
) -> None:
    other = Target("petrov", "PJSIP/+79167654321@pstn", kind="mobile")
    session, _ = make_session(ring(MOBILE, other), FakeAgi())
    session._dialing = (MOBILE, other)

    assert session.target_of("PJSIP/pstn-0000002c", "+79167654321@pstn") == other
    assert session.target_of("PJSIP/pstn-0000002c") is None  # ambiguous: nobody guessed


async def test_given_the_caller_hangs_up_during_the_prompt_then_abandoned_quietly() -> None:
    agi = FakeAgi()
    agi.hang_up_in = "Playback"
    plan = Plan(steps=(Play("after-hours"),), line=None, source=None, rule="after_hours",
                unanswered_outcome=CallOutcome.AFTER_HOURS)
    session, journal = make_session(plan, agi)

    await session.run()

    assert agi.sent == ["ANSWER", "EXEC Playback after-hours"]
    assert journal.closed_as[0][0] is CallOutcome.ABANDONED
    assert not journal.of(EventKind.ERROR)  # not "prompt not played"
