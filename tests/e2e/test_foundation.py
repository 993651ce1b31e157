"""The foundation, end to end: SIPp → Asterisk 22 → Stasis → pbxbrain → journal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pbxbrain.adapters.stasis import EVENT_TYPES
from pbxbrain.domain.model import CallOutcome, Direction, EventKind
from tests.e2e.conftest import JournalReader
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
        def ringing() -> str | None:
            calls = journal.calls("+79164445566")
            if calls and any(e.kind is EventKind.RINGING
                             for e in journal.journal(calls[0].call_id)):
                return calls[0].call_id
            return None

        call_id = wait_for("pbxbrain to ring ivanov", ringing)
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

