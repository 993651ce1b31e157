"""``/v1/calls``: click-to-call (checks, limits, idempotency) and reading calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pbxbrain.domain.model import CallOutcome, OriginateRequest
from tests.support.api_fakes import (
    CRM_TOKEN,
    READER_TOKEN,
    ClickToCallRefused,
    ClickToCallUnavailable,
    Client,
    Harness,
    api_config,
    bearer,
    make_call,
    make_deps,
    serve,
)

CRM = bearer(CRM_TOKEN)
GOOD = {"manager": "ivanov", "number": "+7 (495) 123-45-67",
        "crm": {"contact_id": "C-1042", "deal_id": "D-77"}}


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return make_deps(tmp_path)


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[Client]:
    async with serve(harness.deps) as c:
        yield c


async def post(client: Client, body: Any, key: str | None = None,
               token: str = CRM_TOKEN) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = bearer(token)
    if key is not None:
        headers["Idempotency-Key"] = key
    resp = await client.post("/v1/calls", json=body, headers=headers)
    return resp.status, await resp.json(), dict(resp.headers)


# --- click-to-call: the happy path ------------------------------------------------------------


async def test_given_a_valid_request_then_202_and_the_port_gets_checked_values(
        client: Client, harness: Harness) -> None:
    status, body, headers = await post(client, GOOD)

    assert status == 202
    assert body == {"call_id": "ctc0001", "status": "ringing_manager",
                    "links": {"self": "/v1/calls/ctc0001"}}
    assert headers["Location"] == "/v1/calls/ctc0001"
    assert harness.ctc.requests == [OriginateRequest(
        staff_id="ivanov", number="+74951234567",
        crm_ids={"contact_id": "C-1042", "deal_id": "D-77"}, idempotency_key=None,
        requested_by="crm")]


async def test_given_a_short_number_as_manager_then_the_staff_id_goes_to_the_port(
        client: Client, harness: Harness) -> None:
    status, _, _ = await post(client, {"manager": "102", "number": "84951234567"})

    assert status == 202
    assert harness.ctc.requests[0].staff_id == "petrov"
    assert harness.ctc.requests[0].crm_ids == {}


# --- click-to-call: refusals (the port is never called) ---------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"manager": "nobody", "number": "+74951234567"}, 422, "unknown_manager", "manager"),
        ({"manager": "mobile", "number": "+74951234567"}, 422, "manager_has_no_phone",
         "manager"),
        ({"manager": "ivanov", "number": "+12125550100"}, 422, "number_refused", "number"),
        ({"manager": "ivanov", "number": "+78091234567"}, 422, "number_refused", "number"),
        ({"manager": "ivanov"}, 422, "validation_error", "number"),
        ({"number": "+74951234567"}, 422, "validation_error", "manager"),
        ({"manager": "ivanov", "number": 74951234567}, 422, "validation_error", "number"),
        ({"manager": "ivanov", "number": "+74951234567", "extra": 1}, 422, "validation_error",
         "extra"),
        ({"manager": "ivanov", "number": "+74951234567", "crm": {"lead": "x"}}, 422,
         "validation_error", "crm.lead"),
        ({"manager": "ivanov", "number": "+74951234567", "crm": "C-1"}, 422,
         "validation_error", "crm"),
    ],
)
async def test_given_a_bad_request_then_4xx_names_the_field_and_no_call(
        client: Client, harness: Harness, body: dict[str, Any], status: int, code: str,
        field: str) -> None:
    got, answer, _ = await post(client, body)

    assert (got, answer["error"]["code"], answer["error"].get("field")) == (status, code, field)
    assert answer["error"]["message"]
    assert harness.ctc.requests == []


async def test_given_a_refused_number_then_the_reason_is_told(client: Client) -> None:
    _, answer, _ = await post(client, {"manager": "ivanov", "number": "+12125550100"})

    assert "not among the destinations" in answer["error"]["message"]


async def test_given_no_dial_prefixes_configured_then_every_number_is_refused(
        tmp_path: Path) -> None:
    h = make_deps(tmp_path, api_config(dial_allowed="[]"))
    async with serve(h.deps) as client:
        status, answer, _ = await post(client, GOOD)

    assert (status, answer["error"]["code"]) == (422, "number_refused")
    assert "disabled" in answer["error"]["message"]
    assert h.ctc.requests == []


async def test_given_a_manager_with_a_call_in_progress_then_409_and_no_call(
        client: Client, harness: Harness) -> None:
    harness.ctc.busy["ivanov"] = 1

    status, answer, _ = await post(client, GOOD)

    assert status == 409
    assert answer["error"]["code"] == "manager_busy"
    assert "already has a click-to-call in progress" in answer["error"]["message"]
    assert harness.ctc.requests == []


async def test_given_a_started_call_still_active_then_a_second_is_409(
        client: Client, harness: Harness) -> None:
    harness.ctc.keep_active = True

    first, _, _ = await post(client, GOOD)
    second, _answer, _ = await post(client, GOOD)
    other, _, _ = await post(client, {**GOOD, "manager": "petrov"})

    assert (first, second, other) == (202, 409, 202)
    assert [r.staff_id for r in harness.ctc.requests] == ["ivanov", "petrov"]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ClickToCallUnavailable("ARI is down"), 503, "unavailable"),
        (ClickToCallRefused("the manager's phone is offline"), 409, "refused"),
    ],
)
async def test_given_the_port_fails_then_503_or_409(
        client: Client, harness: Harness, error: Exception, status: int, code: str) -> None:
    harness.ctc.fail = error

    got, answer, headers = await post(client, GOOD)

    assert (got, answer["error"]["code"]) == (status, code)
    if status == 503:
        assert headers["Retry-After"] == "5"


async def test_given_the_port_crashes_then_500_json_without_a_trace(
        client: Client, harness: Harness) -> None:
    harness.ctc.fail = RuntimeError("secret internals at 0xdeadbeef")

    status, answer, _ = await post(client, GOOD)

    assert status == 500
    assert answer == {"error": {"code": "internal_error",
                                "message": "internal error; it was logged on the server"}}


# --- rate limits ------------------------------------------------------------------------------


async def test_given_too_many_requests_per_manager_then_429_then_recovery(
        client: Client, harness: Harness) -> None:
    statuses = [(await post(client, GOOD))[0] for _ in range(6)]
    status, answer, headers = await post(client, GOOD)

    assert statuses == [202] * 6
    assert status == 429
    assert answer["error"]["code"] == "rate_limited"
    assert "manager" in answer["error"]["message"]
    assert headers["Retry-After"] == "10"  # 6 a minute: one every 10 s
    assert len(harness.ctc.requests) == 6

    harness.clock.advance(10)
    assert (await post(client, GOOD))[0] == 202
    assert (await post(client, GOOD))[0] == 429


async def test_given_too_many_requests_per_token_then_429_whatever_the_manager(
        tmp_path: Path) -> None:
    h = make_deps(tmp_path, api_config(
        "rate_limits: {originate_per_token: 3, originate_per_manager: 100}\n"))
    async with serve(h.deps) as client:
        managers = ["ivanov", "petrov", "sidorov", "ivanov"]
        statuses = [(await post(client, {**GOOD, "manager": m}))[0] for m in managers]
        h.clock.advance(20)  # 3 a minute: one more after 20 s
        after = (await post(client, {**GOOD, "manager": "petrov"}))[0]

    assert statuses == [202, 202, 202, 429]
    assert after == 202


async def test_given_invalid_requests_then_they_count_against_the_token_limit(
        tmp_path: Path) -> None:
    h = make_deps(tmp_path, api_config("rate_limits: {originate_per_token: 2}\n"))
    async with serve(h.deps) as client:
        bad = [(await post(client, {**GOOD, "number": "+12125550100"}))[0] for _ in range(2)]
        status, _, headers = await post(client, GOOD)

    assert bad == [422, 422]
    assert status == 429
    assert headers["Retry-After"] == "30"
    assert h.ctc.requests == []


# --- idempotency ------------------------------------------------------------------------------


async def test_given_the_same_key_and_body_then_the_same_answer_and_one_call(
        client: Client, harness: Harness) -> None:
    first = await post(client, GOOD, key="k-1")
    again = await post(client, GOOD, key="k-1")

    assert first[0] == again[0] == 202
    assert first[1] == again[1]
    assert again[2]["Idempotent-Replayed"] == "true"
    assert again[2]["Location"] == "/v1/calls/ctc0001"
    assert len(harness.ctc.requests) == 1
    assert harness.ctc.requests[0].idempotency_key == "k-1"


async def test_given_the_same_key_and_another_body_then_409(
        client: Client, harness: Harness) -> None:
    await post(client, GOOD, key="k-1")

    status, answer, _ = await post(client, {**GOOD, "number": "+74959876543"}, key="k-1")

    assert (status, answer["error"]["code"]) == (409, "idempotency_conflict")
    assert answer["error"]["field"] == "Idempotency-Key"
    assert len(harness.ctc.requests) == 1


async def test_given_a_key_after_24_hours_then_a_new_call(
        client: Client, harness: Harness) -> None:
    await post(client, GOOD, key="k-1")
    harness.clock.advance(24 * 3600 + 1)

    status, body, _ = await post(client, GOOD, key="k-1")

    assert status == 202
    assert body["call_id"] == "ctc0002"


async def test_given_a_failed_request_then_its_key_may_be_used_again(
        client: Client, harness: Harness) -> None:
    harness.ctc.fail = ClickToCallUnavailable("down")
    assert (await post(client, GOOD, key="k-1"))[0] == 503

    harness.ctc.fail = None
    status, body, _ = await post(client, GOOD, key="k-1")

    assert (status, body["call_id"]) == (202, "ctc0001")


@pytest.mark.parametrize("key", ["", "a" * 129, "has space", "semi;colon", "ключ"])
async def test_given_a_malformed_key_then_422(client: Client, harness: Harness,
                                              key: str) -> None:
    resp = await client.post("/v1/calls", json=GOOD,
                             headers={**CRM, "Idempotency-Key": key} if key.isascii()
                             else {**CRM, "Idempotency-Key": key.encode().decode("latin-1")})

    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "Idempotency-Key"
    assert harness.ctc.requests == []


# --- reading calls ----------------------------------------------------------------------------


async def get_json(client: Client, url: str, token: str = READER_TOKEN,
                   ) -> tuple[int, dict[str, Any]]:
    resp = await client.get(url, headers=bearer(token))
    return resp.status, await resp.json()


async def test_given_calls_then_the_newest_come_first(client: Client) -> None:
    status, body = await get_json(client, "/v1/calls")

    assert status == 200
    ids = [c["call_id"] for c in body["calls"]]
    assert ids == ["c0ffee00c0ffee00", "call0005", "call0004", "call0003", "call0002",
                   "call0001"]
    assert body["links"]["next"] is None
    first = body["calls"][1]
    assert first["started_at"] == "2027-03-01T09:05:00Z"
    assert first["links"] == {"self": "/v1/calls/call0005"}
    assert first["outcome"] == "answered"


async def test_given_a_limit_then_pages_follow_next_to_the_end(client: Client) -> None:
    seen: list[str] = []
    url: str | None = "/v1/calls?limit=2"
    pages = 0
    while url is not None:
        status, body = await get_json(client, url)
        assert status == 200
        seen += [c["call_id"] for c in body["calls"]]
        url = body["links"]["next"]
        pages += 1

    assert seen == ["c0ffee00c0ffee00", "call0005", "call0004", "call0003", "call0002",
                    "call0001"]
    assert pages == 3


async def test_given_filters_then_the_next_link_keeps_them(client: Client) -> None:
    _, first = await get_json(client, "/v1/calls?limit=2&since=2027-03-01T12:02:00%2B03:00"
                                      "&number=%2B7%20916%20123-45-67")
    _, second = await get_json(client, first["links"]["next"])
    _, third = await get_json(client, second["links"]["next"])

    assert first["links"]["next"] == ("/v1/calls?since=2027-03-01T12:02:00%2B03:00"
                                      "&number=%2B7+916+123-45-67&limit=2&cursor=call0005")
    assert [c["call_id"] for c in first["calls"] + second["calls"] + third["calls"]] == [
        "c0ffee00c0ffee00", "call0005", "call0004", "call0003", "call0002"]
    assert third["links"]["next"] is None


async def test_given_filters_then_they_reach_the_store_normalised(
        client: Client, harness: Harness) -> None:
    url = ("/v1/calls?since=2027-03-01T12:02:00%2B03:00&until=2027-03-01T09:05:00Z"
           "&number=8%20916%20123-45-67&outcome=answered")
    status, body = await get_json(client, url)

    assert status == 200
    assert [c["call_id"] for c in body["calls"]] == ["call0003", "call0002"]
    request = harness.store.list_requests[-1]
    assert request["number"] == "+79161234567"
    assert request["outcome"] == CallOutcome.ANSWERED
    assert str(request["since"]) == "2027-03-01 09:02:00+00:00"


async def test_given_an_unescaped_plus_in_an_offset_then_it_is_still_read(
        client: Client, harness: Harness) -> None:
    status, _ = await get_json(client, "/v1/calls?since=2027-03-01T12:02:00+03:00")

    assert status == 200
    assert str(harness.store.list_requests[-1]["since"]) == "2027-03-01 09:02:00+00:00"


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("until=0001-01-01T00:00:04%2B03:00", 0),  # before the beginning of time in UTC
        ("since=0001-01-01T00:00:04%2B03:00", 6),
        ("since=9999-12-31T23:59:59-23:59", 0),  # after the end of time in UTC
        ("until=9999-12-31T23:59:59-23:59", 6),
    ],
)
async def test_given_moments_beyond_utc_then_they_are_clamped(client: Client, query: str,
                                                              count: int) -> None:
    status, body = await get_json(client, f"/v1/calls?{query}")

    assert status == 200
    assert len(body["calls"]) == count


async def test_given_a_manager_filter_then_only_their_calls_across_pages(
        client: Client, harness: Harness) -> None:
    harness.store.calls.extend(make_call(n, answered_by="sidorov") for n in range(10, 14))

    status, body = await get_json(client, "/v1/calls?manager=102&limit=1")
    ids = [c["call_id"] for c in body["calls"]]
    _, body2 = await get_json(client, body["links"]["next"])

    assert status == 200
    assert ids == ["call0005"]
    assert [c["call_id"] for c in body2["calls"]] == ["call0002"]


async def test_given_a_manager_no_longer_configured_then_their_calls_by_id(
        client: Client, harness: Harness) -> None:
    harness.store.calls.append(make_call(20, answered_by="left-the-company"))

    _, gone = await get_json(client, "/v1/calls?manager=left-the-company")
    _, nobody = await get_json(client, "/v1/calls?manager=nobody")

    assert [c["call_id"] for c in gone["calls"]] == ["call0020"]
    assert nobody["calls"] == []


async def test_given_a_line_filter_then_only_that_line(client: Client) -> None:
    _, body = await get_json(client, "/v1/calls?line=%2B74959876543")

    assert [c["call_id"] for c in body["calls"]] == ["call0005"]
    assert body["links"]["next"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=yesterday", "since"),
        ("since=2027-03-01T09:00:00", "since"),  # no offset
        ("until=2027-02-30T00:00:00Z", "until"),  # no such day
        ("until=1700000000", "until"),  # a timestamp is not RFC 3339
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("outcome=won", "outcome"),
        ("manager=../etc", "manager"),
        ("number=abc", "number"),
        ("number=" + "1" * 21, "number"),
        ("line=%2B7;1", "line"),
        ("cursor=../../x", "cursor"),
        ("sort=asc", "sort"),
        ("limit=1&limit=2", "limit"),
    ],
)
async def test_given_a_bad_filter_then_422_names_it(client: Client, query: str,
                                                    field: str) -> None:
    status, body = await get_json(client, f"/v1/calls?{query}")

    assert status == 422
    assert body["error"]["field"] == field


async def test_given_a_call_id_then_the_call_with_timeline_and_recordings(
        client: Client) -> None:
    status, body = await get_json(client, "/v1/calls/call0003", token=CRM_TOKEN)

    assert status == 200
    assert body["call_id"] == "call0003"
    assert [e["kind"] for e in body["timeline"]] == ["entered", "answered"]
    assert body["timeline"][1]["data"] == {"by": "ivanov"}
    recs = {r["recording_id"]: r for r in body["recordings"]}
    assert recs["rec-1"]["links"] == {"audio": "/v1/recordings/rec-1"}
    assert recs["rec-1"]["size_bytes"] == 1024


@pytest.mark.parametrize("call_id", ["nope", "..%2F..%2Fetc", "a" * 65, "%00"])
async def test_given_an_unknown_call_then_404_json(client: Client, call_id: str) -> None:
    status, body = await get_json(client, f"/v1/calls/{call_id}")

    assert status == 404
    assert body["error"]["code"] == "not_found"
