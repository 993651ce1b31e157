"""Click-to-call on ARI: ring the manager, then the client, bridge, record.

The ``ClickToCall`` port behind ``POST /v1/calls``. ``start`` returns the call id at once;
the call goes on as a :class:`ClickToCallSession`, a ``CallSession`` whose "caller" is the
manager's own phone:

1. the manager's desk phone is originated into the app (args ``c2c,<call id>``), showing
   the client's number; he does not pick up → outcome ``no_answer``;
2. once he answers, the client is dialed through the trunk with the department's single
   outbound caller ID, the manager hearing ringback; busy → ``busy``, no answer →
   ``no_answer``, the manager hanging up meanwhile → ``abandoned``;
3. the client answers: both are bridged and recorded like any call; ``answered`` by the
   manager, and the number's open missed-call task is closed (``called_back``).

The manager is reserved for the whole call, so inbound routing skips him, and a second
click-to-call for him is refused while one is in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable

from pbxbrain.adapters.ari import (
    AriError,
    AriNotFound,
    ChannelDestroyed,
    StasisStart,
)
from pbxbrain.adapters.stasis import CallerGone, CallSession, StasisApp
from pbxbrain.config import Config
from pbxbrain.domain.model import (
    CallOutcome,
    Direction,
    EventKind,
    InboundCall,
    OriginateRequest,
)
from pbxbrain.domain.plan import Target
from pbxbrain.ports import ClickToCallRefused, ClickToCallUnavailable

log = logging.getLogger(__name__)

BUSY_CAUSES = frozenset({17})  # Q.850 user busy


class ClickToCallSession(CallSession):
    """One click-to-call: the manager's channel plays the caller's part."""

    def __init__(self, app: StasisApp, call: InboundCall, request: OriginateRequest, *,
                 manager_phone: str, caller_id: str | None, manager_ring_s: int,
                 client_ring_s: int, trunk: str) -> None:
        super().__init__(app, call)
        self.request = request
        self.manager = request.staff_id
        self.crm_ids = dict(request.crm_ids)
        self.manager_phone = manager_phone
        self.caller_id = caller_id
        self.manager_ring_s = manager_ring_s
        self.client_ring_s = client_ring_s
        self.trunk = trunk

    async def run(self) -> None:
        call, request = self.call, self.request
        outcome = CallOutcome.FAILED
        answered_by: str | None = None
        self.journal.entered(call, line=self.caller_id, source="click-to-call")
        self.log_event(EventKind.ROUTED, rule="click_to_call", manager=request.staff_id,
                       requested_by=request.requested_by, crm=dict(request.crm_ids),
                       caller_id=self.caller_id)
        try:
            if not await self._ring_manager():
                outcome = CallOutcome.NO_ANSWER
            else:
                client = Target("", f"PJSIP/{call.dialed}@{self.trunk}", kind="client")
                await self._ringback_to_manager()
                try:
                    leg = await self._ring((client,), self.client_ring_s,
                                           caller_id=self.caller_id or None)
                finally:
                    await self._stop_ringback()
                if leg is None:
                    outcome = (CallOutcome.BUSY if self.last_leg_cause in BUSY_CAUSES
                               else CallOutcome.NO_ANSWER)
                else:
                    await self._talk(leg, record=True, by=request.staff_id)
                    outcome, answered_by = CallOutcome.ANSWERED, request.staff_id
        except CallerGone:
            outcome = CallOutcome.ABANDONED  # the manager hung up before the client answered
        except asyncio.CancelledError:
            if not self._hand_over():  # a conversation goes on for the next pbxbrain
                await self._finish(CallOutcome.FAILED, None, reason="pbxbrain stopping")
            raise
        except Exception as exc:
            log.exception("click-to-call %s failed", call.call_id)
            self.log_event(EventKind.ERROR, error=repr(exc))
        await self._finish(outcome, answered_by)

    async def _finish(self, outcome: CallOutcome, answered_by: str | None, *,
                      reason: str | None = None) -> None:
        await self._cleanup()
        if self.caller_gone is None:
            with contextlib.suppress(AriError):
                await self.ari.hangup(self.call.channel_id, "normal")
        ended = self.caller_gone.at if self.caller_gone is not None else self.app.clock()
        outbox = self.app.follow_ups(self.call, None, outcome, ended, answered_by)
        data: dict[str, object] = {"leg": "manager" if not self.caller_answered else "client"}
        if reason:
            data["reason"] = reason
        self.journal.closed(self.call.call_id, outcome, ended, outbox=outbox, data=data)
        self.ended_event(outcome, ended, answered_by)
        log.info("click-to-call %s: %s -> %s: %s", self.call.call_id, self.manager,
                 self.call.dialed, outcome.value)

    async def _ring_manager(self) -> bool:
        """Originate the manager's phone into the app; True once he answered."""
        number = self.call.dialed
        try:
            await self.ari.originate(
                self.manager_phone, app_args=f"c2c,{self.call.call_id}",
                caller_id=f'"{number}" <{number}>', timeout_s=self.manager_ring_s,
                channel_id=self.call.channel_id)
        except AriError as exc:
            self.log_event(EventKind.LEG_ENDED, staff=self.manager,
                           reason=f"cannot ring: {exc.message}")
            return False
        self.log_event(EventKind.RINGING, staff=self.manager, endpoint=self.manager_phone,
                       target="desk", timeout_s=self.manager_ring_s)
        self.ringing(self.manager)
        deadline = asyncio.get_running_loop().time() + self.manager_ring_s + 5
        while True:
            event = await self.next_event(deadline)
            if event is None:
                with contextlib.suppress(AriNotFound):
                    await self.ari.hangup(self.call.channel_id, "no_answer")
                reason = "no answer in time"
                break
            channel = getattr(event, "channel", None)
            if getattr(channel, "id", None) != self.call.channel_id:
                continue
            if isinstance(event, StasisStart):
                self.caller_answered = True
                self.log_event(EventKind.ANSWERED, channel=self.call.channel_id,
                               by=self.manager)
                self.answered_event("manager", self.manager)
                return True
            if isinstance(event, ChannelDestroyed):
                reason = "busy" if event.cause in BUSY_CAUSES else "no answer"
                break
        self.log_event(EventKind.LEG_ENDED, staff=self.manager, reason=reason)
        return False

    async def _ringback_to_manager(self) -> None:
        """The manager hears ringing while the client's phone rings.

        A ringing *indication* (Asterisk plays the tone in band on an answered channel),
        not a ``tone:ring`` playback: a playback occupies the channel's control queue, and
        bridging it raced with stopping the playback (calls stuck with no events).
        """
        with contextlib.suppress(AriError):
            await self.ari.ring(self.call.channel_id)

    async def _stop_ringback(self) -> None:
        with contextlib.suppress(AriError):
            await self.ari.ring_stop(self.call.channel_id)


class ClickToCallService:
    """The ``ClickToCall`` port on the Stasis app."""

    def __init__(self, app: StasisApp, config: Config, *, is_up: Callable[[], bool]) -> None:
        self._app = app
        self._config = config
        self._is_up = is_up
        self._active: Counter[str] = Counter()

    def active_for(self, staff_id: str) -> int:
        """Click-to-calls in progress for a manager."""
        return self._active[staff_id]

    async def start(self, request: OriginateRequest) -> str:
        """Start the call; returns its id at once (the call goes on in the background)."""
        app, config = self._app, self._config
        if not app.accepting or not self._is_up():
            raise ClickToCallUnavailable("Asterisk is not connected; retry in a few seconds")
        staff = config.staff.get(request.staff_id)
        if staff is None or staff.phone is None:
            raise ClickToCallRefused(f"manager {request.staff_id!r} has no desk phone in the "
                                     "config; click-to-call rings the desk phone first")
        call_id = uuid.uuid4().hex
        if not app.phones.reserve(request.staff_id, call_id):
            raise ClickToCallRefused(f"manager {request.staff_id!r} is on another call; "
                                     "try again when he is free")
        department_id = config.department_of(request.staff_id)
        department = config.departments.get(department_id) if department_id else None
        caller_id = department.caller_id if department is not None else None
        call = InboundCall(
            call_id=call_id, channel_id=f"{call_id}-m", caller=staff.short or request.staff_id,
            caller_raw=staff.phone, dialed=request.number, at=app.clock(),
            caller_name=staff.name, direction=Direction.OUTBOUND, node=app.settings.node)
        session = ClickToCallSession(
            app, call, request, manager_phone=staff.phone, caller_id=caller_id,
            manager_ring_s=department.ring_seconds if department is not None else 30,
            client_ring_s=config.click_to_call.client_ring_seconds,
            trunk=config.asterisk.trunk)
        self._active[request.staff_id] += 1

        def done() -> None:
            self._active[request.staff_id] -= 1
            if self._active[request.staff_id] <= 0:
                del self._active[request.staff_id]

        app.adopt(session, on_done=done)
        log.info("click-to-call %s: %s -> %s (by %s)", call_id, request.staff_id,
                 request.number, request.requested_by)
        return call_id
