"""The dialplan in charge: calls handed to pbxbrain by FastAGI, on the real Asterisk.

The trunk ``pstn-agi`` (SIPp callers on 127.0.0.4) sends its DIDs to the context
``from-pstn-agi``: ``AGI(agi://127.0.0.1:4573/inbound,${EXTEN})``. pbxbrain decides as for a
Stasis call (the same lines of tests/e2e/pbxbrain.yaml) and runs the plan as dialplan
applications; the journal, recordings and missed-call tasks are the same. Rejection,
after hours and unknown numbers run both ways in tests/e2e/test_routing.py.
"""

from __future__ import annotations

import socket

import pytest

from pbxbrain.domain.model import CallOutcome, EventKind
from tests.e2e.conftest import JournalReader, assert_recorded, call_id_once
from tests.e2e.test_routing import RING_ALL, ROUND_ROBIN, events, finish
from tests.support.asterisk import PSTN_AGI, Sandbox
from tests.support.daemon import Daemon

pytestmark = pytest.mark.asterisk


def test_given_round_robin_by_fastagi_when_the_manager_answers_then_dialed_and_recorded(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    ivanov = live_asterisk.phone("101")
    caller = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79162000001", "caller_waits.xml",
                                          talk_ms=2000, source=PSTN_AGI)
    finish(ivanov)
    assert caller.ok, caller.output

    call = journal.wait_closed_call("+79162000001")
    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by == "ivanov"
    assert call.answered_at is not None
    assert call.line == "+74951000001"
    assert [e["staff"] for e in events(journal, call.call_id, EventKind.RINGING)] == ["ivanov"]
    (bridged,) = events(journal, call.call_id, EventKind.BRIDGED)
    assert bridged["bridge"] == "dial"
    (hangup,) = events(journal, call.call_id, EventKind.HANGUP)
    assert hangup["by"] == "caller"
    assert 1.5 <= float(str(hangup["talk_s"])) <= 4.0, hangup
    assert_recorded(daemon, journal, call.call_id, 1.5, 4.0)  # the caller talked for 2 s
    live_asterisk.wait_idle(timeout_s=5)


def test_given_busy_and_unanswered_phones_by_fastagi_then_the_next_manager_gets_the_call(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    ivanov = live_asterisk.phone("101", "phone_busy.xml")
    petrov = live_asterisk.phone("102", "phone_no_answer.xml")
    sidorov = live_asterisk.phone("103", "phone_answers_then_hangs_up.xml",
                                  keys={"talk_ms": 1000})
    caller = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79162000002", "caller_waits.xml",
                                          talk_ms=5000, source=PSTN_AGI)
    finish(ivanov, petrov, sidorov)
    assert caller.ok, caller.output

    call = journal.wait_closed_call("+79162000002")
    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by == "sidorov"
    ended = {e["staff"]: e["reason"] for e in events(journal, call.call_id,
                                                      EventKind.LEG_ENDED)}
    assert ended == {"ivanov": "busy", "petrov": "no answer in time"}
    (hangup,) = events(journal, call.call_id, EventKind.HANGUP)
    assert hangup["by"] == "sidorov"  # the manager hung up first; pbxbrain hung up the caller
    live_asterisk.wait_idle(timeout_s=5)


def test_given_ring_all_by_fastagi_then_the_first_to_answer_wins_and_the_other_is_free(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    ivanov = live_asterisk.phone("101")
    petrov = live_asterisk.phone("102", "phone_no_answer.xml")
    talking = live_asterisk.call_in_background(RING_ALL, "+79162000003", "caller_waits.xml",
                                               talk_ms=4000, source=PSTN_AGI)
    finish(petrov)  # cancelled by Dial once ivanov answered
    # While ivanov still talks, petrov is free again: a second call rings him.
    petrov = live_asterisk.phone("102")
    second = live_asterisk.call_from_pstn(RING_ALL, "+79162000013", "caller_waits.xml",
                                          talk_ms=500, source=PSTN_AGI)
    finish(petrov)
    assert second.ok, second.output
    first = talking.wait()
    finish(ivanov)
    assert first.ok, first.output

    call = journal.wait_closed_call("+79162000003")
    assert call.answered_by == "ivanov"
    assert {str(e["staff"]) for e in events(journal, call.call_id, EventKind.RINGING)} == {
        "ivanov", "petrov"}
    ended = {e["staff"]: e["reason"] for e in events(journal, call.call_id,
                                                      EventKind.LEG_ENDED)}
    assert ended == {"petrov": "answered elsewhere"}
    assert journal.wait_closed_call("+79162000013").answered_by == "petrov"
    live_asterisk.wait_idle(timeout_s=5)


def test_given_the_caller_hangs_up_while_ringing_by_fastagi_then_abandoned_with_a_task(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    ivanov = live_asterisk.phone("101", "phone_no_answer.xml")
    caller = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79162000004",
                                          "caller_hangs_up_while_ringing.xml", ring_ms=1000,
                                          source=PSTN_AGI)
    finish(ivanov)
    assert caller.ok, caller.output

    call = journal.wait_closed_call("+79162000004")
    assert call.outcome is CallOutcome.ABANDONED
    assert journal.wait_task("+79162000004").responsible == "ivanov"
    live_asterisk.wait_idle(timeout_s=5)


def test_given_pbxbrain_is_down_then_the_fastagi_safety_net_rings_the_fallback_group(
    live_asterisk: Sandbox,
) -> None:
    with socket.socket() as probe:  # nobody takes FastAGI requests
        assert probe.connect_ex(("127.0.0.1", 4573)) != 0
    ivanov = live_asterisk.phone("101")
    petrov = live_asterisk.phone("102", "phone_no_answer.xml")
    caller = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79162000008", "caller_waits.xml",
                                          talk_ms=300, source=PSTN_AGI)
    finish(ivanov, petrov)
    assert caller.ok, caller.output
    live_asterisk.wait_idle(timeout_s=5)


def test_given_pbxbrain_is_down_then_a_fastagi_desk_phone_still_dials_a_short_number(
    live_asterisk: Sandbox,
) -> None:
    # 104-agi: kuznetsov's phone in context from-phones-agi; its safety net dials 102.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 4573)) != 0
    petrov = live_asterisk.phone("102")
    caller = live_asterisk.sipp(
        "phone_calls.xml", "127.0.0.1:5060", "-i", "127.0.0.1", "-m", "1", "-s", "102",
        "-key", "caller", "104-agi", "-key", "password", "change-me-104",
        "-key", "talk_ms", "300")
    finish(petrov)
    assert caller.ok, f"{caller.output}\n{caller.errors}"
    live_asterisk.wait_idle(timeout_s=5)


@pytest.mark.parametrize("how", ["killed", "restarted", "down_until_it_ended"])
def test_given_pbxbrain_goes_away_during_a_fastagi_conversation_then_the_next_one_adopts_it(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader, how: str
) -> None:
    # The conversation is Asterisk's Dial: pbxbrain going away cannot cut it. The next
    # process follows it to its end (or finds it ended), keeps the answering phone's
    # recording and closes the call as answered, at the conversation's real end.
    number = {"killed": "+79162000021", "restarted": "+79162000023",
              "down_until_it_ended": "+79162000024"}[how]
    ivanov = live_asterisk.phone("101")
    caller = live_asterisk.call_in_background(ROUND_ROBIN, number, "caller_waits.xml",
                                              talk_ms=4000, source=PSTN_AGI)
    try:
        call_id = call_id_once(journal, number, EventKind.RECORDING_STARTED)
        if how == "restarted":
            assert daemon.stop() == 0
            (left,) = journal.calls(number)
            assert left.outcome is None  # left open for the next one
        else:
            daemon.kill()
        if how == "down_until_it_ended":
            result = caller.wait()
            assert ivanov.wait().ok
            daemon.start()
            daemon.wait_ready()
        else:
            daemon.start()
            daemon.wait_ready()
            result = caller.wait()
            assert ivanov.wait().ok
        assert result.ok, result.output  # talked for its whole 4 s, then hung up
    finally:
        caller.stop()
        ivanov.stop()

    call = journal.wait_closed_call(number)
    assert call.call_id == call_id
    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by == "ivanov"
    followed = how != "down_until_it_ended"
    assert [e.data["how"] for e in journal.journal(call_id)
            if e.kind is EventKind.RECOVERED] == [
        "FastAGI conversation followed after a restart" if followed
        else "the FastAGI conversation ended while pbxbrain was down"]
    assert call.ended_at is not None
    assert call.answered_at is not None
    # Its real end: the caller talks 4 s. Not the restart, a second or so later, when it
    # ended while no pbxbrain ran (then its recording's length says when).
    assert 3.8 <= (call.ended_at - call.answered_at).total_seconds() <= 4.5
    assert_recorded(daemon, journal, call_id, 3.0, 5.0)
    live_asterisk.wait_idle(timeout_s=5)


def test_given_pbxbrain_is_killed_while_a_fastagi_call_rings_then_the_safety_net_has_it(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    # Dial rings ivanov on (3 s) without pbxbrain; nobody answers, so the lines after
    # AGI() ring the fallback group (101 & 102), where petrov answers.
    ivanov = live_asterisk.phone("101", "phone_no_answer.xml", calls=2)
    caller = live_asterisk.call_in_background(ROUND_ROBIN, "+79162000022", "caller_waits.xml",
                                              talk_ms=6000, source=PSTN_AGI)
    try:
        call_id = call_id_once(journal, "+79162000022", EventKind.RINGING)
        daemon.kill()
        petrov = live_asterisk.phone("102")
        daemon.start()
        daemon.wait_ready()
        assert petrov.wait().ok  # the fallback group reached him
        result = caller.wait()
        assert result.ok, result.output
        assert ivanov.wait().ok  # rung twice: by pbxbrain's Dial, then by the fallback's
    finally:
        caller.stop()
        ivanov.stop()

    call = journal.wait_closed_call("+79162000022")
    assert call.call_id == call_id
    assert call.outcome is CallOutcome.DIALPLAN  # closed by the restart, caller still there
    live_asterisk.wait_idle(timeout_s=5)
