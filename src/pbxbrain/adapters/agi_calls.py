"""Calls the dialplan hands to pbxbrain by FastAGI: decided as in Stasis, run as dialplan.

For setups that keep Asterisk's dialplan in charge (``asterisk-conf/extensions.conf``,
context ``from-pstn-agi``)::

    exten => _[+0-9].,1,AGI(${PBXBRAIN_AGI}/inbound,${EXTEN})
     same => n,... the safety net reads PBXBRAIN_RESULT (below)

The request names the call's kind (``inbound``, ``internal``, ``outbound``: the Stasis app's
args) and its first argument the number dialed. The plan is decided by the same
``Router`` as a Stasis call, and journaled, recorded and followed up the same way (an
:class:`AgiCallSession` is a ``CallSession`` whose steps are dialplan applications run over
the AGI connection instead of ARI requests). Executing a plan (the rules, in order):

1. ``Reject``: ``Hangup(17)`` (busy) or ``Hangup(34)`` (congestion) without answering.
2. ``Ring``: one ``Dial(A&B,<timeout>,gU(pbxbrain-answered^<call id>))`` per group (every
   target at once for ring-all, one per target for sequential). Dial gives the caller
   ringback and, when a phone answers, hangs up the others. The answering phone's
   channel runs the ``pbxbrain-answered`` subroutine, whose ``AGI(.../answered,<call id>)``
   tells pbxbrain who answered, when (the others are free again at once), and starts
   MixMonitor on that channel: the conversation's recording. Dial returns when the
   conversation ends (``g``: the caller's channel stays in the AGI) and pbxbrain hangs
   the caller up; the recording is then kept like a Stasis call's.
3. ``Play``: Answer, ``Playback``. ``Voicemail``: Answer, ``RECORD FILE`` (beep; until
   ``#``, the maximum length or hang-up), keep the file. Ends the plan.
4. The caller hanging up (Asterisk's ``HANGUP``, or Dial's ``CANCEL``) makes the call
   abandoned while phones ring.
5. The dialplan's safety net: pbxbrain sets ``PBXBRAIN_RESULT`` to ``ringing`` before the
   first Dial and to ``done`` once the call is dealt with. After the AGI, anything but
   ``done`` (pbxbrain down or failing: empty; stopped while phones rang: ``ringing`` with
   a Dial that was not answered) sends the caller to the fallback context, so nobody is
   left in silence. A Dial in progress goes on in Asterisk when pbxbrain stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from pbxbrain.adapters.agi import (
    MAX_COMMAND_BYTES,
    AgiChannel,
    AgiClosed,
    AgiError,
    AgiHangup,
    agi_quote,
)
from pbxbrain.adapters.stasis import (
    MIXMONITOR_FORMATS,
    CallerGone,
    CallSession,
    StasisApp,
    _Ended,
)
from pbxbrain.domain.model import (
    CallOutcome,
    Direction,
    EventKind,
    InboundCall,
    sip_refusal_reason,
)
from pbxbrain.domain.phone import normalize_caller, to_e164
from pbxbrain.domain.plan import Plan, Target

log = logging.getLogger(__name__)

#: The variable the dialplan's safety net reads after the AGI (see the module's rule 5).
RESULT_VARIABLE: Final = "PBXBRAIN_RESULT"

#: Set on the answering phone's channel once pbxbrain was told of the answer (and started
#: the recording, when the plan records): else the subroutine records the call itself.
TOLD_VARIABLE: Final = "PBXBRAIN_TOLD"

#: The dialplan subroutine Dial runs on the phone that answers (``U()`` option).
ANSWERED_SUBROUTINE: Final = "pbxbrain-answered"

#: Hang-up causes (Q.850) for the ends of a plan: busy (SIP 486), congestion (503),
#: no answer (480).
_CAUSES: Final = {"busy": 17, "congestion": 34, "no_answer": 19}

#: Dial's DIALSTATUS as the journal says it.
_DIAL_STATUS: Final = {"BUSY": "busy", "NOANSWER": "no answer in time",
                       "CHANUNAVAIL": "unreachable", "CONGESTION": "congestion",
                       "CANCEL": "caller hung up", "DONTCALL": "rejected",
                       "TORTURE": "rejected", "INVALIDARGS": "invalid dial string"}

_KINDS: Final = {"inbound": Direction.INBOUND, "internal": Direction.INTERNAL,
                 "outbound": Direction.OUTBOUND}


class _TooLong(Exception):
    """A ring step Asterisk cannot take over AGI in one command."""


class AgiCallSession(CallSession):
    """One call handed over by FastAGI: its plan run as dialplan applications."""

    def __init__(self, app: StasisApp, call: InboundCall, agi: AgiChannel) -> None:
        super().__init__(app, call)
        self.agi = agi
        self._dialing: tuple[Target, ...] = ()  # the targets of the Dial in progress
        self._dial_started: datetime | None = None
        self._in_dial = False
        self._winner: Target | None = None
        self._winner_channel = ""  # the answering phone's channel (unique id)
        self._record = False  # the Dial in progress is to be recorded
        self._recording: str | None = None  # the talk's recording name, once started
        self._result = ""  # what PBXBRAIN_RESULT says now

    # -- the call ------------------------------------------------------------------
    async def run(self) -> None:
        """Decide, execute, journal the outcome; the caller is never left in silence."""
        call = self.call
        outcome = CallOutcome.FAILED
        answered_by: str | None = None
        plan: Plan | None = None
        try:
            plan = await self.decide()
            if plan.fallback:
                outcome = await self._to_fallback("no rules for this number")
            else:
                outcome, answered_by = await self.execute(plan)
        except (CallerGone, AgiHangup):
            outcome, answered_by = self._unfinished(caller_left=True)
        except _TooLong:
            outcome = CallOutcome.DIALPLAN
            with contextlib.suppress(AgiError):
                await self._to_fallback("a ring step too long for AGI")
        except asyncio.CancelledError:
            await self._stopped(plan)
            raise
        except Exception as exc:
            if plan is None:
                self.journal.entered(call)
            if isinstance(exc, AgiClosed):
                log.error("call %s (channel %s): Asterisk closed the AGI connection: %s",
                          call.call_id, self.agi.env.get("channel", "?"), exc)
            else:
                log.exception("call %s (channel %s): failed in pbxbrain; the dialplan's "
                              "safety net takes it", call.call_id,
                              self.agi.env.get("channel", "?"))
            self.log_event(EventKind.ERROR, error=repr(exc))
            outcome, answered_by = self._unfinished(caller_left=self.agi.hung_up)
        finally:
            self._journal_not_rung()
            self.app.phones.release_all(call.call_id)
        self._left()
        await self._close_call(outcome, answered_by, plan)

    def _unfinished(self, *, caller_left: bool) -> tuple[CallOutcome, str | None]:
        """The outcome of a plan cut short: answered once a phone did; else abandoned
        when the caller left, or the dialplan's (PBXBRAIN_RESULT is not "done": the
        safety net has him)."""
        if caller_left:
            self._left()
        if self._winner is not None:
            return CallOutcome.ANSWERED, self._answered_by(self._winner)
        if caller_left:
            return CallOutcome.ABANDONED, None
        return CallOutcome.DIALPLAN, None

    async def _stopped(self, plan: Plan | None) -> None:
        """pbxbrain stops: what Asterisk does without us, journaled as far as known."""
        self._journal_not_rung()
        self.app.phones.release_all(self.call.call_id)
        now = self.app.clock()
        if plan is None:
            self.journal.entered(self.call)
        if self._winner is not None:
            # The conversation is Asterisk's Dial: it goes on. The call stays open; the
            # next pbxbrain follows it to its end and keeps its recording
            # (StasisApp._adopt_dial).
            log.info("call %s: pbxbrain stopping during the conversation; it goes on in "
                     "Asterisk for the next pbxbrain to adopt", self.call.call_id)
            return
        reason = ("pbxbrain stopped while phones rang; the dialplan's safety net takes the "
                  "call if nobody answers" if self._in_dial else
                  "pbxbrain stopping: the call went to the dialplan's safety net")
        self.journal.closed(self.call.call_id, CallOutcome.DIALPLAN, now,
                            data={"reason": reason})

    def _left(self) -> None:
        """The caller's channel is done with pbxbrain (hung up, or handed back)."""
        if self.caller_gone is None:
            self.caller_gone = _Ended(self.app.clock(), "agi")

    def _check_caller(self) -> None:
        if self.agi.hung_up:
            raise CallerGone
        super()._check_caller()

    async def _set_result(self, value: str) -> None:
        if self._result != value:
            await self.agi.set_variable(RESULT_VARIABLE, value)
            self._result = value

    async def _to_fallback(self, reason: str) -> CallOutcome:
        """Back to the dialplan: the safety net sends the caller to the fallback context."""
        await self._set_result("fallback")
        self.log_event(EventKind.CONTINUED, context="the dialplan's safety net after AGI()",
                       reason=reason)
        return CallOutcome.DIALPLAN

    # -- how the steps reach Asterisk (their order is CallSession.execute's) ----------
    async def _reject(self, cause: str) -> None:
        await self._set_result("done")
        await self.agi.exec("Hangup", str(_CAUSES.get(cause, 17)))

    async def _ring_step(self, group: tuple[Target, ...], timeout_s: int,
                         caller_id: str | None, plan: Plan) -> str | None:
        winner = await self._dial(group, timeout_s, caller_id=caller_id, record=plan.record)
        return None if winner is None else self._answered_by(winner)

    async def _end_unanswered(self, reason: str) -> None:
        await self._set_result("done")
        await self.agi.exec("Hangup", str(_CAUSES[reason]))

    def _answered_by(self, target: Target) -> str:
        return (self.plan.manager if self.plan is not None and self.plan.manager
                else target.staff_id)

    # -- steps -----------------------------------------------------------------------
    async def _answer_caller(self) -> None:
        if not self.caller_answered:
            await self.agi.answer()
            self.caller_answered = True
            self.log_event(EventKind.ANSWERED, channel=self.call.channel_id, by="pbxbrain")

    async def _dial(self, targets: tuple[Target, ...], timeout_s: int, *,
                    caller_id: str | None, record: bool) -> Target | None:
        """Ring ``targets`` with one Dial; the target who answered (after the
        conversation, which Dial holds), or None."""
        call_id = self.call.call_id
        options = f"gU({ANSWERED_SUBROUTINE}^{call_id})"
        if caller_id:  # shown to the called phones, not written over the caller's own
            options += f"f({caller_id})"
        longest = f"EXEC Dial {agi_quote(self._dial_args(targets, timeout_s, options))}"
        if len(longest.encode()) + 1 > MAX_COMMAND_BYTES:
            # Asterisk cuts AGI commands at 2 KB: ring fewer at once (a shorter step), or
            # let the dialplan have the call rather than dial half a list.
            log.error("call %s: a Dial of %d phones is longer than Asterisk takes over AGI "
                      "(%d bytes); the dialplan's safety net takes the call; ring fewer "
                      "people at once in this route", call_id, len(targets), len(longest))
            self.log_event(EventKind.ERROR, error=f"Dial of {len(targets)} phones too long "
                           "for AGI")
            raise _TooLong
        free: list[Target] = []
        for target in targets:
            if target.staff_id and not self.app.phones.reserve(target.staff_id, call_id):
                self.not_rung.append(target.staff_id)  # journaled once per step
                continue
            free.append(target)
        if not free:
            return None
        self._dialing, self._winner, self._record = tuple(free), None, record
        self._dial_started = self.app.clock()
        for target in free:
            self.log_event(EventKind.RINGING, staff=target.staff_id, endpoint=target.endpoint,
                           target=target.kind, timeout_s=timeout_s)
            self.ringing(target.staff_id or None)
        answered_before = self.caller_answered
        await self._set_result("ringing")
        if len(free) > 1:
            # HANGUPCAUSE_KEYS() names every phone any Dial of the call rang: only this
            # Dial's are to be read after it (see _refusals).
            await self.agi.exec("HangupCauseClear")
        self._in_dial = True  # until Dial returns (a stop during it reads it)
        await self.agi.exec("Dial", self._dial_args(free, timeout_s, options))
        self._in_dial = False
        status = await self.agi.get_variable("DIALSTATUS") or ""
        if self._winner is None and status == "ANSWER":
            await self._answer_not_told(answered_before)
        winner = self._winner
        if winner is None:
            refusals = (await self._refusals()
                        if len(free) > 1 and status != "CANCEL" and not self.agi.hung_up
                        else {})
            self._nobody_answered(free, status, refusals)
            return None
        await self._conversation_over(winner, answered_before)
        return winner

    @staticmethod
    def _dial_args(targets: tuple[Target, ...] | list[Target], timeout_s: int,
                   options: str) -> str:
        return f"{'&'.join(t.endpoint for t in targets)},{timeout_s},{options}"

    async def _refusals(self) -> dict[Target, str]:
        """Why each phone of a Dial that rang several refused, by its last SIP response:
        DIALSTATUS is one word for them all (NOANSWER when one was busy and another rang
        out). A phone that rang out, or that cannot be told apart from another (two
        mobiles through one trunk), has none."""
        keys = await self.agi.get_variable("HANGUPCAUSE_KEYS()") or ""
        refusals: dict[Target, str] = {}
        for key in (k.strip() for k in keys.split(",")):
            target = self.target_of(key) if key else None
            if target is None:
                continue
            try:
                response = await self.agi.get_variable(f"HANGUPCAUSE({key},tech)") or ""
            except (AgiError, ValueError) as exc:  # a name AGI cannot carry; a dead line
                log.warning("call %s: no hang-up cause of %s (%s); Dial's DIALSTATUS "
                            "says why", self.call.call_id, key, exc)
                continue
            reason = sip_refusal_reason(response)
            if reason is not None:
                refusals[target] = reason
        return refusals

    def _nobody_answered(self, free: list[Target], status: str,
                         refusals: Mapping[Target, str]) -> None:
        why = _DIAL_STATUS.get(status, status.lower() or "no answer")
        self.last_leg_cause = 17 if status == "BUSY" else 0
        for target in free:
            self.app.phones.release(target.staff_id, self.call.call_id)
            self.log_event(EventKind.LEG_ENDED, staff=target.staff_id,
                           reason=refusals.get(target, why), dialstatus=status)
        if status == "CANCEL" or self.agi.hung_up:
            raise CallerGone

    async def _answer_not_told(self, answered_before: bool) -> None:
        """Dial says a phone answered but its subroutine never reached pbxbrain (the AGI
        was refused or failed): find who from Dial's variables; the dialplan recorded
        the call itself (``pbxbrain-fallback-<call id>.wav``)."""
        peer = await self.agi.get_variable("DIALEDPEERNAME") or ""
        number = await self.agi.get_variable("DIALEDPEERNUMBER") or ""
        # ANSWEREDTIME counts from the caller's own answer: the talk only when Dial did it.
        talk_ms = None if answered_before else await self._milliseconds("ANSWEREDTIME_MS")
        target = self.target_of(peer, number)
        if target is None:
            log.error("call %s: Dial answered by %r (%r), not one of the phones rung",
                      self.call.call_id, peer, number)
            target = Target("", number or peer)
        talk = timedelta(milliseconds=talk_ms or 0)
        self._record = False
        self.log_event(EventKind.ERROR, error=f"the answer of {peer} was not told to pbxbrain "
                       "in time; the dialplan recorded the call as pbxbrain-fallback-"
                       f"{self.call.call_id}.wav")
        self.answered(target, "", at=self.app.clock() - talk)

    async def _milliseconds(self, variable: str) -> int | None:
        """One of Dial's ``*_MS`` variables, None when unset or not a number."""
        value = await self.agi.get_variable(variable) or ""
        return int(value) if value.isdigit() else None

    async def _conversation_over(self, winner: Target, answered_before: bool) -> None:
        """Dial returned after a conversation: hang the caller up, keep the recording."""
        # ANSWEREDTIME counts from the caller's own answer: the talk only when Dial did it
        # (not after a prompt); else from the answer pbxbrain was told of.
        talk_ms = None if answered_before else await self._milliseconds("ANSWEREDTIME_MS")
        talk_s = (talk_ms / 1000 if talk_ms is not None else
                  round((self.app.clock() - (self.talk_started or self.call.at))
                        .total_seconds(), 3))
        by_caller = self.agi.hung_up
        self.log_event(EventKind.HANGUP, by="caller" if by_caller
                       else winner.staff_id or "client", talk_s=talk_s)
        self.app.phones.release(winner.staff_id, self.call.call_id)
        if self._winner_channel:
            self.app.phones.changed(self._winner_channel)
        if not by_caller:
            with contextlib.suppress(AgiHangup):
                await self._set_result("done")
                await self.agi.hangup()
        self._left()
        if self._recording is not None and self.talk_started is not None:
            await self._keep_recording(self._recording, self.talk_started, announced=False)

    # -- the answer, told by the phone's channel ---------------------------------------
    def answered(self, target: Target, channel_id: str, *, at: datetime | None = None
                 ) -> None:
        """The phone of ``target`` answered (its channel ``channel_id``); the others Dial
        rang are free again."""
        call_id = self.call.call_id
        now = at or self.app.clock()
        self._winner, self._winner_channel = target, channel_id
        self.caller_answered = True
        for other in self._dialing:
            if other is not target:
                self.app.phones.release(other.staff_id, call_id)
                self.log_event(EventKind.LEG_ENDED, staff=other.staff_id,
                               reason="answered elsewhere")
        started = self._dial_started or self.call.at
        self.log_event(EventKind.ANSWERED, channel=channel_id, by=target.staff_id,
                       after_s=round((now - started).total_seconds(), 3))
        by = self._answered_by(target)
        self.talk_started = now
        self.journal.answered(call_id, now, by)
        self.log_event(EventKind.BRIDGED, staff=by, bridge="dial",
                       after_s=round((now - self.call.at).total_seconds(), 3))
        self.answered_event("client" if self.call.direction is Direction.OUTBOUND
                            else "manager", by)

    def recording_path(self) -> str | None:
        """Where the answering phone's MixMonitor writes the talk (None: not recorded)."""
        fmt = self.app.settings.recording_format
        if not self._record:
            return None
        if fmt not in MIXMONITOR_FORMATS:
            # Only a WAV file tells when Asterisk has closed it (see recordings.py).
            log.error("call %s: recordings.format %s cannot be recorded over FastAGI (wav "
                      "only); the call is not recorded", self.call.call_id, fmt)
            self.log_event(EventKind.ERROR, error=f"format {fmt} not recorded over FastAGI")
            return None
        name = f"{self.call.call_id}-talk"
        return f"{self.app.settings.asterisk_recording_dir.rstrip('/')}/{name}.{fmt}"

    def recording_started(self, path: str) -> None:
        """MixMonitor runs on the answering phone's channel, writing ``path``."""
        name = path.rpartition("/")[2].rpartition(".")[0]
        self._recording = name
        self.log_event(EventKind.RECORDING_STARTED, name=name,
                       format=self.app.settings.recording_format, via="mixmonitor")

    def target_of(self, channel_name: str, dialed: str = "") -> Target | None:
        """Which target of the Dial in progress answered: by the dial string's resource
        Dial reports (``DIALEDPEERNUMBER``: ``101``, ``+79161234567@pstn``), else by the
        channel's name (``PJSIP/101-0000002a``; a trunk's channels all look alike)."""
        if dialed:
            for target in self._dialing:
                if target.endpoint.partition("/")[2] == dialed:
                    return target
        base = channel_name.rpartition("-")[0] or channel_name
        for target in self._dialing:
            if target.endpoint == base:
                return target
        through = [t for t in self._dialing  # PJSIP/+7916...@pstn is PJSIP/pstn-…
                   if "@" in t.endpoint and base == "{}/{}".format(
                       t.endpoint.partition("/")[0], t.endpoint.partition("@")[2])]
        return through[0] if len(through) == 1 else None

    async def _play(self, prompt: str) -> None:
        played = await self.agi.exec("Playback", prompt)
        if played.result < 0:  # the caller hung up (his HANGUP may come after this)
            raise CallerGone
        self._check_caller()
        status = await self.agi.get_variable("PLAYBACKSTATUS")
        if status != "SUCCESS":
            log.warning("call %s: prompt %s not played (%s); going on without it",
                        self.call.call_id, prompt, status)
            self.log_event(EventKind.ERROR, error=f"prompt {prompt} not played: {status}")
            return
        self.log_event(EventKind.PLAYED, prompt=prompt)

    async def _voicemail(self, box: str) -> bool:
        """Record a message for ``box``; True when the caller left one."""
        settings = self.app.settings
        name = f"{self.call.call_id}-voicemail"
        path = f"{settings.asterisk_recording_dir.rstrip('/')}/{name}"
        started = self.app.clock()
        self.log_event(EventKind.RECORDING_STARTED, name=name, box=box, voicemail=True)
        # Until # (or the maximum, or hang-up); 0: no offset; BEEP first.
        with contextlib.suppress(AgiHangup):  # hung up before: the message is what there is
            await self.agi.command(f"RECORD FILE {path} {settings.recording_format} # "
                                   f"{settings.voicemail_max_s * 1000} 0 BEEP")
        # The caller is let go first: a stop while the file is kept must not send a
        # caller who left a message to the fallback group.
        with contextlib.suppress(AgiHangup):
            await self._set_result("done")
            if not self.agi.hung_up:
                await self.agi.hangup()
        self._left()
        kept = await self._keep_recording(name, started, announced=False)
        if kept:
            self.voicemail_id = name
        return kept


class AgiCalls:
    """The FastAGI handler: dispatches each AGI request to a call session."""

    def __init__(self, app: StasisApp) -> None:
        self.app = app
        self._calls: dict[str, AgiCallSession] = {}  # call id -> session
        self.accepting = True

    @property
    def active_calls(self) -> int:
        """Calls in progress that came by FastAGI."""
        return len(self._calls)

    async def handle(self, agi: AgiChannel) -> None:
        """One AGI request (``AgiServer`` handler)."""
        match agi.script, agi.args:
            case "answered", (call_id, *rest):
                await self._answered(agi, call_id, rest[0] if rest else "")
            case ("inbound" | "internal" | "outbound") as kind, args:
                dialed = args[0] if args else agi.env.get("extension", "")
                if not self.accepting:
                    return  # stopping: the safety net takes the call
                await self._call(agi, _KINDS[kind], dialed)
            case _:
                log.error("FastAGI request %r with args %r from channel %s: expected "
                          "agi://<host:port>/inbound,<DID> (or internal, outbound, answered; "
                          "see asterisk-conf/extensions.conf); the dialplan's safety net "
                          "takes the call", agi.script, agi.args,
                          agi.env.get("channel", "?"))

    async def _call(self, agi: AgiChannel, direction: Direction, dialed: str) -> None:
        settings = self.app.settings
        if direction is Direction.OUTBOUND:  # journal the client's number as E.164
            dialed = to_e164(dialed, settings.default_region) or dialed
        raw = agi.env.get("callerid", "")
        raw = "" if raw == "unknown" else raw
        name = agi.env.get("calleridname", "")
        call = InboundCall(
            call_id=uuid.uuid4().hex,
            channel_id=agi.env.get("uniqueid", ""),
            caller=normalize_caller(raw, settings.default_region),
            caller_raw=raw,
            caller_name="" if name == "unknown" else name,
            dialed=dialed,
            at=self.app.clock(),
            direction=direction,
            node=settings.node,
        )
        session = AgiCallSession(self.app, call, agi)
        session.task = asyncio.current_task()
        self._calls[call.call_id] = session
        self.app.track(session)
        log.info("call %s: %s %s -> %s (channel %s, FastAGI)", call.call_id,
                 direction.value, call.caller, dialed, agi.env.get("channel", "?"))
        try:
            await session.run()
        finally:
            self._calls.pop(call.call_id, None)
            self.app.untrack(session)

    async def _answered(self, agi: AgiChannel, call_id: str, dialed: str) -> None:
        """A phone answered a Dial of call ``call_id`` (``dialed``: Dial's
        DIALEDPEERNUMBER of it): tell the call; record the talk. ``PBXBRAIN_TOLD=1`` says
        so to the subroutine, which records the call itself otherwise."""
        channel = agi.env.get("channel", "")
        session = self._calls.get(call_id)
        target = session.target_of(channel, dialed) if session is not None else None
        if session is None or target is None:
            # A call this process does not know (it restarted meanwhile): the subroutine
            # records it the way the dialplan records the calls pbxbrain does not handle.
            log.warning("phone %s (%s) answered call %s, which pbxbrain does not know; "
                        "the dialplan records it", channel, dialed, call_id)
            return
        session.answered(target, agi.env.get("uniqueid", ""))
        path = session.recording_path()
        if path is not None:
            try:
                await agi.exec("MixMonitor", path)
            except AgiError as exc:
                log.error("call %s: MixMonitor on %s failed: %s; the dialplan records the "
                          "call", call_id, channel, exc)
                session.log_event(EventKind.ERROR, error=f"recording failed: {exc}")
                return
            session.recording_started(path)
        await agi.set_variable(TOLD_VARIABLE, "1")

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Stop taking calls; sessions end (journaled as far as known; what Asterisk still
        does, it does without pbxbrain: see the module's rule 5)."""
        self.accepting = False
        tasks = {s.task for s in self._calls.values() if s.task is not None}
        for session in self._calls.values():
            # A session whose caller is already done (keeping a voicemail or the talk's
            # recording) finishes its work until the deadline.
            if session.task and session.caller_gone is None and not session.agi.hung_up:
                session.task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
