"""The foundation, end to end: SIPp → Asterisk 22 → Stasis → pbxbrain → journal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pbxbrain.adapters.stasis import EVENT_TYPES
from pbxbrain.domain.model import CallOutcome, Direction, EventKind
from tests.e2e.conftest import JournalReader, assert_recorded, call_id_once
from tests.support.asterisk import Sandbox, ari_get, sandbox, wait_for
from tests.support.daemon import Daemon

pytestmark = pytest.mark.asterisk

DID = "74951000001"  # round-robin line of tests/e2e/pbxbrain.yaml, as the trunk sends it


def test_given_a_pstn_call_then_it_enters_stasis_and_is_journaled(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    before = datetime.now(UTC)
    phone = live_asterisk.phone("101")

    result = live_asterisk.call_from_pstn(DID, "89161112233", "caller_waits.xml", talk_ms=300)

    assert result.ok, f"SIPp call failed:\n{result.output}\n{result.errors}"
    assert phone.wait().ok
    call = journal.wait_closed_call("+79161112233")
    assert call.caller == "+79161112233"  # trunk's national 8-prefix, normalised to E.164
    assert call.caller_raw == "89161112233"
    assert call.dialed == DID
    assert call.direction is Direction.INBOUND
    assert call.outcome is CallOutcome.ANSWERED
    assert call.ended_at is not None
    assert call.answered_at is not None
    assert before - timedelta(seconds=1) <= call.started_at <= call.answered_at
    assert call.answered_at <= call.ended_at <= datetime.now(UTC) + timedelta(seconds=1)
    kinds = [e.kind for e in journal.journal(call.call_id)]
    assert kinds[:3] == [EventKind.ENTERED, EventKind.ROUTED, EventKind.RINGING]
    assert kinds[-1] == EventKind.ENDED


def test_given_the_daemon_connected_then_asterisk_sends_it_only_the_events_it_uses(
    daemon: Daemon, live_asterisk: Sandbox
) -> None:
    app = ari_get("/applications/pbxbrain")
    assert {e["type"] for e in app["events_allowed"]} == EVENT_TYPES


def test_given_asterisk_restarts_then_daemon_reports_not_ready_and_takes_the_next_call(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    sandbox("kill")

    def not_ready() -> dict[str, object] | None:
        status, body = daemon.health()
        return body if status == 503 and body["checks"]["ari"] != "ok" else None

    body = wait_for("health to report ARI down", not_ready, timeout_s=20)
    assert body["status"] == "unavailable"

    sandbox("start")
    daemon.wait_ready(timeout_s=30)

    phone = live_asterisk.phone("101")
    result = live_asterisk.call_from_pstn(DID, "+79162223344", "caller_waits.xml", talk_ms=300)
    assert result.ok, f"SIPp call after restart failed:\n{result.output}\n{result.errors}"
    assert phone.wait().ok
    call = journal.wait_closed_call("+79162223344")
    assert call.outcome is CallOutcome.ANSWERED


def test_given_pbxbrain_is_down_then_the_dialplan_fallback_still_answers_the_caller(
    live_asterisk: Sandbox,
) -> None:
    # No daemon: the app is not registered, Stasis() fails at once, and the dialplan
    # rings the fallback group (101 & 102): phone 101 answers, the caller talks, hangs up;
    # 102 rang too and is cancelled. (A phone that is absent would keep Asterisk's INVITE
    # alive for 32 s: SIP cannot CANCEL before a provisional answer.)
    phone = live_asterisk.phone("101")
    other = live_asterisk.phone("102", "phone_no_answer.xml")
    try:
        result = live_asterisk.call_from_pstn(DID, "+79163334455", "caller_hangs_up.xml",
                                              timeout_s=20)
        answered = phone.wait()
        assert other.wait().ok
    finally:
        phone.stop()
        other.stop()
    assert result.ok, f"caller was not answered by the fallback:\n{result.output}"
    assert answered.ok, f"phone 101 did not get the fallback call:\n{answered.output}"


def test_given_pbxbrain_is_killed_while_ringing_then_the_restart_hands_the_caller_to_the_fallback(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    # 101 rings and never answers: first pbxbrain's leg, then the fallback's.
    ivanov = live_asterisk.phone("101", "phone_no_answer.xml", calls=2)
    caller = live_asterisk.call_in_background(DID, "+79164445566", "caller_waits.xml",
                                              talk_ms=500)
    try:
        call_id = call_id_once(journal, "+79164445566", EventKind.RINGING)
        daemon.kill()  # SIGKILL: no goodbye, the caller sits in the Stasis app
        petrov = live_asterisk.phone("102")  # the dialplan fallback rings 101 & 102
        daemon.start()
        daemon.wait_ready()

        assert petrov.wait().ok  # the fallback reached him; he talked to the caller
        assert ivanov.wait().ok  # pbxbrain's leg hung up after the restart, then the
        # fallback's leg cancelled when petrov answered
        result = caller.wait()
        assert result.ok, result.output
    finally:
        caller.stop()
        ivanov.stop()

    call = journal.wait_closed_call("+79164445566")
    assert call.call_id == call_id
    assert call.outcome is CallOutcome.DIALPLAN
    assert EventKind.RECOVERED in [e.kind for e in journal.journal(call_id)]



def assert_adopted_and_closed(journal: JournalReader, live_asterisk: Sandbox, number: str,
                              call_id: str) -> None:
    """Adopted once by the new process, closed as ivanov's answered call, bridge gone."""
    call = journal.wait_closed_call(number)
    assert call.outcome is CallOutcome.ANSWERED
    assert call.answered_by == "ivanov"
    entries = journal.journal(call_id)
    assert [e.data["how"] for e in entries if e.kind is EventKind.RECOVERED] == [
        "conversation adopted after a restart"]
    assert EventKind.HANGUP in [e.kind for e in entries]
    assert not [b for b in live_asterisk.bridges() if b["id"] == f"{call_id}-bridge"]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_given_pbxbrain_restarts_during_a_conversation_then_it_goes_on_and_is_closed_at_its_end(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader, how: str
) -> None:
    # A restart (an upgrade, a crash) must cut nobody off: the conversation stays bridged
    # and recorded in Asterisk, and the new process adopts it.
    number = "+7916444558" + ("1" if how == "SIGKILL" else "2")
    ivanov = live_asterisk.phone("101")  # answers and talks until the caller hangs up
    caller = live_asterisk.call_in_background(DID, number, "caller_waits.xml", talk_ms=8000)
    try:
        call_id = call_id_once(journal, number, EventKind.BRIDGED)
        if how == "SIGKILL":
            daemon.kill()
        else:
            assert daemon.stop() == 0  # hands the conversation over at once
        daemon.start()
        daemon.wait_ready()
        wait_for("the adoption", lambda: EventKind.RECOVERED in
                 [e.kind for e in journal.journal(call_id)] or None)
        (bridge,) = [b for b in live_asterisk.bridges() if b["id"] == f"{call_id}-bridge"]
        assert len(bridge["channels"]) == 2, bridge  # still talking

        result = caller.wait()  # hangs up after its 8 s
        assert result.ok, result.output
        assert ivanov.wait().ok  # hung up by the new pbxbrain, when the caller left
    finally:
        caller.stop()
        ivanov.stop()

    assert_adopted_and_closed(journal, live_asterisk, number, call_id)
    assert_recorded(daemon, journal, call_id, 6.0, 10.0)  # the whole conversation


def test_given_the_caller_hangs_up_while_pbxbrain_is_down_then_the_restart_ends_the_talk(
    daemon: Daemon, live_asterisk: Sandbox, journal: JournalReader
) -> None:
    # The manager is left alone in the bridge: the new process hangs him up, keeps the
    # recording and closes the call as answered.
    number = "+79164445583"
    ivanov = live_asterisk.phone("101")
    caller = live_asterisk.call_in_background(DID, number, "caller_waits.xml", talk_ms=3000)
    try:
        call_id = call_id_once(journal, number, EventKind.BRIDGED)
        daemon.kill()
        result = caller.wait()  # hangs up while pbxbrain is down
        assert result.ok, result.output
        (bridge,) = [b for b in live_asterisk.bridges() if b["id"] == f"{call_id}-bridge"]
        assert len(bridge["channels"]) == 1, bridge  # ivanov, alone
        daemon.start()
        daemon.wait_ready()
        assert ivanov.wait().ok  # hung up by the new pbxbrain
    finally:
        caller.stop()
        ivanov.stop()

    assert_adopted_and_closed(journal, live_asterisk, number, call_id)
    assert_recorded(daemon, journal, call_id, 1.5, 5.0)
