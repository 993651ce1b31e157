"""In-process publish/subscribe of call events, for ``GET /v1/events`` (server-sent events).

Publishers (the call sessions, click-to-call) call ``EventBus.publish(type, data)`` from
the event loop; it never blocks and never raises into the call path:

- ``data`` is serialised to JSON once, at publish time (a value that cannot be is logged
  and the event dropped);
- each subscriber has a bounded queue; a subscriber whose queue is full is *dropped* (its
  stream ends, with a log line) instead of slowing the publisher or growing memory;
- the last ``history`` events are kept, so a client that reconnects with ``Last-Event-ID``
  gets what it missed (if still kept). Event ids are ``<epoch>-<sequence>``; the epoch is
  new each time the bus is built (each daemon start), so an id from before a restart
  replays everything kept since.

The event types the API documents, with their JSON shapes, are the TypedDicts below.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypedDict

__all__ = [
    "EVENT_TYPES",
    "CallAnswered",
    "CallEnded",
    "CallRinging",
    "CrmIds",
    "Event",
    "EventBus",
    "ScreenPop",
    "ScreenPopContact",
    "Subscription",
    "SubscriptionClosed",
]

log = logging.getLogger("pbxbrain.api.events")

EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]{0,31}(?:\.[a-z][a-z0-9_]{0,31}){0,3}")


# --- the documented events ------------------------------------------------------------------

class CrmIds(TypedDict, total=False):
    """The CRM ids a click-to-call was started with."""

    contact_id: str
    deal_id: str


class CallRinging(TypedDict):
    """``call.ringing``: a leg of a call started ringing.

    ``leg`` is ``manager`` (a manager's phone rings: inbound calls, and the first leg of a
    click-to-call) or ``client`` (the client's number is dialed, click-to-call). ``client``
    is the external number (the caller, or the number dialed), E.164 when it parses;
    ``line`` the DID called (inbound) or the caller ID shown (outbound). ``at``: ISO 8601
    UTC.
    """

    call_id: str
    direction: Literal["inbound", "outbound"]
    leg: Literal["manager", "client"]
    manager: str | None
    client: str
    line: str | None
    at: str


class CallAnswered(TypedDict):
    """``call.answered``: a leg was answered (``leg`` as in ``call.ringing``)."""

    call_id: str
    direction: Literal["inbound", "outbound"]
    leg: Literal["manager", "client"]
    manager: str | None
    client: str
    at: str


class CallEnded(TypedDict):
    """``call.ended``: the call is over. ``outcome`` is a ``CallOutcome`` value
    (answered, missed, abandoned, rejected, voicemail, after_hours, dialplan, failed);
    ``manager`` who talked to the client (None if nobody); ``duration_s`` from start to
    end; ``talk_s`` from answer to end (None if not answered)."""

    call_id: str
    direction: Literal["inbound", "outbound"]
    outcome: str
    manager: str | None
    client: str
    duration_s: float
    talk_s: float | None
    at: str


class ScreenPopContact(TypedDict):
    """The client as the CRM knows it."""

    name: str
    owner: str | None
    crm_ref: str | None


class ScreenPop(TypedDict):
    """``screen_pop``: show the client's card to ``manager`` now (their phone rings).

    ``contact`` is None when the CRM does not know the number (or did not answer in time);
    ``crm`` holds the ids a click-to-call was started with (empty for inbound calls).
    """

    call_id: str
    direction: Literal["inbound", "outbound"]
    manager: str
    client: str
    client_name: str
    contact: ScreenPopContact | None
    line: str | None
    source: str | None
    crm: CrmIds
    at: str


EVENT_TYPES: tuple[str, ...] = ("call.ringing", "call.answered", "call.ended", "screen_pop")
"""The event types pbxbrain publishes (others may be added; clients ignore unknown ones)."""


# --- the bus --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Event:
    """One published event; ``data`` is its JSON text (an object)."""

    id: str
    seq: int
    type: str
    data: str


class SubscriptionClosed(Exception):
    """The subscription ended: closed by its owner, by the bus, or dropped for lagging."""


class Subscription:
    """One subscriber's bounded queue of events. Use ``next``; ``close`` when done."""

    def __init__(self, bus: EventBus, types: frozenset[str] | None, maxsize: int) -> None:
        self._bus = bus
        self.types = types
        self._maxsize = maxsize
        self._queue: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self.closed = False
        self.dropped = False

    def wants(self, event_type: str) -> bool:
        """Does this subscriber take events of ``event_type``?"""
        return self.types is None or event_type in self.types

    def offer(self, event: Event) -> bool:
        """Queue ``event`` without waiting; False when the queue is full."""
        if len(self._queue) >= self._maxsize:
            return False
        self._queue.append(event)
        self._wakeup.set()
        return True

    async def next(self, idle_s: float) -> Event | None:
        """The next event; None after ``idle_s`` seconds without one.

        Raises SubscriptionClosed once closed (queued events are still delivered first,
        except after a drop, which ends the stream at once).
        """
        while True:
            if self._queue and not self.dropped:
                return self._queue.popleft()
            if self.closed:
                raise SubscriptionClosed
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), idle_s)
            except TimeoutError:
                if not self._queue and not self.closed:
                    return None

    def close(self) -> None:
        """End the subscription (idempotent)."""
        if not self.closed:
            self.closed = True
            self._bus.forget(self)
            self._wakeup.set()

    def drop(self) -> None:
        """End the subscription because it lags; queued events are discarded."""
        self.dropped = True
        self._queue.clear()
        self.close()

    @property
    def backlog(self) -> int:
        """Events waiting to be read."""
        return len(self._queue)


class EventBus:
    """Publish JSON-able events to any number of subscribers, never blocking."""

    def __init__(self, *, queue_size: int = 256, history: int = 256,
                 epoch: str | None = None) -> None:
        if queue_size < 1 or history < 0:
            raise ValueError("queue_size must be >= 1 and history >= 0")
        self.epoch = epoch or secrets.token_hex(4)
        self._queue_size = queue_size
        self._history: deque[Event] = deque(maxlen=history)
        self._subscribers: set[Subscription] = set()
        self._seq = 0
        self.closed = False
        self.published = 0
        self.dropped_subscribers = 0

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)

    def publish(self, event_type: str, data: Mapping[str, object]) -> Event | None:
        """Send an event to every subscriber that wants it; None when it was refused (bad
        type, data that is not JSON, bus closed), which is logged. Call it from the event
        loop's thread (``loop.call_soon_threadsafe`` from any other)."""
        if self.closed:
            return None
        if not EVENT_TYPE.fullmatch(event_type):
            log.error("event type %r refused: expected names like call.ringing", event_type)
            return None
        try:
            text = json.dumps(dict(data), separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
        except (TypeError, ValueError) as exc:
            log.error("event %s dropped: its data is not JSON (%s)", event_type, exc)
            return None
        self._seq += 1
        event = Event(f"{self.epoch}-{self._seq}", self._seq, event_type, text)
        self._history.append(event)
        self.published += 1
        for subscription in list(self._subscribers):
            if subscription.wants(event_type) and not subscription.offer(event):
                self.dropped_subscribers += 1
                log.warning("event subscriber dropped: %d events waiting, it reads too "
                            "slowly (it may reconnect with Last-Event-ID)",
                            subscription.backlog)
                subscription.drop()
        return event

    def subscribe(self, *, types: Iterable[str] | None = None,
                  last_event_id: str | None = None) -> Subscription:
        """A new subscription (to ``types`` only, when given).

        With ``last_event_id`` the kept events after it are queued first.
        """
        subscription = Subscription(self, frozenset(types) if types is not None else None,
                                    self._queue_size)
        if self.closed:
            subscription.closed = True
            return subscription
        for event in self._missed(last_event_id):
            if subscription.wants(event.type):
                subscription.offer(event)
        self._subscribers.add(subscription)
        return subscription

    def forget(self, subscription: Subscription) -> None:
        """Remove a subscription (called by ``Subscription.close``)."""
        self._subscribers.discard(subscription)

    def close(self) -> None:
        """End every subscription; later publishes are ignored."""
        self.closed = True
        for subscription in list(self._subscribers):
            subscription.close()

    def _missed(self, last_event_id: str | None) -> list[Event]:
        if last_event_id is None:
            return []
        epoch, _, seq_text = last_event_id.rpartition("-")
        if epoch != self.epoch or not seq_text.isdigit():
            return list(self._history)  # from before a restart: everything kept since
        seq = int(seq_text)
        return [event for event in self._history if event.seq > seq]
