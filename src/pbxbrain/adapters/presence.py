"""Who is free right now: Asterisk's view of the phones joined with pbxbrain's own calls.

* Asterisk: ``GET /endpoints/PJSIP`` gives every phone's state (``offline`` =
  unregistered or unreachable) and its channels (a phone with a channel is on a call,
  whether pbxbrain placed it or not). One answer serves the decisions of the next
  ``max_age_s`` (calls arriving together share one request), and is dropped as soon as
  one of pbxbrain's channels ends (``changed``): with hundreds of phones, that list was
  the costliest part of a decision, and pbxbrain's own calls are covered by reservations
  at once anyway. What can be stale is only a call pbxbrain did not place, by at most
  ``max_age_s``: such a phone answers busy and the plan goes on.
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
        self._phones = dict(phones)
        self._reserved: dict[str, str] = {}  # staff id -> call id
        self._max_age = max_age_s
        self._clock = clock
        self._asterisk: tuple[float, PresenceView] | None = None  # (taken at, view)
        self._asking: asyncio.Future[PresenceView] | None = None
        self._generation = 0  # bumped by changed(): an answer asked before is not kept
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

    def changed(self) -> None:
        """A channel of pbxbrain's ended: the next decision asks Asterisk again (even when
        a request is under way: it may have been answered before the channel ended)."""
        self._asterisk = None
        self._asking = None
        self._generation += 1

    async def view(self) -> PresenceView:
        """Busy and offline managers now, and whether Asterisk could be asked."""
        phones = await self._asterisk_view()
        return PresenceView(phones.busy | frozenset(self._reserved), phones.offline,
                            phones.error)

    async def _asterisk_view(self) -> PresenceView:
        cached = self._asterisk
        if cached is not None and self._clock() - cached[0] < self._max_age:
            return cached[1]
        if self._asking is None:
            generation = self._generation
            self._asking = asyncio.ensure_future(self._ask_asterisk())
            self._asking.add_done_callback(lambda done: self._asked(done, generation))
        return await asyncio.shield(self._asking)

    def _asked(self, done: asyncio.Future[PresenceView], generation: int) -> None:
        if self._asking is done:
            self._asking = None
        if (generation == self._generation and not done.cancelled()
                and done.exception() is None and not done.result().error):
            self._asterisk = (self._clock(), done.result())

    async def _ask_asterisk(self) -> PresenceView:
        self.asked += 1
        try:
            endpoints = await self._ari.endpoints_of("PJSIP")
        except AriError as exc:
            log.warning("cannot read phone states from Asterisk (%s); routing on "
                        "pbxbrain's own view only", exc)
            return PresenceView(frozenset(), frozenset(), str(exc))
        by_resource = {f"{e.technology}/{e.resource}": e for e in endpoints}
        busy: set[str] = set()
        offline: set[str] = set()
        for staff_id, phone in self._phones.items():
            endpoint = by_resource.get(phone)
            if endpoint is None:
                continue
            if endpoint.state == "offline":
                offline.add(staff_id)
            if endpoint.channel_ids:
                busy.add(staff_id)
        return PresenceView(frozenset(busy), frozenset(offline))
