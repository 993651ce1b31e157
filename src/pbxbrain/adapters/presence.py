"""Who is free right now: Asterisk's view of the phones joined with pbxbrain's own calls.

* Asterisk: ``GET /endpoints/PJSIP`` gives every phone's state (``offline`` =
  unregistered or unreachable) and its channels (a phone with a channel is on a call,
  whether pbxbrain placed it or not). One answer serves the decisions of the next
  ``max_age_s`` (calls arriving together share one request): with hundreds of phones,
  that list was the costliest part of a decision, for pbxbrain and for Asterisk. A
  channel that ends (``changed``) is taken out of the answer kept, and out of the one
  being fetched (Asterisk may have listed it before it ended), so a phone whose call
  ended is free at once without asking again; pbxbrain's own new calls are covered by
  reservations at once anyway. What can be stale is only a call pbxbrain did not place,
  by at most ``max_age_s``: such a phone answers busy and the plan goes on.
* pbxbrain: a manager being rung or talking in a pbxbrain call is *reserved* by that call.
  ``reserve`` is synchronous and the event loop is single-threaded, so two concurrent calls
  can never both get the same free manager.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pbxbrain.adapters.ari import AriClient, AriError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _PhoneChannels:
    """Asterisk's answer: the managers each channel is on (a phone may be shared)."""

    channels: dict[str, tuple[str, ...]]  # channel id -> staff ids of its phone
    offline: frozenset[str]
    error: str = ""

    def view(self) -> PresenceView:
        busy = frozenset(s for staff in self.channels.values() for s in staff)
        return PresenceView(busy, self.offline, self.error)


@dataclass(frozen=True, slots=True)
class PresenceView:
    """A snapshot for one decision."""

    busy: frozenset[str]
    offline: frozenset[str]
    error: str = ""  # set when Asterisk could not be asked (then only reservations count)


class Presence:
    """Tracks reservations; asks Asterisk for phone states."""

    def __init__(self, ari: AriClient, phones: Mapping[str, str], *,
                 max_age_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        """``phones``: staff id -> desk phone dial string (``PJSIP/101``)."""
        self._ari = ari
        self._staff_of_phone: dict[str, tuple[str, ...]] = {}  # two may share a phone
        for staff_id, phone in phones.items():
            self._staff_of_phone[phone] = (*self._staff_of_phone.get(phone, ()), staff_id)
        self._reserved: dict[str, str] = {}  # staff id -> call id
        self._max_age = max_age_s
        self._clock = clock
        self._asterisk: tuple[float, _PhoneChannels] | None = None  # (taken at, answer)
        self._asking: asyncio.Future[_PhoneChannels] | None = None
        self._ended: set[str] = set()  # channels ended while Asterisk is being asked
        self.asked = 0  # requests made to Asterisk (for tests and health)

    def reserved_by(self, staff_id: str) -> str | None:
        """The call that holds this manager, if any."""
        return self._reserved.get(staff_id)

    def reserve(self, staff_id: str, call_id: str) -> bool:
        """Hold a manager for a call; False when another call holds him."""
        holder = self._reserved.get(staff_id)
        if holder is not None and holder != call_id:
            return False
        self._reserved[staff_id] = call_id
        return True

    def release(self, staff_id: str, call_id: str) -> None:
        """Let a manager go (only the holding call can)."""
        if self._reserved.get(staff_id) == call_id:
            del self._reserved[staff_id]

    def release_all(self, call_id: str) -> None:
        """Let every manager held by a call go."""
        for staff_id in [s for s, c in self._reserved.items() if c == call_id]:
            del self._reserved[staff_id]

    async def snapshot(self) -> tuple[frozenset[str], frozenset[str]]:
        """(busy, offline) managers now (``PhoneStates`` port)."""
        view = await self.view()
        return view.busy, view.offline

    def changed(self, channel_id: str) -> None:
        """A channel ended: its phone, if it has no other, is free now (in the answer kept,
        and in the one being fetched, which Asterisk may have made before it ended)."""
        cached = self._asterisk
        if cached is not None:
            cached[1].channels.pop(channel_id, None)
        if self._asking is not None:
            self._ended.add(channel_id)

    async def view(self) -> PresenceView:
        """Busy and offline managers now, and whether Asterisk could be asked."""
        phones = (await self._asterisk_answer()).view()
        return PresenceView(phones.busy | frozenset(self._reserved), phones.offline,
                            phones.error)

    async def _asterisk_answer(self) -> _PhoneChannels:
        cached = self._asterisk
        if cached is not None and self._clock() - cached[0] < self._max_age:
            return cached[1]
        if self._asking is None:
            self._ended = set()
            self._asking = asyncio.ensure_future(self._ask_asterisk())
            self._asking.add_done_callback(self._asked)
        return await asyncio.shield(self._asking)

    def _asked(self, done: asyncio.Future[_PhoneChannels]) -> None:
        if self._asking is done:
            self._asking = None
        if not done.cancelled() and done.exception() is None and not done.result().error:
            answer = done.result()
            # A channel that ended between the answer and this callback (a loop turn
            # later) was only remembered: take it out now (waiters share this answer).
            for channel_id in self._ended:
                answer.channels.pop(channel_id, None)
            self._asterisk = (self._clock(), answer)
        self._ended = set()

    async def _ask_asterisk(self) -> _PhoneChannels:
        self.asked += 1
        try:
            endpoints = await self._ari.endpoints_of("PJSIP")
        except AriError as exc:
            log.warning("cannot read phone states from Asterisk (%s); routing on "
                        "pbxbrain's own view only", exc)
            return _PhoneChannels({}, frozenset(), str(exc))
        by_resource = {f"{e.technology}/{e.resource}": e for e in endpoints}
        channels: dict[str, tuple[str, ...]] = {}
        offline: set[str] = set()
        for phone, staff in self._staff_of_phone.items():
            endpoint = by_resource.get(phone)
            if endpoint is None:
                continue
            if endpoint.state == "offline":
                offline.update(staff)
            for channel_id in endpoint.channel_ids:
                if channel_id not in self._ended:  # ended while Asterisk was answering
                    channels[channel_id] = staff
        return _PhoneChannels(channels, frozenset(offline))
