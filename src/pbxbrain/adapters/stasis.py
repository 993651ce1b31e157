"""The Stasis app: turns ARI events into calls and runs each call in its own task.

Dispatch is on the app args the dialplan passes to ``Stasis(pbxbrain, ...)``:

* ``inbound,<DID>``: a call from the PSTN trunk;
* ``internal,<short>`` and ``outbound,<number>``: calls from managers' desk phones.

Each call gets a :class:`CallSession` with its own event queue, so that events of one
call are handled in order and a slow call never delays another. Any failure inside a
session falls back safely: the caller is sent to the dialplan's fallback context (which
rings the fallback group) or, if even that fails, hung up; never left in silence.

For now (the foundation), a session answers, journals, and hands the call back to the
dialplan after the ``Stasis()`` line. The routing plan executor replaces that step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pbxbrain.adapters.ari import (
    AriClient,
    AriError,
    AriEvent,
    AriNotFound,
    CallerId,
    Channel,
    ChannelDestroyed,
    ChannelHangupRequest,
    StasisEnd,
    StasisStart,
)
from pbxbrain.domain.model import CallOutcome, Direction, EventKind, InboundCall
from pbxbrain.domain.phone import normalize_caller
from pbxbrain.service import Journal

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The wall clock, aware UTC (the one place pbxbrain reads it)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StasisSettings:
    """What the Stasis app needs to know from the config."""

    node: str
    default_region: str
    fallback_context: str | None = None
    session_deadline_s: float = 4 * 3600.0  # no call lasts longer; its task is reaped


class CallSession:
    """One call in the app: its caller's channel, its events, its journal."""

    def __init__(self, app: StasisApp, call: InboundCall) -> None:
        self.app = app
        self.call = call
        self.events: asyncio.Queue[AriEvent] = asyncio.Queue()
        self.caller_gone = False
        self.left_app = False
        self.task: asyncio.Task[None] | None = None

    def feed(self, event: AriEvent) -> None:
        """Deliver one of the call's ARI events (from the event stream, in order)."""
        match event:
            case ChannelHangupRequest() | ChannelDestroyed():
                self.caller_gone = True
            case StasisEnd():
                self.left_app = True
        self.events.put_nowait(event)

    async def run(self) -> None:
        """Answer, journal, hand back to the dialplan; close the call when it leaves."""
        ari, journal, call = self.app.ari, self.app.journal, self.call
        journal.entered(call)
        outcome = CallOutcome.DIALPLAN
        try:
            await ari.answer(call.channel_id)
            journal.event(call.call_id, self.app.clock(), EventKind.ANSWERED,
                          channel=call.channel_id, by="pbxbrain")
            await ari.continue_in_dialplan(call.channel_id)
            journal.event(call.call_id, self.app.clock(), EventKind.CONTINUED,
                          context="(after Stasis)")
            ended = await self._wait_until_left()
        except AriNotFound:
            # The caller hung up under our feet.
            outcome = CallOutcome.ABANDONED
            ended = await self._wait_until_left(timeout_s=5.0)
        except Exception as exc:
            outcome = CallOutcome.FAILED if not self.caller_gone else CallOutcome.ABANDONED
            log.exception("call %s (channel %s): failed in pbxbrain", call.call_id,
                          call.channel_id)
            journal.event(call.call_id, self.app.clock(), EventKind.ERROR, error=repr(exc))
            if not self.caller_gone:
                await self.app.rescue(call.channel_id, call.call_id)
            ended = await self._wait_until_left(timeout_s=5.0)
        journal.closed(call.call_id, outcome, ended)

    async def _wait_until_left(self, timeout_s: float | None = None) -> datetime:
        """Wait for the caller's channel to leave the app; return when it did."""
        deadline = timeout_s if timeout_s is not None else self.app.settings.session_deadline_s
        try:
            async with asyncio.timeout(deadline):
                while True:
                    event = await self.events.get()
                    if isinstance(event, StasisEnd | ChannelDestroyed):
                        if isinstance(event, ChannelDestroyed):
                            self.caller_gone = True
                        return event.at
        except TimeoutError:
            log.warning("call %s: no StasisEnd after %.0f s, closing it in the journal",
                        self.call.call_id, deadline)
            return self.app.clock()


class StasisApp:
    """Routes ARI events to call sessions; re-syncs after a reconnect; stops cleanly."""

    def __init__(self, ari: AriClient, journal: Journal, settings: StasisSettings,
                 *, clock: Clock = utcnow) -> None:
        self.ari = ari
        self.journal = journal
        self.settings = settings
        self.clock = clock
        self._by_channel: dict[str, CallSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepting = True
        self.calls_started = 0

    @property
    def active_calls(self) -> int:
        """Calls pbxbrain is handling right now."""
        return len(self._tasks)

    # -- events (sync, from the websocket reader) ---------------------------
    def on_event(self, event: AriEvent) -> None:
        """Dispatch one ARI event. Never blocks."""
        match event:
            case StasisStart(channel=channel, args=args):
                self._stasis_start(channel, args, event)
            case _:
                channel_obj = getattr(event, "channel", None)
                if isinstance(channel_obj, Channel):
                    session = self._by_channel.get(channel_obj.id)
                    if session is not None:
                        session.feed(event)

    def _stasis_start(self, channel: Channel, args: tuple[str, ...], event: StasisStart) -> None:
        if channel.id in self._by_channel:
            self._by_channel[channel.id].feed(event)
            return
        if not self.accepting:
            self._spawn(self.rescue(channel.id, None), None)
            return
        match args:
            case ["inbound", dialed]:
                direction = Direction.INBOUND
            case ["internal", dialed]:
                direction = Direction.INTERNAL
            case ["outbound", dialed]:
                direction = Direction.OUTBOUND
            case _:
                log.error("channel %s entered Stasis with unknown args %r; expected "
                          "inbound,<DID> (see asterisk-conf/extensions.conf); sending it on "
                          "in the dialplan", channel.name, args)
                self._spawn(self._continue_quietly(channel.id), None)
                return
        call = InboundCall(
            call_id=uuid.uuid4().hex,
            channel_id=channel.id,
            caller=normalize_caller(channel.caller.number, self.settings.default_region),
            caller_raw=channel.caller.number,
            caller_name=channel.caller.name,
            dialed=dialed,
            at=event.at,
            direction=direction,
            node=self.settings.node,
        )
        session = CallSession(self, call)
        self._by_channel[channel.id] = session
        self.calls_started += 1
        log.info("call %s: %s %s -> %s (channel %s)", call.call_id, direction.value,
                 call.caller, dialed, channel.name)
        self._spawn(session.run(), session)

    def _spawn(self, coro: asyncio.Future[None] | object, session: CallSession | None) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        if session is not None:
            session.task = task

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if session is not None:
                self._by_channel.pop(session.call.channel_id, None)
            if not t.cancelled() and t.exception() is not None:
                log.error("call task crashed", exc_info=t.exception())

        task.add_done_callback(done)

    # -- safety nets -----------------------------------------------------------
    async def rescue(self, channel_id: str, call_id: str | None) -> None:
        """Never leave a caller in silence: fallback context, else hang up."""
        context = self.settings.fallback_context
        try:
            if context:
                await self.ari.continue_in_dialplan(channel_id, context=context)
            else:
                await self.ari.continue_in_dialplan(channel_id)
            if call_id:
                self.journal.event(call_id, self.clock(), EventKind.CONTINUED,
                                   context=context or "(after Stasis)", reason="rescue")
            return
        except AriNotFound:
            return
        except AriError as exc:
            log.error("channel %s: cannot hand it to the dialplan (%s); hanging up",
                      channel_id, exc)
        with contextlib.suppress(AriError):
            await self.ari.hangup(channel_id, "congestion")
            if call_id:
                self.journal.event(call_id, self.clock(), EventKind.HANGUP, reason="rescue")

    async def _continue_quietly(self, channel_id: str) -> None:
        with contextlib.suppress(AriError):
            await self.ari.continue_in_dialplan(channel_id)

    # -- link up/down ------------------------------------------------------------
    async def on_link(self, up: bool) -> None:
        """After a reconnect, take back calls still in the app; drop sessions whose
        channels are gone (Asterisk restarted under them)."""
        if not up:
            return
        try:
            alive = {c.id for c in await self.ari.channels()}
        except AriError as exc:
            log.warning("re-sync after reconnect failed: %s", exc)
            return
        for channel_id, session in list(self._by_channel.items()):
            if channel_id not in alive:
                log.warning("call %s: channel %s vanished while ARI was down",
                            session.call.call_id, channel_id)
                session.feed(ChannelDestroyed("ChannelDestroyed", self.clock(), {},
                                              _gone_channel(channel_id), 0, "vanished"))

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking calls; hand live callers to the dialplan; wait for the sessions."""
        self.accepting = False
        for channel_id, session in list(self._by_channel.items()):
            if not session.left_app and not session.caller_gone:
                await self.rescue(channel_id, session.call.call_id)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


def _gone_channel(channel_id: str) -> Channel:
    empty = CallerId("", "")
    return Channel(channel_id, "", "Down", empty, empty, "", "", 0, utcnow())
