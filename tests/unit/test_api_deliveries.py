"""``/v1/deliveries``: failed deliveries to the CRM, listed and retried by hand (on fakes)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pbxbrain.ports import StoreUnavailable
from tests.support.api_fakes import (
    CRM_TOKEN,
    READER_TOKEN,
    Client,
    FakeOutbox,
    Harness,
    bearer,
    make_deps,
    make_failure,
    serve,
)

CRM = bearer(CRM_TOKEN)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return make_deps(tmp_path)


@pytest.fixture
def outbox(harness: Harness) -> FakeOutbox:
    assert harness.outbox is not None
    return harness.outbox


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[Client]:
    async with serve(harness.deps) as c:
        yield c


async def answer(resp: Any, status: int) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_given_failures_then_listed_newest_first_retrying_or_failed(
        client: Client) -> None:
    page = await answer(await client.get("/v1/deliveries/failed", headers=CRM), 200)

    assert [d["delivery_id"] for d in page["deliveries"]] == [12, 4, 3, 2, 1]
    assert page["links"]["next"] is None
    by_id = {d["delivery_id"]: d for d in page["deliveries"]}
    assert by_id[3] == {
        "delivery_id": 3, "kind": "missed_call", "key": "missed:call0003",
        "call_id": "call0003", "status": "retrying", "attempts": 3,
        "last_error": "CRM said 503", "created_at": "2027-03-01T09:03:00Z",
        "next_attempt_at": "2027-03-01T09:13:00Z", "failed_at": None,
        "links": {"retry": "/v1/deliveries/3/retry", "call": "/v1/calls/call0003"}}
    assert (by_id[2]["status"], by_id[2]["next_attempt_at"], by_id[2]["failed_at"]) == (
        "failed", None, "2027-03-01T09:03:00Z")


async def test_given_a_message_without_its_call_then_no_call_link(
        client: Client, outbox: FakeOutbox) -> None:
    outbox.rows[20] = dataclasses.replace(make_failure(20), call_id=None)

    page = await answer(await client.get("/v1/deliveries/failed?limit=1", headers=CRM), 200)

    assert page["deliveries"][0]["links"]["call"] is None


async def test_given_a_limit_then_pages_follow_next_until_null(
        client: Client, outbox: FakeOutbox) -> None:
    seen: list[int] = []
    url: str | None = "/v1/deliveries/failed?limit=2"
    while url is not None:
        page = await answer(await client.get(url, headers=CRM), 200)
        seen += [d["delivery_id"] for d in page["deliveries"]]
        url = page["links"]["next"]

    assert seen == [12, 4, 3, 2, 1]
    assert outbox.requests == [(3, None), (3, 4), (3, 2)]


@pytest.mark.parametrize(("query", "field"), [("limit=0", "limit"), ("limit=201", "limit"),
                                              ("cursor=abc", "cursor"), ("kind=x", "kind")])
async def test_given_a_bad_query_then_422(client: Client, query: str, field: str) -> None:
    resp = await client.get(f"/v1/deliveries/failed?{query}", headers=CRM)

    assert (await answer(resp, 422))["error"]["field"] == field


async def test_given_a_failed_delivery_then_retry_queues_it_and_wakes_the_worker(
        client: Client, harness: Harness, outbox: FakeOutbox) -> None:
    resp = await client.post("/v1/deliveries/2/retry", headers=CRM)

    assert await answer(resp, 202) == {"delivery_id": 2, "status": "queued",
                                       "links": {"failed": "/v1/deliveries/failed"}}
    assert outbox.retried == [2]
    assert harness.notified == ["retry"]


@pytest.mark.parametrize("delivery_id", ["999", "abc", "-1", "1" * 19])
async def test_given_an_unknown_delivery_then_404_and_nothing_woken(
        client: Client, harness: Harness, outbox: FakeOutbox, delivery_id: str) -> None:
    resp = await client.post(f"/v1/deliveries/{delivery_id}/retry", headers=CRM)

    assert (await answer(resp, 404))["error"]["code"] == "not_found"
    assert outbox.retried == []
    assert harness.notified == []


async def test_given_a_read_token_then_it_lists_but_may_not_retry(
        client: Client, outbox: FakeOutbox) -> None:
    reader = bearer(READER_TOKEN)
    listed = await client.get("/v1/deliveries/failed", headers=reader)
    retried = await client.post("/v1/deliveries/2/retry", headers=reader)

    assert listed.status == 200
    error = (await answer(retried, 403))["error"]
    assert "'admin'" in error["message"]
    assert outbox.retried == []


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/deliveries/failed"),
                                              ("POST", "/v1/deliveries/2/retry")])
async def test_given_the_database_down_then_503(client: Client, outbox: FakeOutbox,
                                                method: str, path: str) -> None:
    outbox.fail = StoreUnavailable("connection refused")

    resp = await client.request(method, path, headers=CRM)

    assert (await answer(resp, 503))["error"]["code"] == "unavailable"
    assert resp.headers["Retry-After"] == "5"


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/deliveries/failed"),
                                              ("POST", "/v1/deliveries/2/retry")])
async def test_given_no_outbox_then_409(harness: Harness, method: str, path: str) -> None:
    deps = dataclasses.replace(harness.deps, outbox=None)
    async with serve(deps) as client:
        resp = await client.request(method, path, headers=CRM)

        assert (await answer(resp, 409))["error"]["code"] == "not_available"
