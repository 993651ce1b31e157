"""``GET /v1/events``: call events as server-sent events (``text/event-stream``).

Each event is ``id: <id>`` / ``event: <type>`` / ``data: <JSON object>``; a comment line
(``: keep-alive``) goes out after ``heartbeat_s`` without events, so proxies keep the
connection and the server notices clients that left. A reconnecting client sends
``Last-Event-ID`` and gets what it missed while the bus still keeps it. The stream ends
when the server shuts down (``on_shutdown`` closes every subscription) or when the client
reads too slowly (the bus drops it; it reconnects).
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from pbxbrain.api.common import CLIENT, parse_query
from pbxbrain.api.deps import DEPS, STATE
from pbxbrain.api.errors import ApiError
from pbxbrain.api.events import Event, SubscriptionClosed
from pbxbrain.api.schemas import EventsQuery

__all__ = ["close_streams", "stream_events"]

log = logging.getLogger("pbxbrain.api")

_LAST_EVENT_ID = re.compile(r"[0-9a-f]{1,32}-[0-9]{1,20}")


def _frame(event: Event) -> bytes:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.data}\n\n".encode()


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of the EventBus."""
    deps, state, client = request.app[DEPS], request.app[STATE], request[CLIENT]
    query = parse_query(request, EventsQuery)
    types = query.types.split(",") if query.types is not None else None
    cap = deps.config.http.rate_limits.event_streams_per_token
    if state.streams[client.name] >= cap:
        raise ApiError(429, f"this token already holds {cap} open event streams; close one "
                            f"first", code="too_many_streams", headers={"Retry-After": "5"})
    last_id = request.headers.get("Last-Event-ID", "").strip()
    subscription = deps.events.subscribe(
        types=types, last_event_id=last_id if _LAST_EVENT_ID.fullmatch(last_id) else None)
    if subscription.closed:
        raise ApiError(503, "the server is shutting down; reconnect in a moment",
                       code="unavailable", headers={"Retry-After": "5"})
    state.streams[client.name] += 1
    state.subscriptions.add(subscription)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    try:
        await response.prepare(request)
        await response.write(b"retry: 3000\n: connected\n\n")
        while True:
            try:
                event = await subscription.next(deps.heartbeat_s)
            except SubscriptionClosed:
                break
            await response.write(_frame(event) if event is not None else b": keep-alive\n\n")
        await response.write_eof()
    except ConnectionError:
        log.debug("event stream of %s: client went away", client.name)
    finally:
        subscription.close()
        state.subscriptions.discard(subscription)
        state.streams[client.name] -= 1
        if state.streams[client.name] <= 0:
            del state.streams[client.name]
    return response


async def close_streams(app: web.Application) -> None:
    """``on_shutdown``: end every open event stream, so that the server stops cleanly."""
    for subscription in list(app[STATE].subscriptions):
        subscription.close()
