"""The Stasis app: turns ARI events into calls and runs each call's plan on ARI.

Dispatch is on the app args the dialplan passes to ``Stasis(pbxbrain, ...)``:

* ``inbound,<DID>``: a call from the PSTN trunk;
* ``internal,<short>`` and ``outbound,<number>``: calls from managers' desk phones;
* ``leg,<call id>``: a manager's phone pbxbrain rang, now answered.

Each call gets a :class:`CallSession` with its own event queue: every event of the
caller's channel, of the legs it rings, of its bridge, playbacks and recordings goes there,
in order, so one call is one sequential story and a slow call never delays another.

Executing a plan (the rules, in order):

1. ``Reject``: hang up without answering (the caller hears busy). Ends the plan.
2. ``Ring``: the caller hears ringback (not answered: no charge to the caller yet); each
   target is a leg originated into this app. The first leg to enter Stasis (= answered)
   wins: the caller is answered and both are put in a mixing bridge, which is recorded;
   every other leg is hung up at once. A step's timeout hangs its legs up and moves on.
3. ``Play``: answer, play the prompt to its end. ``Voicemail``: answer, beep, record the
   caller until ``#``, silence or hang-up. Ends the plan.
4. The caller hanging up at any moment ends everything: legs hung up, call *abandoned*.
5. Any failure inside pbxbrain sends the caller to the dialplan's fallback context (or
   hangs up when even that fails): never left in silence. No bridge or leg outlives
   its call: the session's ``finally`` cleans up whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from pbxbrain.adapters.ami import AmiError, AmiTimeout
from pbxbrain.adapters.ari import (
    AriClient,
    AriError,
    AriEvent,
    AriNotFound,
    AriUnavailable,
    Bridge,
    CallerId,
    Channel,
    ChannelDestroyed,
    ChannelHangupRequest,
    ChannelLeftBridge,
    PlaybackEvent,
    RecordingEvent,
    StasisEnd,
    StasisStart,
)
from pbxbrain.adapters.outbox import called_back_message, missed_call_message
from pbxbrain.adapters.recordings import (
    RecordingDirectory,
    SavedRecording,
    wav_closed,
    wav_file_closed,
)
from pbxbrain.config import RecordingMethod
from pbxbrain.domain.model import (
    CallOutcome,
    CallSummary,
    Contact,
    Direction,
    EventKind,
    InboundCall,
    JournalEntry,
    OutboxMessage,
    RecordingInfo,
    client_of,
    leg_end_reason,
)
from pbxbrain.domain.phone import normalize_caller, to_e164
from pbxbrain.domain.plan import Plan, Play, Reject, Ring, RingMode, Target, Voicemail
from pbxbrain.domain.routing import plan_to_journal
from pbxbrain.domain.sla import is_missed, missed_call_for, sla_for
from pbxbrain.ports import CallStore, ChannelRecorder, PhoneStates
from pbxbrain.service import Journal, Router

log = logging.getLogger(__name__)

#: The ARI event types call sessions act on; Asterisk is asked to send only these. A new
#: consumer (DTMF for an IVR, bridge events, ...) adds its types here.
EVENT_TYPES: Final = frozenset({
    "StasisStart", "StasisEnd", "ChannelHangupRequest", "ChannelDestroyed",
    "ChannelLeftBridge", "PlaybackStarted", "PlaybackFinished", "RecordingStarted",
    "RecordingFinished", "RecordingFailed",
})

#: Seconds a prompt may take to start playing before the call goes on without it.
PROMPT_START_S: Final = 3.0

#: Staff ids kept in a ``not_rung`` journal entry (the rest are counted).
NOT_RUNG_KEPT: Final = 20

#: Recordings fetched from Asterisk (and written to the store) at the same time, at most.
RECORDING_FETCHES: Final = 4

#: Channel ids pbxbrain gives the legs it originates: ``<call id>-<n>``.
_LEG_ID = re.compile(r"[0-9a-f]{32}-[0-9]+")

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
    recording_format: str = "wav"
    recording_method: RecordingMethod = "mixmonitor"  # or "bridge" (see RecordingsConfig)
    asterisk_recording_dir: str = "/var/spool/asterisk/recording"
    local_recording_dir: Path | None = None  # the same, as this host sees it (if it does)
    session_deadline_s: float = 4 * 3600.0  # no call lasts longer; its task is reaped
    voicemail_max_s: int = 120
    prompt_max_s: float = 60.0
    recording_settle_s: float = 5.0


@dataclass
class Leg:
    """A manager's phone being rung for a call."""

    channel_id: str
    target: Target
    started: datetime
    answered: bool = False
    ended: bool = False


@dataclass
class _Ended:
    """Internal marker: the caller is gone."""

    at: datetime
    cause: str = ""


class CallerGone(Exception):
    """The caller hung up; the plan stops."""


#: Formats recorded with MixMonitor: a WAV file's header says when Asterisk has closed it
#: (headerless formats would be fetched with their last buffer, up to 32 KB, unwritten);
#: the others are recorded through ARI, whose RecordingFinished tells.
MIXMONITOR_FORMATS: Final = frozenset({"wav"})


@dataclass(frozen=True)
class _TalkRecording:
    name: str
    mixmonitor: bool  # else ARI's recording of the bridge


#: How long a followed FastAGI conversation may go without an event before Asterisk is
#: asked whether the caller's channel still exists (a lost subscription tells nothing).
FOLLOW_CHECK_S: Final = 60.0


class CallSession:
    """One call in the app: its caller's channel, its legs, its journal."""

    def __init__(self, app: StasisApp, call: InboundCall) -> None:
        self.app = app
        self.call = call
        self.events: asyncio.Queue[AriEvent] = asyncio.Queue()
        self.caller_gone: _Ended | None = None
        self.caller_answered = False
        self.ringback_sent = False
        self.legs: dict[str, Leg] = {}
        self.bridges: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.voicemail_id: str | None = None  # the message the caller left, if any
        self.mixmonitor_on = False  # the caller's channel is being recorded by MixMonitor
        self.plan: Plan | None = None
        self.contact: Contact | None = None  # the caller as the CRM knows him
        self.crm_ids: Mapping[str, str] = {}
        self.manager: str | None = None  # who talks to the client (click-to-call: from the start)
        self.talk_started: datetime | None = None
        self.last_leg_cause = 0
        self._leg_seq = 0
        self.not_rung: list[str] = []  # staff of this ring step taken by other calls
        self.handed_over = False  # stopping mid-conversation: left to the next pbxbrain
        self.conversing = False  # both sides bridged, waiting for one to leave
        self.following_dial = False  # a FastAGI conversation adopted after a restart
        self.kept: SavedRecording | None = None  # the last recording kept

    @property
    def ari(self) -> AriClient:
        return self.app.ari

    @property
    def journal(self) -> Journal:
        return self.app.journal

    def log_event(self, kind: EventKind, **data: object) -> None:
        """Journal something that happened now."""
        log.debug("call %s: %s %s", self.call.call_id, kind.value, data)
        self.journal.event(self.call.call_id, self.app.clock(), kind, **data)

    # -- events ------------------------------------------------------------------
    def feed(self, event: AriEvent) -> None:
        """Deliver one of the call's ARI events (from the event stream, in order)."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("call %s: <- %s %s", self.call.call_id, event.type,
                      getattr(getattr(event, "channel", None), "id", ""))
        channel = getattr(event, "channel", None)
        if (isinstance(channel, Channel) and channel.id == self.call.channel_id
                and isinstance(event, ChannelHangupRequest | ChannelDestroyed | StasisEnd)
                and self.caller_gone is None):
            self.caller_gone = _Ended(event.at, type(event).__name__)
        self.events.put_nowait(event)

    def gone(self, channel_id: str, at: datetime, why: str) -> None:
        """A channel of the call is gone and its events were missed (pbxbrain was not
        connected, or not yet routing them): delivered as its ChannelDestroyed."""
        self.feed(ChannelDestroyed("ChannelDestroyed", at, {}, _gone_channel(channel_id), 0,
                                   why))

    async def next_event(self, deadline: float | None) -> AriEvent | None:
        """The next event, or None when the loop-time ``deadline`` passed."""
        if deadline is None:
            return await self.events.get()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self.events.get(), remaining)
        except TimeoutError:
            return None

    def _check_caller(self) -> None:
        if self.caller_gone is not None:
            raise CallerGone

    # -- the call ------------------------------------------------------------------
    async def run(self) -> None:
        """Decide, execute, journal the outcome; clean up whatever is left."""
        call = self.call
        outcome = CallOutcome.FAILED
        answered_by: str | None = None
        plan: Plan | None = None
        try:
            plan = await self.decide()
            if plan.fallback:
                await self.app.rescue(call.channel_id, call.call_id, call.dialed)
                outcome = CallOutcome.DIALPLAN
            else:
                outcome, answered_by = await self.execute(plan)
        except CallerGone:
            outcome = CallOutcome.ABANDONED
        except asyncio.CancelledError:
            if self._hand_over():
                raise
            # pbxbrain is stopping: the caller goes to the dialplan's fallback, not silence.
            await self._cleanup()
            if self.caller_gone is None:
                await self.app.rescue(call.channel_id, call.call_id, call.dialed)
            self.journal.closed(call.call_id, CallOutcome.DIALPLAN, self.app.clock(),
                                data={"reason": "pbxbrain stopping"})
            raise
        except Exception as exc:
            if plan is None:
                self.journal.entered(call)
            log.exception("call %s (channel %s): failed in pbxbrain", call.call_id,
                          call.channel_id)
            self.log_event(EventKind.ERROR, error=repr(exc))
            if self.caller_gone is None:
                await self.app.rescue(call.channel_id, call.call_id, call.dialed)
                outcome = CallOutcome.DIALPLAN
            else:
                outcome = CallOutcome.ABANDONED
        finally:
            await self._cleanup()
        await self._close_call(outcome, answered_by, plan)

    async def decide(self) -> Plan:
        """The call's plan (and the caller's contact), journaled as the call's start."""
        plan, self.contact = await self.app.router.plan(self.call, self.app.clock())
        self.plan = plan
        self.journal.entered(self.call, line=plan.line, source=plan.source)
        self.log_event(EventKind.ROUTED, **plan_to_journal(plan))
        return plan

    def _hand_over(self) -> bool:
        """pbxbrain is stopping: a conversation in progress is left as it is, bridged and
        recorded in Asterisk, for the next pbxbrain to adopt (``StasisApp._adopt``);
        nothing of it is hung up or closed here. True if it was one."""
        self.handed_over = self.conversing and self.caller_gone is None
        return self.handed_over

    async def resume(self, leg: Leg, bridge_id: str, talk_started: datetime,
                     recording: _TalkRecording | None, answered_by: str | None) -> None:
        """A conversation a previous pbxbrain process bridged, adopted after a restart:
        see it to its end, then close the call as answered."""
        try:
            await self._converse(leg, bridge_id, talk_started, recording)
        except asyncio.CancelledError:
            self._hand_over()
            raise
        except Exception as exc:
            log.exception("call %s: adopted conversation failed in pbxbrain",
                          self.call.call_id)
            self.log_event(EventKind.ERROR, error=repr(exc))
        finally:
            await self._cleanup()
            if answered_by and not self.handed_over:
                self.app.phones.release(answered_by, self.call.call_id)
        await self._close_call(CallOutcome.ANSWERED, answered_by, None)

    async def follow_dial(self, recording: str | None, answered_by: str | None, *,
                          ended_unseen: bool = False) -> None:
        """A FastAGI conversation (Asterisk's Dial, not a bridge of ours) a previous
        pbxbrain process left: wait for the caller's channel to go, keep the recording
        the answering phone's MixMonitor wrote, close the call as answered. A stop
        meanwhile leaves the call open for the next process. ``ended_unseen``: it ended
        while no pbxbrain ran; its end is the recording's, not now."""
        self.following_dial = True
        try:
            await self._until_destroyed()
        except asyncio.CancelledError:
            self.handed_over = True
            raise
        finally:
            if not self.handed_over:
                self.app.phones.release_all(self.call.call_id)
        try:
            if recording is not None and self.talk_started is not None:
                await self._keep_recording(recording, self.talk_started, announced=False)
        except Exception as exc:
            log.exception("call %s: the recording of an adopted FastAGI conversation was "
                          "not kept", self.call.call_id)
            self.log_event(EventKind.ERROR, error=repr(exc))
        gone = self.caller_gone
        if (ended_unseen and gone is not None and self.talk_started is not None
                and self.kept is not None and self.kept.duration_s is not None):
            # It ended while no pbxbrain ran: its recording says when, not the restart.
            end = self.talk_started + timedelta(seconds=self.kept.duration_s)
            if end < gone.at:
                self.caller_gone = _Ended(end, "recording")
        await self._close_call(CallOutcome.ANSWERED, answered_by, None)

    async def _until_destroyed(self) -> None:
        """Until the caller's channel is destroyed. A hang-up request is not its end (an
        async goto, such as a transfer, is one); when no event came for
        ``FOLLOW_CHECK_S``, Asterisk is asked, in case the subscription was lost."""
        loop = asyncio.get_running_loop()
        channel_id = self.call.channel_id
        while True:
            event = await self.next_event(loop.time() + FOLLOW_CHECK_S)
            if event is None:
                if await channel_exists(self.ari, channel_id) is False:  # None: ask later
                    self.caller_gone = _Ended(self.app.clock(), "gone")
                    return
                continue
            if isinstance(event, ChannelDestroyed) and event.channel.id == channel_id:
                self.caller_gone = _Ended(event.at, "ChannelDestroyed")
                return

    async def _close_call(self, outcome: CallOutcome, answered_by: str | None,
                          plan: Plan | None, *, reason: str | None = None) -> None:
        """Once the caller left: close the call with its outcome and follow-ups
        (``reason``: why it is closed before its end, journaled with it)."""
        call = self.call
        ended = await self._wait_until_left()
        data: dict[str, object] = {} if reason is None else {"reason": reason}
        if answered_by:
            data["answered_by"] = answered_by
        if plan is not None and outcome is not CallOutcome.ANSWERED and plan.responsible:
            data["responsible"] = plan.responsible
        outbox = self.app.follow_ups(call, plan, outcome, ended, answered_by,
                                     recording=self.voicemail_id)
        self.journal.closed(call.call_id, outcome, ended, outbox=outbox, data=data)
        manager = (self.app.router.manager_to_remember(plan, answered_by)
                   if plan is not None and (answered_by or is_missed(outcome)) else None)
        if manager is not None and call.caller.startswith("+"):
            self.journal.remembered(call.call_id, call.caller, manager, ended)
        self.ended_event(outcome, ended, answered_by)
        log.info("call %s: %s%s", call.call_id, outcome.value,
                 f" by {answered_by}" if answered_by else "")

    async def execute(self, plan: Plan) -> tuple[CallOutcome, str | None]:
        """Run the plan's steps; returns the outcome and who answered.

        The order of the steps is this one method's; how each reaches Asterisk is the
        session's: ARI requests here, dialplan applications over FastAGI in
        ``AgiCallSession`` (``_reject``, ``_ring_step``, ``_end_unanswered``, ...)."""
        for step in plan.steps:
            self._check_caller()
            match step:
                case Reject(cause=cause):
                    await self._reject(cause)
                    self.log_event(EventKind.REJECTED, cause=cause, why=step.why)
                    return CallOutcome.REJECTED, None
                case Play(prompt=prompt):
                    await self._answer_caller()
                    await self._play(prompt)
                case Voicemail(box=box):
                    await self._answer_caller()
                    left = await self._voicemail(box)
                    return (CallOutcome.VOICEMAIL if left else plan.unanswered_outcome), None
                case Ring(targets=targets, mode=mode, timeout_s=timeout_s):
                    groups = [targets] if mode is RingMode.ALL else [(t,) for t in targets]
                    for group in groups:
                        self._check_caller()
                        by = await self._ring_step(group, timeout_s, step.caller_id, plan)
                        if by is not None:
                            self._journal_not_rung()
                            return CallOutcome.ANSWERED, by
                    self._journal_not_rung()
        self._check_caller()
        # Nobody took it: the plan ran out. Tell Asterisk (the caller hears busy/no answer).
        busy = plan.unanswered_outcome is CallOutcome.NO_ANSWER and self.last_leg_cause == 17
        await self._end_unanswered("busy" if busy else "no_answer")
        return (CallOutcome.BUSY if busy else plan.unanswered_outcome), None

    async def _reject(self, cause: str) -> None:
        """Refuse the call without answering it (``busy``, ``congestion``)."""
        await self.ari.hangup(self.call.channel_id, cause)

    async def _ring_step(self, group: tuple[Target, ...], timeout_s: int,
                         caller_id: str | None, plan: Plan) -> str | None:
        """Ring ``group`` at once; when one answers, the conversation to its end. Who
        talked for pbxbrain's side, or None when nobody answered."""
        leg = await self._ring(group, timeout_s, caller_id=caller_id)
        if leg is None:
            return None
        self._journal_not_rung()
        await self._talk(leg, record=plan.record, by=plan.manager)
        return plan.manager or leg.target.staff_id

    async def _end_unanswered(self, reason: str) -> None:
        """The plan ran out: hang the caller up (``busy`` or ``no_answer``)."""
        with contextlib.suppress(AriNotFound):
            await self.ari.hangup(self.call.channel_id, reason)

    # -- steps -----------------------------------------------------------------------
    async def _answer_caller(self) -> None:
        if not self.caller_answered:
            await self.ari.answer(self.call.channel_id)
            self.caller_answered = True
            self.log_event(EventKind.ANSWERED, channel=self.call.channel_id, by="pbxbrain")

    async def _ring(self, targets: tuple[Target, ...], timeout_s: int, *,
                    caller_id: str | None = None) -> Leg | None:
        """Ring targets at once; the first to answer is returned, the others hung up."""
        ringback: asyncio.Task[None] | None = None
        if not self.ringback_sent and not self.caller_answered:
            # The caller's ringback and the managers' phones are rung together: the
            # post-dial delay does not wait for the ringback's round trip.
            ringback = asyncio.create_task(self._ringback())
            self.ringback_sent = True
        try:
            legs = await self._originate(targets, timeout_s, caller_id)
        finally:
            if ringback is not None:
                await ringback
        if not legs:
            return None
        return await self._first_answer(legs, timeout_s)

    def _journal_not_rung(self) -> None:
        """One entry for the targets other calls took before their turn: when everybody
        is on a call, a hunt through 600 managers made 600 entries per caller."""
        if not self.not_rung:
            return
        staff, self.not_rung = self.not_rung, []
        more = {"more": len(staff) - NOT_RUNG_KEPT} if len(staff) > NOT_RUNG_KEPT else {}
        self.log_event(EventKind.NOT_RUNG, staff=staff[:NOT_RUNG_KEPT],
                       reason="taken by another call", **more)

    async def _ringback(self) -> None:
        with contextlib.suppress(AriNotFound):
            await self.ari.ring(self.call.channel_id)

    async def _originate(self, targets: tuple[Target, ...], timeout_s: int,
                         caller_id: str | None) -> dict[str, Leg]:
        """One leg per target that is free to ring; legs by channel id.

        A target without ``staff_id`` is the client (click-to-call): nobody to reserve.
        """
        call_id = self.call.call_id
        legs: dict[str, Leg] = {}
        for target in targets:
            self._check_caller()
            if target.staff_id and not self.app.phones.reserve(target.staff_id, call_id):
                self.not_rung.append(target.staff_id)  # journaled once per step
                continue
            self._leg_seq += 1
            leg = Leg(f"{call_id}-{self._leg_seq}", target, self.app.clock())
            self.app.route(leg.channel_id, self)
            legs[leg.channel_id] = self.legs[leg.channel_id] = leg
            try:
                await self.ari.originate(
                    target.endpoint,
                    app_args=f"leg,{call_id}",
                    caller_id=caller_id or (f'"{self.call.caller_name or self.call.caller}" '
                                            f'<{self.call.caller}>'),
                    timeout_s=timeout_s + 5,
                    channel_id=leg.channel_id,
                    originator=self.call.channel_id,
                )
            except AriError as exc:
                leg.ended = True
                del legs[leg.channel_id]
                self.app.phones.release(target.staff_id, call_id)
                self.log_event(EventKind.LEG_ENDED, staff=target.staff_id,
                               endpoint=target.endpoint, reason=f"cannot ring: {exc.message}")
                continue
            self.log_event(EventKind.RINGING, staff=target.staff_id, endpoint=target.endpoint,
                           target=target.kind, timeout_s=timeout_s)
            self.ringing(target.staff_id or None)
        return legs

    # -- live events ---------------------------------------------------------------
    def _event_base(self) -> dict[str, object]:
        return {"call_id": self.call.call_id,
                "direction": "outbound" if self.call.direction is Direction.OUTBOUND
                else "inbound", "client": client_of(self.call) or self.call.caller}

    def ringing(self, manager: str | None) -> None:
        """Publish ``call.ringing`` (and the screen pop when a manager's phone rings)."""
        at = self.app.clock().isoformat()
        leg = "client" if manager is None else "manager"
        line = self.plan.line if self.plan is not None else None
        self.app.publish("call.ringing", {**self._event_base(), "leg": leg,
                                          "manager": manager or self.manager, "line": line,
                                          "at": at})
        if manager is not None:
            contact = self.contact
            self.app.publish("screen_pop", {
                **self._event_base(), "manager": manager,
                "client_name": self.call.caller_name,
                "contact": None if contact is None else {
                    "name": contact.name, "owner": contact.owner, "crm_ref": contact.crm_ref},
                "line": line, "source": self.plan.source if self.plan else None,
                "crm": dict(self.crm_ids), "at": at})

    def answered_event(self, leg: str, manager: str | None) -> None:
        """Publish ``call.answered``."""
        self.app.publish("call.answered", {**self._event_base(), "leg": leg,
                                           "manager": manager,
                                           "at": self.app.clock().isoformat()})

    def ended_event(self, outcome: CallOutcome, ended: datetime, manager: str | None) -> None:
        """Publish ``call.ended``."""
        talk = (ended - self.talk_started).total_seconds() if self.talk_started else None
        self.app.publish("call.ended", {
            **self._event_base(), "outcome": outcome.value, "manager": manager,
            "duration_s": round(max(0.0, (ended - self.call.at).total_seconds()), 3),
            "talk_s": None if talk is None else round(max(0.0, talk), 3),
            "at": ended.isoformat()})

    async def _first_answer(self, legs: dict[str, Leg], timeout_s: int) -> Leg | None:
        """Wait for the first leg to answer (enter Stasis); hang up all the others."""
        call_id = self.call.call_id
        deadline = asyncio.get_running_loop().time() + timeout_s
        winner: Leg | None = None
        try:
            while winner is None and any(not rung.ended for rung in legs.values()):
                event = await self.next_event(deadline)
                if event is None:
                    break  # step timeout
                self._check_caller()
                channel = getattr(event, "channel", None)
                rung = legs.get(channel.id) if isinstance(channel, Channel) else None
                if rung is None:
                    continue
                match event:
                    case StasisStart():
                        rung.answered = True
                        winner = rung
                    case ChannelDestroyed(cause=cause, cause_txt=cause_txt):
                        rung.ended = True
                        self.last_leg_cause = cause
                        self.app.phones.release(rung.target.staff_id, call_id)
                        self.log_event(EventKind.LEG_ENDED, staff=rung.target.staff_id,
                                       reason=leg_end_reason(cause, cause_txt), cause=cause)
        finally:
            # Every leg but the winner goes: at once, whatever ended the wait.
            for other in legs.values():
                if other is not winner and not other.ended:
                    if winner is not None:
                        await self._hangup_leg(other, "answered_elsewhere",
                                               "answered elsewhere")
                    elif self.caller_gone is not None:
                        await self._hangup_leg(other, "normal", "caller hung up")
                    else:
                        await self._hangup_leg(other, "no_answer", "no answer in time")
        return winner

    async def _hangup_leg(self, leg: Leg, reason: str, why: str | None) -> None:
        """Hang a leg up (Asterisk ``reason``); journal ``why`` unless None."""
        was_ended, leg.ended = leg.ended, True
        with contextlib.suppress(AriNotFound):
            await self.ari.hangup(leg.channel_id, reason)
        if not was_ended:
            self.app.phones.release(leg.target.staff_id, self.call.call_id)
            if why is not None:
                self.log_event(EventKind.LEG_ENDED, staff=leg.target.staff_id, reason=why)

    async def _talk(self, leg: Leg, *, record: bool, by: str | None = None) -> None:
        """Bridge the caller with the manager who answered; record; wait for the end.

        ``by``: who talks for pbxbrain's side (click-to-call: the manager, not the leg).
        """
        call_id = self.call.call_id
        by = by or leg.target.staff_id
        await self._answer_caller_for(leg)
        bridge_id = f"{call_id}-bridge"
        self.app.route(bridge_id, self)
        self.bridges.add(bridge_id)
        await self.ari.create_bridge(bridge_id, kind="mixing", name=f"call {call_id}")
        await self.ari.add_channels(bridge_id, self.call.channel_id, leg.channel_id)
        now = self.talk_started = self.app.clock()
        self.journal.answered(call_id, now, by)
        self.log_event(EventKind.BRIDGED, staff=by, bridge=bridge_id,
                       after_s=round((now - self.call.at).total_seconds(), 3))
        self.answered_event("client" if self.call.direction is Direction.OUTBOUND
                            else "manager", by)
        recording: _TalkRecording | None = None
        if record:
            recording = await self._record_talk(bridge_id, f"{call_id}-talk")
        await self._converse(leg, bridge_id, now, recording)

    async def _converse(self, leg: Leg, bridge_id: str, now: datetime,
                        recording: _TalkRecording | None) -> None:
        """Talk until either side leaves; hang up the other; keep the recording."""
        self.conversing = True
        while True:
            if self.caller_gone is not None:
                break
            event = await self.next_event(None)
            channel = getattr(event, "channel", None)
            if isinstance(event, ChannelDestroyed | StasisEnd | ChannelHangupRequest |
                          ChannelLeftBridge) and isinstance(channel, Channel) and (
                    channel.id == leg.channel_id):
                break
        self.conversing = False  # from here on, a stop lets the session finish
        self.log_event(EventKind.HANGUP, by="caller" if self.caller_gone is not None
                       else leg.target.staff_id or "client",
                       talk_s=round((self.app.clock() - now).total_seconds(), 3))
        if self.caller_gone is None:
            await self._stop_mix_monitor()  # the file is complete before he is hung up
            with contextlib.suppress(AriNotFound):
                await self.ari.hangup(self.call.channel_id, "normal")
        await self._hangup_leg(leg, "normal", None)
        with contextlib.suppress(AriNotFound):
            await self.ari.destroy_bridge(bridge_id)
        self.bridges.discard(bridge_id)
        if recording is not None:
            await self._keep_recording(recording.name, now, announced=not recording.mixmonitor)

    async def _answer_caller_for(self, leg: Leg) -> None:
        self.log_event(EventKind.ANSWERED, channel=leg.channel_id, by=leg.target.staff_id,
                       after_s=round((self.app.clock() - leg.started).total_seconds(), 3))
        if not self.caller_answered:
            await self.ari.answer(self.call.channel_id)
            self.caller_answered = True

    async def _record_talk(self, bridge_id: str, name: str) -> _TalkRecording | None:
        """Record the conversation: MixMonitor on the caller's channel when AMI is up (the
        bridge stays a cheap two-party bridge), else ARI's recording of the bridge."""
        settings, recorder = self.app.settings, self.app.recorder
        fmt = settings.recording_format
        if self.caller_gone is not None:
            return None  # he hung up as he was bridged: nothing to record
        if (settings.recording_method == "mixmonitor" and fmt in MIXMONITOR_FORMATS
                and recorder is not None and recorder.ready):
            path = f"{settings.asterisk_recording_dir.rstrip('/')}/{name}.{fmt}"
            try:
                await recorder.mix_monitor(self.call.channel_id, path)
            except AmiError as exc:
                if self.caller_gone is not None or "no such channel" in str(exc).lower():
                    return None
                if isinstance(exc, AmiTimeout):  # it may have started after all
                    self.mixmonitor_on = True
                    await self._stop_mix_monitor()
                log.warning("call %s: MixMonitor failed (%s); recording the bridge through "
                            "ARI instead", self.call.call_id, exc)
                name = f"{name}-bridge"  # never the file a late MixMonitor may write
            else:
                self.mixmonitor_on = True
                self.log_event(EventKind.RECORDING_STARTED, name=name, format=fmt,
                               via="mixmonitor")
                return _TalkRecording(name, mixmonitor=True)
        started = await self._start_recording(f"bridges/{bridge_id}", name)
        return _TalkRecording(started, mixmonitor=False) if started is not None else None

    async def _stop_mix_monitor(self) -> None:
        """Close the talk's file before the caller's channel goes (Asterisk closes it
        itself when the channel ends, a moment after the channel's last event)."""
        recorder = self.app.recorder
        if recorder is None or not self.mixmonitor_on:
            return
        self.mixmonitor_on = False
        try:
            await recorder.stop_mix_monitor(self.call.channel_id)
        except AmiError as exc:
            log.info("call %s: StopMixMonitor: %s (the hang-up closes the file)",
                     self.call.call_id, exc)

    async def _start_recording(self, target: str, name: str) -> str | None:
        fmt = self.app.settings.recording_format
        try:
            await self.ari.record(target, name, fmt=fmt, if_exists="overwrite")
        except AriError as exc:
            # Not recording is bad; dropping the call for it would be worse.
            log.error("call %s: cannot record %s: %s (is /var/spool/asterisk/recording "
                      "there and writable by asterisk?)", self.call.call_id, target, exc)
            self.log_event(EventKind.ERROR, error=f"recording failed: {exc}")
            return None
        self.log_event(EventKind.RECORDING_STARTED, name=name, format=fmt, via="bridge")
        return name

    async def _wait_recording_done(self, name: str) -> RecordingEvent | None:
        deadline = asyncio.get_running_loop().time() + self.app.settings.recording_settle_s
        while True:
            event = await self.next_event(deadline)
            if event is None:
                return None
            if isinstance(event, RecordingEvent) and event.recording.name == name and (
                    event.type in ("RecordingFinished", "RecordingFailed")):
                return event

    async def _keep_recording(self, name: str, started: datetime, *,
                              announced: bool = True) -> bool:
        """Move a finished recording from Asterisk into pbxbrain's store; True if kept.

        ``announced``: ARI's own recording, whose end comes as an event; a MixMonitor
        file has none, it is complete once Asterisk closed it (see ``_fetched``).
        """
        if announced:
            done = await self._wait_recording_done(name)
            if done is not None and done.type == "RecordingFailed":
                self.log_event(EventKind.ERROR, error=f"recording {name} failed: "
                               f"{done.recording.cause}")
                return False
        fmt = self.app.settings.recording_format
        spool = self.app.settings.local_recording_dir
        try:
            if spool is not None and not announced:  # a MixMonitor file beside us
                source = spool / f"{name}.{fmt}"
                closed = await self._closed_here(source, fmt)

                async def move() -> SavedRecording:
                    saved = await self.app.recordings.adopt(source, name, fmt, started)
                    self._journal_kept(name, fmt, started, saved, closed=closed, taken="moved")
                    return saved

                # Once the file has left the spool its row must be written, even when
                # pbxbrain is stopping: a kept file nobody can find is a lost one.
                saved = await asyncio.shield(move())
            else:
                async with self._fetched(name, fmt, wait_closed=not announced) as (data,
                                                                                   closed):
                    saved = await self.app.recordings.save(name, fmt, data, started)
                self._journal_kept(name, fmt, started, saved, closed=closed,
                                   taken="fetched")
                with contextlib.suppress(AriError):
                    await self.ari.delete_stored_recording(name)
        except (AriError, OSError) as exc:
            log.error("call %s: recording %s not kept: %s; it stays in Asterisk's spool",
                      self.call.call_id, name, exc)
            self.log_event(EventKind.ERROR, error=f"recording {name} not kept: {exc}")
            return False
        return saved.duration_s is None or saved.duration_s > 0

    def _journal_kept(self, name: str, fmt: str, started: datetime, saved: SavedRecording, *,
                      closed: bool, taken: str) -> None:
        if not closed:
            self.log_event(EventKind.ERROR, error=f"recording {name} was still being written "
                           f"after {self.app.settings.recording_settle_s:g} s; its end may "
                           "be missing")
        self.kept = saved
        self.journal.recording(RecordingInfo(
            recording_id=name, call_id=self.call.call_id, name=name,
            path=saved.relative_path, format=fmt, started_at=started,
            duration_s=saved.duration_s, size_bytes=saved.size_bytes))
        self.log_event(EventKind.RECORDING_FINISHED, name=name, path=saved.relative_path,
                       duration_s=saved.duration_s, size_bytes=saved.size_bytes, taken=taken)

    async def _settle_tries(self, *, once: bool = False) -> AsyncGenerator[bool, None]:
        """Tries at a file Asterisk may still be closing: yields whether each is the last,
        50, 100, 200… ms apart, for at most ``recording_settle_s`` (one try if ``once``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.app.settings.recording_settle_s
        pause = 0.05
        while True:
            last_try = once or loop.time() + pause > deadline
            yield last_try
            if last_try:
                return
            await asyncio.sleep(pause)
            pause *= 2

    async def _closed_here(self, source: Path, fmt: str) -> bool:
        """Wait until Asterisk closed a MixMonitor file in its spool on this host (see
        ``_fetched``); whether it did within ``recording_settle_s``. FileNotFoundError
        when it never appeared."""
        async with contextlib.aclosing(self._settle_tries()) as tries:
            async for last_try in tries:
                try:
                    # An 8-byte read, on a thread all the same: the spool may be a mount.
                    closed = fmt != "wav" or await asyncio.to_thread(wav_file_closed, source)
                except FileNotFoundError:
                    if last_try:
                        raise
                    continue
                if closed or last_try:
                    return closed
        raise AssertionError("the last try returns or raises")

    @contextlib.asynccontextmanager
    async def _fetched(self, name: str, fmt: str, *,
                       wait_closed: bool) -> AsyncIterator[tuple[bytes, bool]]:
        """A stored recording's bytes, and whether Asterisk had closed the file.

        Held a few at a time (``recording_fetches``): when hundreds of calls end together,
        their files (half a MB a minute each) would otherwise all sit in memory at once.

        ``wait_closed`` (MixMonitor): Asterisk's recording thread closes the file right
        after the channel's end, which pbxbrain may hear of first; a WAV header tells
        (its sizes are written at the close). So: fetch, and fetch again after 50, 100,
        200… ms (not holding a slot) while it is missing or unfinished, for at most
        ``recording_settle_s``; then take what there is.
        """
        async with contextlib.aclosing(self._settle_tries(once=not wait_closed)) as tries:
            async for last_try in tries:
                async with self.app.recording_fetches:
                    try:
                        data = await self.ari.stored_recording_file(name)
                    except (AriNotFound, AriUnavailable):
                        if last_try:
                            raise
                        continue
                    closed = fmt != "wav" or wav_closed(data)
                    if closed or last_try:
                        yield data, closed
                        return
                    del data

    async def _play(self, prompt: str) -> None:
        playback_id = f"{self.call.call_id}-play-{uuid.uuid4().hex[:6]}"
        self.app.route(playback_id, self)
        await self.ari.play(f"channels/{self.call.channel_id}", f"sound:{prompt}",
                            playback_id=playback_id)
        loop = asyncio.get_running_loop()
        # A playback Asterisk has not started within a few seconds is not going to be
        # heard (seen on a loaded machine: "Playback failed" only at hang-up): the caller
        # must not wait for it in silence, the route goes on.
        start_by = loop.time() + min(PROMPT_START_S, self.app.settings.prompt_max_s)
        deadline = loop.time() + self.app.settings.prompt_max_s
        started = False
        while True:
            event = await self.next_event(deadline if started else start_by)
            self._check_caller()
            if event is None:
                break
            if isinstance(event, PlaybackEvent) and event.playback.id == playback_id:
                started = True
                if event.type == "PlaybackFinished":
                    break
        if not started:
            with contextlib.suppress(AriError):
                await self.ari.stop_playback(playback_id)
            log.warning("call %s: prompt %s did not start within %g s; going on without it",
                        self.call.call_id, prompt, PROMPT_START_S)
            self.log_event(EventKind.ERROR, error=f"prompt {prompt} did not start")
            return
        self.log_event(EventKind.PLAYED, prompt=prompt)

    async def _voicemail(self, box: str) -> bool:
        """Record a message for ``box``; True when the caller left one."""
        name = f"{self.call.call_id}-voicemail"
        started = self.app.clock()
        try:
            await self.ari.record(f"channels/{self.call.channel_id}", name,
                                  fmt=self.app.settings.recording_format,
                                  max_duration_s=self.app.settings.voicemail_max_s,
                                  if_exists="overwrite", beep=True, terminate_on="#")
        except AriNotFound as exc:
            raise CallerGone from exc
        self.log_event(EventKind.RECORDING_STARTED, name=name, box=box, voicemail=True)
        kept = await self._keep_recording(name, started)
        with contextlib.suppress(AriNotFound):
            await self.ari.hangup(self.call.channel_id, "normal")
        if kept:
            self.voicemail_id = name
        return kept

    # -- the end -------------------------------------------------------------------
    async def _cleanup(self) -> None:
        """Nothing outlives the call: legs hung up, bridges destroyed, managers freed, and
        a caller sent back to the dialplan is no longer recorded into this call's file."""
        if self.handed_over:
            return
        self._journal_not_rung()  # a hunt the caller left in the middle of
        if self.caller_gone is None:
            await self._stop_mix_monitor()
        for leg in self.legs.values():
            if not leg.ended:
                await self._safe(self._hangup_leg(leg, "normal", "call ended"))
        for bridge_id in list(self.bridges):
            await self._safe(self.ari.destroy_bridge(bridge_id))
        self.bridges.clear()
        self.app.phones.release_all(self.call.call_id)

    @staticmethod
    async def _safe(coro: Coroutine[Any, Any, None]) -> None:
        with contextlib.suppress(AriError):
            await coro

    async def _wait_until_left(self) -> datetime:
        """When the caller's channel left the app (or now, if it already had)."""
        if self.caller_gone is not None:
            return self.caller_gone.at
        deadline = asyncio.get_running_loop().time() + 10.0
        while self.caller_gone is None:
            if await self.next_event(deadline) is None:
                log.warning("call %s: caller's channel did not leave the app in 10 s",
                            self.call.call_id)
                return self.app.clock()
        return self.caller_gone.at


class StasisApp:
    """Routes ARI events to call sessions; re-syncs after a reconnect; stops cleanly."""

    def __init__(self, ari: AriClient, journal: Journal, *, store: CallStore, router: Router,
                 phones: PhoneStates, recordings: RecordingDirectory,
                 settings: StasisSettings, clock: Clock = utcnow,
                 recorder: ChannelRecorder | None = None) -> None:
        self.ari = ari
        self.recorder = recorder  # MixMonitor through AMI; None: ARI bridge recordings
        self.journal = journal
        self.store = store
        self.router = router
        self.phones = phones
        self.recordings = recordings
        self.recording_fetches = asyncio.Semaphore(RECORDING_FETCHES)
        self.settings = settings
        self.clock = clock
        self._routes: dict[str, CallSession] = {}  # channel/bridge/playback id -> session
        self._sessions: dict[str, CallSession] = {}  # call id -> session
        self._recovering = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepting = True
        self.calls_started = 0
        # Live events for the API's /v1/events and the CRM's screen pop (never blocks).
        self.publish: Callable[[str, Mapping[str, object]], None] = lambda _t, _d: None
        self.db_ready: asyncio.Event | None = None  # recovery waits for migrations

    @property
    def active_calls(self) -> int:
        """Calls pbxbrain is handling right now."""
        return len(self._sessions)

    def route(self, resource_id: str, session: CallSession) -> None:
        """Send the events of a channel, bridge or playback to a session."""
        self._routes[resource_id] = session

    # -- events (sync, from the websocket reader) ---------------------------
    def on_event(self, event: AriEvent) -> None:
        """Dispatch one ARI event. Never blocks."""
        match event:
            case StasisStart(channel=channel, args=args):
                self._stasis_start(channel, args, event)
                return
            case PlaybackEvent(playback=playback):
                key = playback.id
            case RecordingEvent(recording=recording):
                key = recording.target_uri.partition(":")[2]
            case ChannelDestroyed(channel=channel):
                self.phones.changed(channel.id)  # a phone of ours may be free again
                key = channel.id
            case _:
                channel_obj = getattr(event, "channel", None)
                if not isinstance(channel_obj, Channel):
                    return
                key = channel_obj.id
        session = self._routes.get(key)
        if session is not None:
            session.feed(event)

    def _stasis_start(self, channel: Channel, args: tuple[str, ...], event: StasisStart) -> None:
        if channel.id in self._routes:
            self._routes[channel.id].feed(event)
            return
        match args:
            case ["leg", call_id]:
                # A leg whose call is gone (or unknown after a restart): hang it up.
                log.info("leg %s of finished call %s answered late; hanging up", channel.id,
                         call_id)
                self._spawn(self._safe_hangup(channel.id), None)
                return
            case _ if not self.accepting:
                self._spawn(self.rescue(channel.id, None, channel.exten), None)
                return
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
        if direction is Direction.OUTBOUND:  # journal the client's number as E.164
            dialed = to_e164(dialed, self.settings.default_region) or dialed
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
        self._routes[channel.id] = session
        self._sessions[call.call_id] = session
        self.calls_started += 1
        log.info("call %s: %s %s -> %s (channel %s)", call.call_id, direction.value,
                 call.caller, dialed, channel.name)
        self._spawn(session.run(), session)

    def adopt(self, session: CallSession, *, on_done: Callable[[], None] | None = None) -> None:
        """Run a session started by pbxbrain itself (click-to-call)."""
        self._routes[session.call.channel_id] = session
        self._sessions[session.call.call_id] = session
        self.calls_started += 1
        self._spawn(session.run(), session, on_done)

    def track(self, session: CallSession) -> None:
        """A call pbxbrain runs outside Stasis (FastAGI): counted in ``active_calls``, and
        left alone by the recovery of unfinished calls after a reconnect."""
        self._sessions[session.call.call_id] = session
        self.calls_started += 1

    def untrack(self, session: CallSession) -> None:
        """That call is over."""
        if self._sessions.get(session.call.call_id) is session:
            del self._sessions[session.call.call_id]

    def _spawn(self, coro: Coroutine[Any, Any, None], session: CallSession | None,
               on_done: Callable[[], None] | None = None) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        if session is not None:
            session.task = task

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if on_done is not None:
                on_done()
            if session is not None:
                self._sessions.pop(session.call.call_id, None)
                for key in [k for k, s in self._routes.items() if s is session]:
                    del self._routes[key]
            if not t.cancelled() and t.exception() is not None:
                log.error("call task crashed", exc_info=t.exception())

        task.add_done_callback(done)

    # -- what follows a call -------------------------------------------------------
    def follow_ups(self, call: InboundCall | CallSummary, plan: Plan | None,
                   outcome: CallOutcome, ended: datetime, answered_by: str | None, *,
                   recording: str | None = None, responsible: str | None = None
                   ) -> list[OutboxMessage]:
        """Outbox rows committed with the outcome: a missed-call task for the responsible
        manager, or "called back" when a manager talked to a client."""
        client = client_of(call)
        if client is None or not client.startswith("+"):
            return []  # internal calls, anonymous or unparseable numbers: no CRM contact
        if plan is not None and plan.unanswered_outcome is CallOutcome.REJECTED:
            return []  # blacklisted: never a task
        config = self.router.config
        line = plan.line if plan is not None else getattr(call, "line", None)
        if is_missed(outcome):
            schedule, sla = sla_for(config, line)
            missed = missed_call_for(
                call, outcome, plan.responsible if plan is not None else responsible,
                schedule, sla, recording=recording, ended_at=ended, line=line,
                source=plan.source if plan is not None else getattr(call, "source", None))
            return [missed_call_message(missed)]
        if outcome is CallOutcome.ANSWERED:
            return [called_back_message(client, call.call_id, answered_by, ended)]
        return []

    # -- safety nets -----------------------------------------------------------
    async def rescue(self, channel_id: str, call_id: str | None, extension: str) -> None:
        """Never leave a caller in silence: fallback context, else hang up.

        ``extension`` is the number the caller dialed: ARI's continue defaults to ``s``,
        which the fallback context does not have.
        """
        context = self.settings.fallback_context
        try:
            if context:
                await self.ari.continue_in_dialplan(channel_id, context=context,
                                                    extension=extension, priority=1)
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

    async def _safe_hangup(self, channel_id: str) -> None:
        with contextlib.suppress(AriError):
            await self.ari.hangup(channel_id, "normal")

    # -- link up/down ------------------------------------------------------------
    async def on_link(self, up: bool) -> None:
        """After each (re)connect, re-sync with Asterisk (events were missed meanwhile).

        * Our sessions whose channels vanished (Asterisk restarted under them) see them
          destroyed and end.
        * Channels sitting in this app that no session owns (pbxbrain was killed or
          restarted mid-call): callers go to the dialplan fallback, legs are hung up,
          and their calls are closed in the journal (see ``recover_orphans``).
        """
        if not up:
            return
        # Only the sessions there before the listing: a FastAGI call tracked while it
        # runs is not in it.
        sessions = list(self._sessions.values())
        try:
            channels = await self.ari.channels()
        except AriError as exc:
            log.warning("re-sync after reconnect failed: %s", exc)
            return
        alive = {c.id for c in channels}
        for session in sessions:
            for channel_id in [session.call.channel_id, *session.legs]:
                if channel_id not in alive:
                    session.gone(channel_id, self.clock(), "vanished")
            if (session.following_dial and session.caller_gone is None
                    and session.call.channel_id in alive):
                # The app's subscriptions may not have outlived the event stream.
                self._spawn(self._refollow(session), None)
        orphans = [c for c in channels if c.id not in self._routes and self._ours(c)]
        self._spawn(self.recover_orphans(orphans, alive), None)

    def _ours(self, channel: Channel) -> bool:
        app, _, _ = channel.app_data.partition(",")
        return (channel.app_name == "Stasis" and app == self.ari.app) or bool(
            _LEG_ID.fullmatch(channel.id))

    async def recover_orphans(self, orphans: list[Channel],
                              alive: set[str] | None = None) -> None:
        """Take care of calls a previous pbxbrain process left behind (one at a time: two
        reconnects in a row must not both take the same call). ``alive``: the ids of
        every channel Asterisk has now."""
        async with self._recovering:
            await self._recover(orphans, alive or set())

    async def _recover(self, orphans: list[Channel], alive: set[str]) -> None:
        orphans = [c for c in orphans if c.id not in self._routes]  # taken meanwhile
        rescued: set[str] = set()
        bridges = await self._our_bridges()
        in_bridges = {c for bridge in bridges.values() for c in bridge.channels}
        for channel in orphans:
            if channel.id in in_bridges:
                continue  # a conversation: adopted below once the database is read
            if await self._let_go(channel):
                rescued.add(channel.id)
        if self.db_ready is not None:
            await self.db_ready.wait()
        try:
            open_calls = await self.store.open_calls()
        except Exception as exc:
            # Conversations go on meanwhile; they are adopted at the next reconnect.
            log.warning("cannot read unfinished calls to recover them: %s", exc)
            return
        adopted: set[str] = set()
        for call in open_calls:
            bridge = bridges.get(f"{call.call_id}-bridge")
            if (bridge is not None and call.node == self.settings.node
                    and call.call_id not in self._sessions and await self._adopt(call, bridge)):
                adopted.add(call.call_id)
        for bridge_id, bridge in bridges.items():  # a bridge with no conversation of ours
            if bridge_id.removesuffix("-bridge") in adopted | set(self._sessions):
                continue
            for channel in orphans:
                if channel.id in bridge.channels and await self._let_go(channel):
                    rescued.add(channel.id)
        for call in open_calls:
            if (call.node != self.settings.node or call.call_id in self._sessions
                    or call.call_id in adopted or self.journal.closing(call.call_id)):
                continue  # another node's, ours, or closed here and not yet written
            if (call.channel_id not in rescued
                    and await self._adopt_dial(call, alive=call.channel_id in alive)):
                continue
            now = self.clock()
            # A caller still in Asterisk but not in this app came by FastAGI: his Dial, or
            # the dialplan's safety net, goes on without pbxbrain.
            in_dialplan = call.channel_id in rescued or call.channel_id in alive
            how = ("handed to the dialplan fallback" if call.channel_id in rescued
                   else "the call goes on in the dialplan (FastAGI)" if in_dialplan
                   else "the call ended while pbxbrain was down")
            self.journal.event(call.call_id, now, EventKind.RECOVERED, how=how)
            outcome = (CallOutcome.ANSWERED if call.answered_at is not None
                       else CallOutcome.DIALPLAN if in_dialplan
                       else CallOutcome.MISSED)
            responsible = await self._responsible_of(call.call_id)
            outbox = self.follow_ups(call, None, outcome, now, call.answered_by,
                                     responsible=responsible)
            self.journal.closed(call.call_id, outcome, now, outbox=outbox,
                                data={"reason": "pbxbrain restarted during the call"})
            log.warning("call %s from %s: closed as %s after a restart (%s)", call.call_id,
                        call.caller, outcome.value, how)

    async def _let_go(self, channel: Channel) -> bool:
        """An orphan channel nobody will take: a leg is hung up, a caller goes to the
        dialplan fallback (True)."""
        if _LEG_ID.fullmatch(channel.id) or channel.app_data.split(",")[1:2] == ["leg"]:
            log.warning("hanging up leg %s left by a previous run", channel.name)
            await self._safe_hangup(channel.id)
            return False
        log.warning("caller %s (%s) was left in the app by a previous run; sending it to the "
                    "dialplan fallback", channel.name, channel.caller.number)
        await self.rescue(channel.id, None, channel.exten)
        return True

    async def _our_bridges(self) -> dict[str, Bridge]:
        """pbxbrain's call bridges (``<call id>-bridge``) no session of this process owns:
        conversations a previous process left, or what is left of them."""
        try:
            bridges = await self.ari.bridges()
        except AriError as exc:
            log.warning("cannot list bridges to find conversations to adopt: %s", exc)
            return {}
        return {b.id: b for b in bridges
                if b.id.endswith("-bridge") and b.id not in self._routes}

    async def _adopt(self, call: CallSummary, bridge: Bridge) -> bool:
        """Take over a conversation a previous pbxbrain process bridged: it goes on, and
        this process hangs up the other side, keeps the recording and closes the call
        when one side leaves (at once when one already left while it was down)."""
        if call.answered_at is None:
            return False
        entries = await self._journal_to_adopt(call)
        if entries is None:
            return False
        # The other side: the bridge's leg (a recorder channel of ARI's bridge recording
        # is not one), or a leg id no channel has when it already left.
        leg_id = next((c for c in bridge.channels
                       if c != call.channel_id and _LEG_ID.fullmatch(c)), f"{call.call_id}-0")
        started = [e.data for e in entries if e.kind is EventKind.RECORDING_STARTED]
        recording = (_TalkRecording(str(started[-1].get("name")),
                                    mixmonitor=started[-1].get("via") == "mixmonitor")
                     if started else None)
        session = self._answered_session(call, call.answered_at)
        staff = call.answered_by or "" if call.direction is Direction.INBOUND else ""
        leg = Leg(leg_id, Target(staff, "", kind="desk" if staff else "client"),
                  call.answered_at, answered=True)
        session.legs[leg_id] = leg
        session.bridges.add(bridge.id)
        session.mixmonitor_on = recording is not None and recording.mixmonitor
        if call.answered_by:
            self.phones.reserve(call.answered_by, call.call_id)
        for key in (call.channel_id, leg_id, bridge.id):
            self.route(key, session)
        if recording is not None and not recording.mixmonitor:
            self.route(recording.name, session)
        self._sessions[call.call_id] = session
        # Events of these channels were not routed until now: one that left meanwhile (or
        # while pbxbrain was down) is told to the session as gone.
        for channel_id in (call.channel_id, leg_id):
            try:
                await self.ari.channel(channel_id)
            except AriNotFound:
                session.gone(channel_id, self.clock(), "gone")
            except AriError:
                pass  # its events will tell
        self.journal.event(call.call_id, self.clock(), EventKind.RECOVERED,
                           how="conversation adopted after a restart")
        log.warning("call %s from %s: conversation with %s adopted after a restart",
                    call.call_id, call.caller, call.answered_by)
        self._spawn(session.resume(leg, bridge.id, call.answered_at, recording,
                                   call.answered_by), session)
        return True

    async def _journal_to_adopt(self, call: CallSummary) -> list[JournalEntry] | None:
        """The journal of an answered call a previous process left; None when it cannot
        be read."""
        try:
            return list(await self.store.journal(call.call_id))
        except Exception as exc:
            log.warning("call %s: cannot read its journal to adopt it: %s", call.call_id, exc)
            return None

    def _answered_session(self, call: CallSummary, answered_at: datetime) -> CallSession:
        """A session for an answered call a previous process left, to see it to its end."""
        session = CallSession(self, InboundCall(
            call_id=call.call_id, channel_id=call.channel_id, caller=call.caller,
            caller_raw=call.caller_raw, dialed=call.dialed, at=call.started_at,
            caller_name=call.caller_name, direction=call.direction, node=call.node))
        session.caller_answered = session.ringback_sent = True
        session.talk_started = answered_at
        session.manager = call.answered_by
        return session

    async def _adopt_dial(self, call: CallSummary, *, alive: bool) -> bool:
        """Take over a FastAGI conversation a previous process left (its journal says
        Dial bridged it): follow the caller's channel to its end through an ARI
        subscription, then keep the recording and close the call (at once when the
        channel is already gone). False when the call is not one, or cannot be followed."""
        if call.answered_at is None:
            return False
        entries = await self._journal_to_adopt(call)
        if entries is None:
            return True  # left open: tried again at the next reconnect
        if not any(e.kind is EventKind.BRIDGED and e.data.get("bridge") == "dial"
                   for e in entries):
            return False
        started = [e.data for e in entries if e.kind is EventKind.RECORDING_STARTED]
        kept = {e.data.get("name") for e in entries if e.kind is EventKind.RECORDING_FINISHED}
        recording = (str(started[-1].get("name"))
                     if started and started[-1].get("name") not in kept else None)
        session = self._answered_session(call, call.answered_at)
        if alive:
            self.route(call.channel_id, session)
            followed = await self._follow(call.channel_id)
            if followed is None:
                log.warning("call %s: cannot follow its FastAGI conversation (ARI refused "
                            "the subscription to channel %s); it is adopted at the next "
                            "reconnect", call.call_id, call.channel_id)
                del self._routes[call.channel_id]
                return True
            alive = followed
        if call.answered_by:
            self.phones.reserve(call.answered_by, call.call_id)
        self._sessions[call.call_id] = session
        if not alive:
            session.gone(call.channel_id, self.clock(), "gone")
        how = ("FastAGI conversation followed after a restart" if alive
               else "the FastAGI conversation ended while pbxbrain was down")
        self.journal.event(call.call_id, self.clock(), EventKind.RECOVERED, how=how)
        log.warning("call %s from %s: %s (%s)", call.call_id, call.caller, how,
                    call.answered_by)
        self._spawn(session.follow_dial(recording, call.answered_by, ended_unseen=not alive),
                    session)
        return True

    async def _refollow(self, session: CallSession) -> None:
        if await self._follow(session.call.channel_id) is False:
            session.gone(session.call.channel_id, self.clock(), "gone")

    async def _follow(self, channel_id: str) -> bool | None:
        """Subscribe the app to the events of a channel outside Stasis: True while it
        exists, False once it is gone, None when Asterisk cannot say or refused."""
        there = await channel_exists(self.ari, channel_id)
        if there is not True:
            return there
        try:
            await self.ari.subscribe(f"channel:{channel_id}")
        except AriError:
            # A channel gone just before is refused (422): only its absence says so.
            return False if await channel_exists(self.ari, channel_id) is False else None
        return True

    async def _responsible_of(self, call_id: str) -> str | None:
        """Who the plan made responsible, as journaled when the call was routed."""
        try:
            entries = await self.store.journal(call_id)
        except Exception:
            return None
        for entry in entries:
            if entry.kind is EventKind.ROUTED:
                value = entry.data.get("responsible")
                return value if isinstance(value, str) else None
        return None

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking calls; hand ringing callers to the dialplan; wait for the sessions.

        Conversations in progress are handed over: they go on in Asterisk, bridged and
        recorded, and the next pbxbrain adopts them (``recover_orphans``), so a restart
        cuts nobody off. Sessions whose caller already left finish their work (the
        recording, the journal) until the deadline.
        """
        self.accepting = False
        for session in list(self._sessions.values()):
            if session.caller_gone is None and session.task:
                session.task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


async def channel_exists(ari: AriClient, channel_id: str) -> bool | None:
    """Whether Asterisk has the channel: None when it cannot say (ARI down)."""
    try:
        await ari.channel(channel_id)
    except AriNotFound:
        return False
    except AriError:
        return None
    return True


def _gone_channel(channel_id: str) -> Channel:
    empty = CallerId("", "")
    return Channel(channel_id, "", "Down", empty, empty, "", "", 0, utcnow())
