"""Who is free right now: Asterisk's view of the phones joined with pbxbrain's own calls.

* Asterisk: one ``GET /endpoints/PJSIP`` per decision gives every phone's state
  (``offline`` = unregistered or unreachable) and its channels (a phone with a channel is
  on a call, whether pbxbrain placed it or not).
* pbxbrain: a manager being rung or talking in a pbxbrain call is *reserved* by that call.
  ``reserve`` is synchronous and the event loop is single-threaded, so two concurrent calls
  can never both get the same free manager.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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

    def __init__(self, ari: AriClient, phones: Mapping[str, str]) -> None:
        """``phones``: staff id -> desk phone dial string (``PJSIP/101``)."""
        self._ari = ari
        self._phones = dict(phones)
        self._reserved: dict[str, str] = {}  # staff id -> call id

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

    async def view(self) -> PresenceView:
        """Busy and offline managers now, and whether Asterisk could be asked."""
        busy = set(self._reserved)
        offline: set[str] = set()
        try:
            endpoints = await self._ari.endpoints_of("PJSIP")
        except AriError as exc:
            log.warning("cannot read phone states from Asterisk (%s); routing on "
                        "pbxbrain's own view only", exc)
            return PresenceView(frozenset(busy), frozenset(), str(exc))
        by_resource = {f"{e.technology}/{e.resource}": e for e in endpoints}
        for staff_id, phone in self._phones.items():
            endpoint = by_resource.get(phone)
            if endpoint is None:
                continue
            if endpoint.state == "offline":
                offline.add(staff_id)
            if endpoint.channel_ids:
                busy.add(staff_id)
        return PresenceView(frozenset(busy), frozenset(offline))
