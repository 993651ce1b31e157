"""WebhookCrm against a local aiohttp server that checks signatures as a receiver should."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pbxbrain.adapters.crm_webhook import WebhookCrm, sign, verify_signature
from pbxbrain.domain.model import CallOutcome, CallSummary, Contact, Direction, MissedCall
from pbxbrain.ports import CrmRejected, CrmUnavailable
from tests.support.postgres import free_tcp_port

SECRET = "hmac-secret"
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
MISSED = MissedCall(call_id="c1", phone="+79161234567", outcome=CallOutcome.ABANDONED, at=T0,
                    due_at=T0 + timedelta(minutes=15), responsible="ivanov",
                    line="+74951234567", source="website", recording=None)


@dataclass
class Receiver:
    """The CRM side: answers ``status`` (or hangs while ``hang`` is set) and keeps what it
    received; ``lookup`` is the answer body of GET /lookup (None: 404)."""

    status: int = 204
    hang: bool = False
    lookup: bytes | None = None
    lookup_status: int = 200
    events: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bad_signatures: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self, request: web.Request, body: bytes) -> bool:
        ok = verify_signature(SECRET, request.headers.get("X-Pbxbrain-Timestamp", ""), body,
                              request.headers.get("X-Pbxbrain-Signature", ""))
        if not ok:
            self.bad_signatures += 1
        return ok

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self.check(request, body):
            return web.Response(status=401, text="bad signature")
        self.events.append(json.loads(body))
        self.headers.append(dict(request.headers))
        if self.hang:
            await self.released.wait()
        return web.Response(status=self.status, text="" if self.status < 300 else "nope")

    async def find(self, request: web.Request) -> web.Response:
        if not self.check(request, request.query_string.encode()):
            return web.Response(status=401)
        if self.hang:
            await self.released.wait()
        if self.lookup is None:
            return web.Response(status=404)
        return web.Response(status=self.lookup_status, body=self.lookup,
                            content_type="application/json")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    yield r
    r.released.set()


@pytest.fixture
async def server(receiver: Receiver) -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    app.router.add_get("/lookup", receiver.find)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    yield srv
    receiver.released.set()
    await srv.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def crm(server: TestServer, session: aiohttp.ClientSession) -> WebhookCrm:
    return WebhookCrm(session, str(server.make_url("/hook")), SECRET,
                      lookup_url=str(server.make_url("/lookup")),
                      crm_ids={"ivanov": "17", "petrov": "petrov"},
                      timeout_s=0.3, lookup_timeout_s=0.3)


# --------------------------------------------------------------------------- events


async def test_given_missed_call_then_a_signed_event_with_its_key_arrives(
    crm: WebhookCrm, receiver: Receiver,
) -> None:
    await crm.missed_call(MISSED, "missed:c1")

    [event] = receiver.events
    [headers] = receiver.headers
    assert receiver.bad_signatures == 0
    assert headers["Idempotency-Key"] == "missed:c1"
    assert headers["Content-Type"] == "application/json"
    assert (event["event"], event["key"]) == ("missed_call", "missed:c1")
    assert event["data"] == {
        "call_id": "c1", "phone": "+79161234567", "outcome": "abandoned",
        "at": "2026-12-02T09:00:00+00:00", "due_at": "2026-12-02T09:15:00+00:00",
        "responsible": "ivanov", "responsible_crm_id": "17", "line": "+74951234567",
        "source": "website", "recording": None,
    }


async def test_given_called_back_and_finished_call_then_their_events_arrive(
    crm: WebhookCrm, receiver: Receiver,
) -> None:
    call = CallSummary(call_id="c2", direction=Direction.INBOUND, channel_id="ch",
                       caller="+79161234567", caller_raw="89161234567",
                       dialed="+74951234567", started_at=T0, answered_at=T0,
                       ended_at=T0 + timedelta(minutes=2), outcome=CallOutcome.ANSWERED,
                       answered_by="petrov", line="+74951234567", source="website")

    await crm.called_back("+79161234567", "c2", "petrov", T0, "called_back:c2")
    await crm.log_call(call, "https://pbx.example/rec/r1", "finished:c2")

    back, finished = receiver.events
    assert back["event"] == "called_back"
    assert back["data"] == {"phone": "+79161234567", "call_id": "c2", "by": "petrov",
                            "by_crm_id": "petrov", "at": "2026-12-02T09:00:00+00:00"}
    assert finished["event"] == "call_finished"
    assert finished["data"]["recording_url"] == "https://pbx.example/rec/r1"
    assert finished["data"]["outcome"] == "answered"
    assert finished["data"]["answered_by_crm_id"] == "petrov"


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_given_server_error_or_retry_later_then_unavailable_not_rejected(
    crm: WebhookCrm, receiver: Receiver, status: int,
) -> None:
    receiver.status = status

    with pytest.raises(CrmUnavailable, match=f"HTTP {status}") as caught:
        await crm.missed_call(MISSED, "missed:c1")

    assert not isinstance(caught.value, CrmRejected)


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_given_client_error_then_the_message_is_rejected_for_good(
    crm: WebhookCrm, receiver: Receiver, status: int,
) -> None:
    receiver.status = status

    with pytest.raises(CrmRejected, match=f"HTTP {status}: nope"):
        await crm.missed_call(MISSED, "missed:c1")


async def test_given_server_slower_than_the_timeout_then_unavailable(
    crm: WebhookCrm, receiver: Receiver,
) -> None:
    receiver.hang = True

    with pytest.raises(CrmUnavailable, match=r"did not answer missed_call within 0\.3 s"):
        await crm.missed_call(MISSED, "missed:c1")


async def test_given_nothing_listening_then_unavailable(session: aiohttp.ClientSession) -> None:
    crm = WebhookCrm(session, f"http://127.0.0.1:{free_tcp_port()}/hook", SECRET)

    with pytest.raises(CrmUnavailable, match="unreachable"):
        await crm.missed_call(MISSED, "missed:c1")


async def test_given_wrong_secret_then_the_receiver_refuses_it(
    server: TestServer, session: aiohttp.ClientSession, receiver: Receiver,
) -> None:
    crm = WebhookCrm(session, str(server.make_url("/hook")), "not-the-secret")

    with pytest.raises(CrmRejected, match="HTTP 401"):
        await crm.missed_call(MISSED, "missed:c1")

    assert receiver.bad_signatures == 1
    assert receiver.events == []


async def test_given_screen_pop_that_fails_then_it_is_not_raised(
    crm: WebhookCrm, receiver: Receiver,
) -> None:
    receiver.status = 500

    await crm.screen_pop({"call_id": "c1", "staff_id": "ivanov", "phone": "+79161234567"})

    assert receiver.events[0]["event"] == "screen_pop"


def test_given_signature_then_only_the_same_secret_body_and_a_fresh_stamp_verify() -> None:
    body = b'{"event":"missed_call"}'
    stamp = str(int(T0.timestamp()))
    signature = sign(SECRET, stamp, body)

    assert signature.startswith("sha256=")
    assert len(signature) == len("sha256=") + 64
    assert verify_signature(SECRET, stamp, body, signature, now=T0 + timedelta(seconds=299))
    assert not verify_signature("other", stamp, body, signature, now=T0)
    assert not verify_signature(SECRET, stamp, body + b" ", signature, now=T0)
    assert not verify_signature(SECRET, stamp, body, signature, now=T0 + timedelta(minutes=6))
    assert not verify_signature(SECRET, "yesterday", body, signature, now=T0)


# --------------------------------------------------------------------------- lookups


async def test_given_known_number_then_contact_with_the_owner_as_staff_id(
    crm: WebhookCrm, receiver: Receiver,
) -> None:
    receiver.lookup = json.dumps({"phone": "+79161234567", "name": "Anna", "owner": 17,
                                  "crm_ref": "C-5", "extra": "ignored"}).encode()

    contact = await crm.find_contact("+79161234567")

    assert contact == Contact("+79161234567", "Anna", "ivanov", "C-5")
    assert receiver.bad_signatures == 0


async def test_given_owner_unknown_to_pbxbrain_then_contact_without_owner(
    crm: WebhookCrm, receiver: Receiver,
) -> None:
    receiver.lookup = b'{"phone": "+79161234567", "name": "Anna", "owner": "99"}'

    contact = await crm.find_contact("+79161234567")

    assert contact is not None
    assert contact.owner is None


async def test_given_unknown_number_then_none(crm: WebhookCrm) -> None:
    assert await crm.find_contact("+79161234567") is None


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"<html>oops</html>", 200, "not JSON"),
        (b'{"name": "Anna"}', 200, "phone: Field required"),
        (b'{"phone": "+79161234567", "owner": ["a"]}', 200, "owner"),
        (b"[1, 2]", 200, "body"),
        (b'{"error": "db down"}', 500, "HTTP 500"),
    ],
)
async def test_given_malformed_or_failed_lookup_then_unavailable_with_a_clear_message(
    crm: WebhookCrm, receiver: Receiver, body: bytes, status: int, message: str,
) -> None:
    receiver.lookup = body
    receiver.lookup_status = status

    with pytest.raises(CrmUnavailable, match=message):
        await crm.find_contact("+79161234567")


async def test_given_slow_lookup_then_unavailable(crm: WebhookCrm, receiver: Receiver) -> None:
    receiver.hang = True

    with pytest.raises(CrmUnavailable, match=r"did not answer within 0\.3 s"):
        await crm.find_contact("+79161234567")


async def test_given_no_lookup_url_then_no_contact(session: aiohttp.ClientSession) -> None:
    crm = WebhookCrm(session, "http://127.0.0.1:1/hook", SECRET)

    assert await crm.find_contact("+79161234567") is None
