"""The EventBus (bounded, never blocking) and ``GET /v1/events`` (server-sent events)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pbxbrain.api.deps import STATE
from pbxbrain.api.events import (
    CallRinging,
    EventBus,
    SubscriptionClosed,
)
from tests.support.api_fakes import (
    READER_TOKEN,
    Client,
    Harness,
    api_config,
    bearer,
    make_deps,
    serve,
)

RINGING: CallRinging = {"call_id": "c1", "direction": "inbound", "leg": "manager",
                        "manager": "ivanov", "client": "+79161234567",
                        "line": "+74951234567", "at": "2027-03-01T09:00:00Z"}


# --- the bus ----------------------------------------------------------------------------------


async def test_given_subscribers_then_each_gets_the_events_it_wants() -> None:
    bus = EventBus()
    everything = bus.subscribe()
    pops = bus.subscribe(types=["screen_pop"])

    bus.publish("call.ringing", RINGING)
    bus.publish("screen_pop", {"call_id": "c1"})

    first = await everything.next(1)
    second = await everything.next(1)
    only = await pops.next(1)
    assert first is not None
    assert second is not None
    assert only is not None
    assert (first.type, second.type, only.type) == ("call.ringing", "screen_pop", "screen_pop")
    assert json.loads(first.data) == RINGING
    assert first.id == f"{bus.epoch}-1"
    assert await pops.next(0.01) is None  # nothing more: idle


async def test_given_a_slow_subscriber_then_it_is_dropped_and_publishing_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(queue_size=3)
    slow = bus.subscribe()
    fast = bus.subscribe()
    got: list[str] = []

    for n in range(5):
        assert bus.publish("call.ringing", {**RINGING, "call_id": f"c{n}"}) is not None
        event = await fast.next(1)
        assert event is not None
        got.append(json.loads(event.data)["call_id"])

    assert got == ["c0", "c1", "c2", "c3", "c4"]
    assert slow.dropped
    assert slow.closed
    assert bus.subscribers == 1
    assert "dropped" in caplog.text
    with pytest.raises(SubscriptionClosed):
        await slow.next(1)


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("Call Ringing", RINGING),
        ("call.ringing\nevent: evil", RINGING),
        ("", RINGING),
        ("call.ringing", {"at": object()}),
        ("call.ringing", {"x": float("nan")}),
    ],
)
def test_given_a_bad_event_then_it_is_refused_without_raising(
        event_type: str, data: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    sub = bus.subscribe()

    with caplog.at_level(logging.ERROR):
        assert bus.publish(event_type, data) is None

    assert sub.backlog == 0
    assert caplog.records


async def test_given_a_last_event_id_then_the_missed_events_come_first() -> None:
    bus = EventBus(history=10)
    for n in range(4):
        bus.publish("call.ringing", {**RINGING, "call_id": f"c{n}"})

    resumed = bus.subscribe(last_event_id=f"{bus.epoch}-2")
    restarted = bus.subscribe(last_event_id="00000000-99")
    fresh = bus.subscribe()

    assert resumed.backlog == 2
    assert restarted.backlog == 4  # an id from before a restart: all that is kept
    assert fresh.backlog == 0


async def test_given_the_bus_closes_then_every_subscription_ends() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    waiter = asyncio.create_task(sub.next(10))
    await asyncio.sleep(0)

    bus.close()

    with pytest.raises(SubscriptionClosed):
        await waiter
    assert bus.publish("call.ringing", RINGING) is None
    assert bus.subscribe().closed


# --- server-sent events -----------------------------------------------------------------------


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return make_deps(tmp_path, api_config("rate_limits: {event_streams_per_token: 2}\n"),
                     heartbeat_s=0.05)


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[Client]:
    async with serve(harness.deps) as c:
        yield c


async def read_frame(resp: aiohttp.ClientResponse) -> list[str]:
    """Lines up to the next blank line."""
    lines: list[str] = []
    while True:
        line = await asyncio.wait_for(resp.content.readline(), 5)
        if not line:
            return lines
        text = line.decode().rstrip("\n")
        if text == "":
            return lines
        lines.append(text)


async def read_event(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """The next event frame (comments skipped), as field -> value."""
    while True:
        frame = await read_frame(resp)
        fields = dict(line.split(": ", 1) for line in frame if not line.startswith(":"))
        if "event" in fields:
            return fields


async def wait_subscribers(harness: Harness, count: int) -> None:
    for _ in range(200):
        if harness.bus.subscribers == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{harness.bus.subscribers} subscribers, expected {count}")


async def test_given_a_stream_then_events_come_as_id_event_data(
        client: Client, harness: Harness) -> None:
    resp = await client.get("/v1/events", headers=bearer(READER_TOKEN))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert await read_frame(resp) == ["retry: 3000", ": connected"]
    await wait_subscribers(harness, 1)

    harness.bus.publish("call.ringing", RINGING)
    event = await read_event(resp)

    assert event["event"] == "call.ringing"
    assert event["id"] == f"{harness.bus.epoch}-1"
    assert json.loads(event["data"]) == RINGING
    resp.close()


async def test_given_no_events_then_heartbeat_comments(client: Client) -> None:
    resp = await client.get("/v1/events", headers=bearer(READER_TOKEN))
    await read_frame(resp)

    assert await read_frame(resp) == [": keep-alive"]
    assert await read_frame(resp) == [": keep-alive"]
    resp.close()


async def test_given_a_types_filter_and_a_last_event_id_then_only_those_missed_events(
        client: Client, harness: Harness) -> None:
    harness.bus.publish("call.ringing", RINGING)
    harness.bus.publish("screen_pop", {"call_id": "c1"})
    harness.bus.publish("screen_pop", {"call_id": "c2"})

    resp = await client.get("/v1/events?types=screen_pop,call.ended",
                            headers={**bearer(READER_TOKEN),
                                     "Last-Event-ID": f"{harness.bus.epoch}-2"})
    event = await read_event(resp)

    assert (event["event"], json.loads(event["data"])) == ("screen_pop", {"call_id": "c2"})
    resp.close()


@pytest.mark.parametrize("query", ["types=Screen", "types=a,,b", "types=x;y", "other=1"])
async def test_given_a_bad_query_then_422(client: Client, query: str) -> None:
    resp = await client.get(f"/v1/events?{query}", headers=bearer(READER_TOKEN))

    assert resp.status == 422


async def test_given_too_many_streams_for_a_token_then_429(client: Client,
                                                          harness: Harness) -> None:
    first = await client.get("/v1/events", headers=bearer(READER_TOKEN))
    second = await client.get("/v1/events", headers=bearer(READER_TOKEN))
    await wait_subscribers(harness, 2)

    third = await client.get("/v1/events", headers=bearer(READER_TOKEN))

    assert (first.status, second.status, third.status) == (200, 200, 429)
    assert (await third.json())["error"]["code"] == "too_many_streams"
    first.close()
    await wait_subscribers(harness, 1)  # the server noticed (heartbeat write failed)
    fourth = await client.get("/v1/events", headers=bearer(READER_TOKEN))
    assert fourth.status == 200
    second.close()
    fourth.close()


async def test_given_shutdown_then_streams_end_cleanly(client: Client,
                                                      harness: Harness) -> None:
    resp = await client.get("/v1/events", headers=bearer(READER_TOKEN))
    await read_frame(resp)
    await wait_subscribers(harness, 1)

    await client.app.shutdown()  # what AppRunner.cleanup does first
    rest = await asyncio.wait_for(resp.content.read(), 5)

    assert b"retry" not in rest  # the stream simply ended
    assert harness.bus.subscribers == 0
    assert not client.app[STATE].subscriptions
    assert not client.app[STATE].streams
