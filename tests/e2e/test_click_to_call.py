"""Click-to-call through the HTTP API, on the real Asterisk: SIPp is the manager's desk
phone (101, ivanov) and the client out in the PSTN (the trunk's far end)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.support.asterisk import Sandbox, SippResult, wait_for
from tests.support.daemon import Daemon

pytestmark = pytest.mark.asterisk

TOKEN = "e2e-crm-token-0123456789abcdef"  # its sha256 is in tests/e2e/pbxbrain.yaml
CALLER_ID = "+74951000001"  # the sales department's outbound caller ID


def api(daemon: Daemon, method: str, path: str, body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        daemon.base_url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                 **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def click(daemon: Daemon, number: str, manager: str = "ivanov") -> str:
    status, _, body = api(daemon, "POST", "/v1/calls", {"manager": manager, "number": number})
    assert status == 202, body
    call_id: str = json.loads(body)["call_id"]
    return call_id


def finished(daemon: Daemon, call_id: str, timeout_s: float = 20) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status, _, body = api(daemon, "GET", f"/v1/calls/{call_id}")
        if status != 200:
            return None
        call: dict[str, Any] = json.loads(body)
        return call if call["outcome"] is not None else None

    return wait_for(f"click-to-call {call_id} to end", done, timeout_s)


def ok(*results: SippResult) -> None:
    for result in results:
        assert result.ok, f"{result.output}\n{result.errors}"


def test_given_both_answer_then_bridged_recorded_and_the_recording_streams_with_range(
    daemon: Daemon, live_asterisk: Sandbox
) -> None:
    manager = live_asterisk.phone("101")
    client = live_asterisk.pstn_phone("phone_answers_then_hangs_up.xml", talk_ms=1500)
    call_id = click(daemon, "8 (916) 300-00-01")
    ok(manager.wait(), client.wait())

    call = finished(daemon, call_id)
    assert call["direction"] == "outbound"
    assert call["dialed"] == "+79163000001"
    assert call["outcome"] == "answered"
    assert call["answered_by"] == "ivanov"
    assert call["line"] == CALLER_ID  # the caller ID the client saw
    kinds = [e["kind"] for e in call["timeline"]]
    assert kinds.count("ringing") == 2  # the manager, then the client
    (rec,) = call["recordings"]
    assert rec["duration_s"] is not None
    assert 1.0 <= rec["duration_s"] <= 4.0
    # MixMonitor on the manager's channel, stopped before pbxbrain hung it up
    assert [e["data"]["via"] for e in call["timeline"]
            if e["kind"] == "recording_started"] == ["mixmonitor"]

    status, headers, audio = api(daemon, "GET", rec["links"]["audio"])
    assert status == 200
    assert headers["Content-Type"].startswith("audio/")
    assert len(audio) == rec["size_bytes"]
    status, headers, part = api(daemon, "GET", rec["links"]["audio"],
                                headers={"Range": "bytes=0-99"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes 0-99/{rec['size_bytes']}"
    assert part == audio[:100]


def test_given_the_manager_does_not_answer_then_no_answer_and_the_client_is_never_dialed(
    daemon: Daemon, live_asterisk: Sandbox
) -> None:
    manager = live_asterisk.phone("101", "phone_no_answer.xml")
    call_id = click(daemon, "+79163000002")
    ok(manager.wait())
    call = finished(daemon, call_id)
    assert call["outcome"] == "no_answer"
    assert [e["data"].get("staff") for e in call["timeline"] if e["kind"] == "ringing"] == [
        "ivanov"]


@pytest.mark.parametrize(
    ("client_scenario", "outcome"),
    [("phone_busy.xml", "busy"), ("phone_no_answer.xml", "no_answer")],
)
def test_given_the_client_does_not_take_it_then_the_outcome_says_why(
    daemon: Daemon, live_asterisk: Sandbox, client_scenario: str, outcome: str
) -> None:
    manager = live_asterisk.phone("101")  # answers; pbxbrain hangs him up at the end
    client = live_asterisk.pstn_phone(client_scenario)
    call_id = click(daemon, "+79163000003")
    ok(manager.wait(), client.wait())
    call = finished(daemon, call_id)
    assert call["outcome"] == outcome
    assert call["answered_by"] is None


def test_given_the_manager_hangs_up_while_the_client_rings_then_abandoned(
    daemon: Daemon, live_asterisk: Sandbox
) -> None:
    manager = live_asterisk.phone("101", "phone_answers_then_hangs_up.xml",
                                  keys={"talk_ms": 1000})
    client = live_asterisk.pstn_phone("phone_no_answer.xml")  # cancelled when he gives up
    call_id = click(daemon, "+79163000004")
    ok(manager.wait(), client.wait())
    assert finished(daemon, call_id)["outcome"] == "abandoned"


def test_given_the_manager_hangs_up_after_talking_then_answered(
    daemon: Daemon, live_asterisk: Sandbox
) -> None:
    manager = live_asterisk.phone("101", "phone_answers_then_hangs_up.xml",
                                  keys={"talk_ms": 1500})
    client = live_asterisk.pstn_phone("phone_answers.xml")
    call_id = click(daemon, "+79163000005")
    ok(manager.wait(), client.wait())
    call = finished(daemon, call_id)
    assert call["outcome"] == "answered"
    hangups = [e["data"] for e in call["timeline"] if e["kind"] == "hangup"]
    assert hangups
    assert hangups[0]["by"] == "caller"  # the manager's side ended it


def test_given_bad_requests_then_4xx_and_no_channel_in_asterisk(
    daemon: Daemon, live_asterisk: Sandbox
) -> None:
    cases = [
        ({"manager": "ivanov", "number": "+79163000006&PJSIP/999"}, None, 422),
        ({"manager": "ivanov", "number": "+44 20 7946 0000"}, None, 422),  # not in dial_allowed
        ({"manager": "nobody", "number": "+79163000006"}, None, 422),
        ({"manager": "ivanov", "number": "+79163000006"}, "wrong-token", 401),
    ]
    for body, token, expected in cases:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        status, _, answer = api(daemon, "POST", "/v1/calls", body, headers)
        assert status == expected, (body, status, answer)
    assert live_asterisk.channels() == []


@pytest.mark.parametrize(
    ("account", "manager", "number"),
    [("101", "ivanov", "+79163000010"),  # context from-phones: Stasis
     ("104-agi", "kuznetsov", "+79163000011")],  # context from-phones-agi: FastAGI
    ids=["stasis", "fastagi"])
def test_given_a_manager_dials_out_from_his_desk_phone_then_caller_id_recording_journal(
    daemon: Daemon, live_asterisk: Sandbox, account: str, manager: str, number: str
) -> None:
    # The client is shown the department's line (kuznetsov heads sales), not the phone's.
    client = live_asterisk.pstn_phone("client_shown_sales_line.xml")
    password = f"change-me-{account.partition('-')[0]}"
    phone = live_asterisk.sipp(
        "phone_calls.xml", "127.0.0.1:5060", "-i", "127.0.0.1", "-m", "1",
        "-s", "8" + number.removeprefix("+7"), "-key", "caller", account,
        "-key", "password", password, "-key", "talk_ms", "1200")
    ok(phone, client.wait())

    def journaled() -> dict[str, Any] | None:
        status, _, body = api(daemon, "GET", "/v1/calls?number=" + number.replace("+", "%2B"))
        calls = json.loads(body)["calls"] if status == 200 else []
        return calls[0] if calls and calls[0]["outcome"] else None

    listed = wait_for("the outbound call in the journal", journaled)
    call = finished(daemon, listed["call_id"])
    assert call["direction"] == "outbound"
    assert call["dialed"] == number
    assert call["outcome"] == "answered"
    assert call["answered_by"] == manager
    assert call["line"] == CALLER_ID
    (bridged,) = [e for e in call["timeline"] if e["kind"] == "bridged"]
    assert (bridged["data"]["bridge"] == "dial") is (account == "104-agi")  # Dial's
    (rec,) = call["recordings"]
    assert rec["duration_s"] is not None
    assert rec["duration_s"] >= 0.5
