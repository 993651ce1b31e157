"""Inbound routing on the real Asterisk: SIPp callers behind the trunk, SIPp phones.

Phones: 101 ivanov, 102 petrov, 103 sidorov (department sales, round-robin, 3 s each),
104 kuznetsov (head), 105 orlov (never registered). Lines are in tests/e2e/pbxbrain.yaml.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import cast

import pytest

from pbxbrain.domain.model import CallOutcome, CallSummary, Direction, EventKind
from tests.e2e.conftest import JournalReader, assert_recorded, running_daemon
from tests.support.asterisk import PSTN, PSTN_AGI, Phone, Sandbox, SippResult, wait_for
from tests.support.daemon import Daemon

pytestmark = pytest.mark.asterisk

ROUND_ROBIN = "74951000001"
RING_ALL = "74951000002"
AFTER_HOURS = "74951000003"
UNREGISTERED_FIRST = "74951000004"

#: The same call through the Stasis app and, the dialplan in charge, by FastAGI.
BOTH_WAYS = pytest.mark.parametrize("source", [PSTN, PSTN_AGI], ids=["stasis", "fastagi"])


def finish(*phones: Phone) -> list[SippResult]:
    """Wait for every phone; each must have played its part exactly."""
    results = [p.wait() for p in phones]
    for phone, result in zip(phones, results, strict=True):
        assert result.ok, f"phone {phone.extension}:\n{result.output}\n{result.errors}"
    return results


def events(journal: JournalReader, call_id: str, kind: EventKind) -> list[dict[str, object]]:
    return [dict(e.data) for e in journal.journal(call_id) if e.kind is kind]


def ivanov_answers(live_asterisk: Sandbox, journal: JournalReader, number: str, *,
                   talk_ms: int) -> CallSummary:
    """``number`` calls the round-robin line, ivanov (first in turn) answers; the call,
    closed as answered once the caller hung up after ``talk_ms``."""
    ivanov = live_asterisk.phone("101")
    caller = live_asterisk.call_from_pstn(ROUND_ROBIN, number, "caller_waits.xml",
                                          talk_ms=talk_ms)
    finish(ivanov)
    assert caller.ok, caller.output
    call = journal.wait_closed_call(number)
    assert call.outcome is CallOutcome.ANSWERED
    return call


def test_given_round_robin_when_first_manager_answers_then_bridged_and_recorded(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    call = ivanov_answers(live_asterisk, journal, "+79161000001", talk_ms=2000)

    assert call.answered_by == "ivanov"
    assert call.line == "+74951000001"
    assert [e["staff"] for e in events(journal, call.call_id, EventKind.RINGING)] == ["ivanov"]
    assert_recorded(daemon, journal, call.call_id, 1.5, 4.0)  # the caller talked for 2 s


def test_given_ami_is_down_then_the_call_is_recorded_through_ari_instead(
    tmp_path: Path, live_asterisk: Sandbox
) -> None:
    # A wrong AMI secret: Asterisk refuses the login, so MixMonitor cannot be asked for.
    with running_daemon(tmp_path, "pbxbrain.yaml", env={"PBXBRAIN_AMI_SECRET": "wrong"},
                        ready=("ari", "database")) as daemon:
        journal = JournalReader(daemon.database_url)
        assert daemon.health()[1]["checks"]["ami"] != "ok"
        call = ivanov_answers(live_asterisk, journal, "+79161000011", talk_ms=1500)
        assert_recorded(daemon, journal, call.call_id, 0.5, 3.0, via="bridge",
                        taken="fetched")


def test_given_busy_and_unanswered_phones_then_the_next_manager_gets_the_call(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    ivanov = live_asterisk.phone("101", "phone_busy.xml")
    petrov = live_asterisk.phone("102", "phone_no_answer.xml")
    sidorov = live_asterisk.phone("103")
    caller = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79161000002", "caller_waits.xml",
                                          talk_ms=500)
    finish(ivanov, petrov, sidorov)
    assert caller.ok, caller.output

    call = journal.wait_closed_call("+79161000002")
    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by == "sidorov"
    ended = {e["staff"]: e["reason"] for e in events(journal, call.call_id,
                                                      EventKind.LEG_ENDED)}
    assert ended == {"ivanov": "busy", "petrov": "no answer in time"}


def test_given_an_unregistered_phone_then_it_is_skipped_and_the_next_step_rings(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    ivanov = live_asterisk.phone("101")
    caller = live_asterisk.call_from_pstn(UNREGISTERED_FIRST, "+79161000003",
                                          "caller_waits.xml", talk_ms=500)
    finish(ivanov)
    assert caller.ok, caller.output

    call = journal.wait_closed_call("+79161000003")
    assert call.answered_by == "ivanov"
    (routed,) = events(journal, call.call_id, EventKind.ROUTED)
    assert routed["skipped"] == {"orlov": "offline"}


def test_given_ring_all_then_both_ring_at_once_and_the_first_to_answer_wins(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    # Both phones ring together; ivanov answers at once, petrov's phone is still ringing
    # and must be cancelled at once. (Two phones answering within the same millisecond
    # is decided the same way, by the order of StasisStart events in the session queue,
    # but SIPp cannot play a phone whose answer may cross a CANCEL at any moment
    # reliably enough for CI: see the issue note.)
    ivanov = live_asterisk.phone("101")
    petrov = live_asterisk.phone("102", "phone_no_answer.xml")
    caller = live_asterisk.call_from_pstn(RING_ALL, "+79161000004", "caller_waits.xml",
                                          talk_ms=1000)
    finish(ivanov, petrov)  # petrov's INVITE was cancelled (200 + 487), not left ringing
    assert caller.ok, caller.output

    call = journal.wait_closed_call("+79161000004")
    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by == "ivanov"
    rang = {str(e["staff"]) for e in events(journal, call.call_id, EventKind.RINGING)}
    assert rang == {"ivanov", "petrov"}
    (routed,) = events(journal, call.call_id, EventKind.ROUTED)
    assert routed["steps"] == [
        {"kind": "ring", "mode": "all", "timeout_s": 3, "why": "ring_all ivanov, petrov",
         "targets": [{"staff_id": "ivanov", "endpoint": "PJSIP/101", "kind": "desk"},
                     {"staff_id": "petrov", "endpoint": "PJSIP/102", "kind": "desk"}]}]
    ended = {e["staff"]: e["reason"] for e in events(journal, call.call_id,
                                                      EventKind.LEG_ENDED)}
    assert ended == {"petrov": "answered elsewhere"}
    assert len(events(journal, call.call_id, EventKind.BRIDGED)) == 1


@BOTH_WAYS
def test_given_ring_all_with_one_phone_busy_and_one_ringing_out_then_each_has_its_reason(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader, source: str
) -> None:
    # One Dial rang both by FastAGI, and DIALSTATUS is one word for the two (NOANSWER):
    # each phone's reason is its own hang-up cause (HANGUPCAUSE), as a Stasis leg's is.
    number = "+79161000014" if source == PSTN else "+79162000014"
    ivanov = live_asterisk.phone("101", "phone_busy.xml")
    petrov = live_asterisk.phone("102", "phone_no_answer.xml")
    caller = live_asterisk.call_from_pstn(RING_ALL, number, "caller_any_outcome.xml",
                                          talk_ms=300, source=source)
    finish(ivanov, petrov)
    assert caller.ok, caller.output

    call = journal.wait_closed_call(number)
    assert call.outcome is CallOutcome.MISSED
    ended = {e["staff"]: e["reason"] for e in events(journal, call.call_id,
                                                      EventKind.LEG_ENDED)}
    assert ended == {"ivanov": "busy", "petrov": "no answer in time"}
    live_asterisk.wait_idle(timeout_s=5)


def test_given_ring_all_and_two_managers_answering_almost_together_then_exactly_one_wins(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    # Both phones ring together and answer 200 ms later, a few ms apart. The loser's
    # answer crosses Asterisk's CANCEL, or is hung up at once, or (when the winner was
    # quicker than that) is cancelled before it was sent: the scenario plays each way.
    # What the phones' SIP dialogs end like is Asterisk's and SIPp's business (in one
    # CI run in 30 Asterisk ignored a loser's 200 it had no transaction for any more);
    # what is asserted is pbxbrain's: one winner, one bridge, the loser let go, nothing
    # left in Asterisk.
    ivanov = live_asterisk.phone("101", "phone_answers_race.xml", calls=None)
    petrov = live_asterisk.phone("102", "phone_answers_race.xml", calls=None)
    try:
        caller = live_asterisk.call_from_pstn(RING_ALL, "+79161000008", "caller_waits.xml",
                                              talk_ms=1500)
        call = journal.wait_closed_call("+79161000008")
        live_asterisk.wait_idle(timeout_s=5)  # the phones answered Asterisk's BYEs
    finally:
        ivanov.stop()
        petrov.stop()
    assert caller.ok, caller.output

    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by in {"ivanov", "petrov"}
    loser = ({"ivanov", "petrov"} - {call.answered_by}).pop()
    assert len(events(journal, call.call_id, EventKind.BRIDGED)) == 1
    ended = {e["staff"]: e["reason"] for e in events(journal, call.call_id,
                                                      EventKind.LEG_ENDED)}
    assert ended == {loser: "answered elsewhere"}
    assert_recorded(daemon, journal, call.call_id, 0.5, 3.0)  # talked for 1.5 s
    live_asterisk.wait_idle(timeout_s=5)


def test_given_the_caller_hangs_up_while_ringing_then_abandoned_and_no_leg_left(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    ivanov = live_asterisk.phone("101", "phone_no_answer.xml")
    caller = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79161000005",
                                          "caller_hangs_up_while_ringing.xml", ring_ms=1000)
    finish(ivanov)  # its INVITE was cancelled
    assert caller.ok, caller.output

    call = journal.wait_closed_call("+79161000005")
    assert call.outcome is CallOutcome.ABANDONED
    assert call.answered_by is None
    live_asterisk.wait_idle(timeout_s=5)


@BOTH_WAYS
def test_given_a_blacklisted_caller_then_rejected_busy_without_ringing_anyone(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader, source: str
) -> None:
    caller = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79000000000", "caller_rejected.xml",
                                          source=source)
    assert caller.ok, caller.output

    call = journal.wait_closed_call("+79000000000")
    assert call.outcome is CallOutcome.REJECTED
    assert not events(journal, call.call_id, EventKind.RINGING)
    assert not journal.recordings(call.call_id)


@BOTH_WAYS
def test_given_after_hours_then_greeting_and_voicemail_is_kept(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader, source: str
) -> None:
    caller = live_asterisk.call_from_pstn(AFTER_HOURS, "+79161000006", "caller_waits.xml",
                                          talk_ms=8000, source=source)
    assert caller.ok, caller.output

    call = journal.wait_closed_call("+79161000006")
    assert call.outcome is CallOutcome.VOICEMAIL
    assert [e["prompt"] for e in events(journal, call.call_id, EventKind.PLAYED)] == [
        "vm-nobodyavail"]
    (rec,) = journal.recordings(call.call_id)
    assert (daemon.recordings / rec.path).is_file()
    assert rec.duration_s is not None
    assert rec.duration_s > 1.0, rec
    assert journal.wait_task("+79161000006").responsible is not None


def test_given_20_concurrent_calls_then_round_robin_never_doubles_up_a_manager(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    phones = [live_asterisk.phone(ext, calls=None, timeout_s=60) for ext in ("101", "102",
                                                                            "103")]
    try:
        caller = live_asterisk.call_from_pstn(ROUND_ROBIN, "+79161000020",
                                              "caller_any_outcome.xml", calls=20, rate=10,
                                              limit=20, timeout_s=60, talk_ms=1000)
    finally:
        for phone in phones:
            phone.stop()
    assert caller.ok, caller.output  # every call answered or cleanly refused

    def all_closed() -> list[CallSummary] | None:
        calls = journal.calls("+79161000020")
        return calls if len(calls) == 20 and all(c.outcome for c in calls) else None

    calls = wait_for("20 closed calls", all_closed, timeout_s=20)
    answered = [c for c in calls if c.outcome is CallOutcome.ANSWERED]
    assert {c.answered_by for c in answered} == {"ivanov", "petrov", "sidorov"}
    for manager in ("ivanov", "petrov", "sidorov"):
        talks = sorted((c.answered_at, c.ended_at) for c in answered if c.answered_by == manager)
        for (_, end), (start, _) in pairwise(talks):
            assert end is not None
            assert start is not None
            assert end <= start, f"{manager} had two calls at once"
    for call in calls:
        if call.outcome is not CallOutcome.ANSWERED:
            assert call.outcome is CallOutcome.MISSED
            (routed,) = events(journal, call.call_id, EventKind.ROUTED)
            # Missed only when nobody was free at the moment of the decision, or when the
            # ones it was to ring were taken by concurrent calls in between (not rung).
            rang = {str(e["staff"]) for e in events(journal, call.call_id, EventKind.RINGING)}
            not_rung = {str(staff) for e in events(journal, call.call_id, EventKind.NOT_RUNG)
                        for staff in cast(list[object], e["staff"])}
            skipped = routed["skipped"]
            assert isinstance(skipped, dict)
            assert set(skipped) | rang | not_rung >= {"ivanov", "petrov", "sidorov"}, routed


@BOTH_WAYS
def test_given_an_unknown_number_then_the_dialplan_fallback_takes_the_call(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader, source: str
) -> None:
    ivanov = live_asterisk.phone("101")  # the fallback group is 101 & 102
    petrov = live_asterisk.phone("102", "phone_no_answer.xml")
    caller = live_asterisk.call_from_pstn("74951999999", "+79161000007", "caller_waits.xml",
                                          talk_ms=300, source=source)
    finish(ivanov, petrov)
    assert caller.ok, caller.output
    call = journal.wait_closed_call("+79161000007")
    assert call.outcome is CallOutcome.DIALPLAN
    (routed,) = events(journal, call.call_id, EventKind.ROUTED)
    assert routed["rule"] == "unknown_line"


@pytest.mark.parametrize(
    ("dialed", "extension", "manager"),
    [("200", "101", "ivanov"),  # the sales department's short number: round-robin
     ("102", "102", "petrov")],  # a manager's short number: that manager
)
@pytest.mark.parametrize("account", ["104", "104-agi"], ids=["stasis", "fastagi"])
def test_given_a_desk_phone_dials_a_short_number_then_it_rings_who_it_names(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader, dialed: str,
    extension: str, manager: str, account: str,
) -> None:
    # 104-agi is kuznetsov's phone in context from-phones-agi: the call comes by FastAGI.
    phone = live_asterisk.phone(extension)
    caller = live_asterisk.sipp(
        "phone_calls.xml", "127.0.0.1:5060", "-i", "127.0.0.1", "-m", "1", "-s", dialed,
        "-key", "caller", account, "-key", "password", "change-me-104",
        "-key", "talk_ms", "300")
    finish(phone)
    assert caller.ok, f"{caller.output}\n{caller.errors}"

    call = journal.wait_closed_call("104")
    assert call.direction is Direction.INTERNAL
    assert call.dialed == dialed
    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by == manager
    (bridged,) = events(journal, call.call_id, EventKind.BRIDGED)
    assert (bridged["bridge"] == "dial") is (account == "104-agi")  # Dial's, not ARI's
