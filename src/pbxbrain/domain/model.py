"""Plain values of the call domain, shared by the core, the service and the adapters.

Every value is a frozen, slotted dataclass; times are timezone-aware UTC datetimes.
Vocabulary follows Wazo's: a *call* is what a person experiences, a *channel* is one
Asterisk leg of it, a *line* is an inbound number (DID), a *manager* is a staff member.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final


class Direction(enum.StrEnum):
    """Which side started the call."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"
    INTERNAL = "internal"


class CallOutcome(enum.StrEnum):
    """How a call ended, from the caller's and the sales head's point of view."""

    ANSWERED = "answered"  # a manager talked to the caller
    MISSED = "missed"  # the routing plan ran out, nobody answered
    ABANDONED = "abandoned"  # the caller hung up before anybody answered
    REJECTED = "rejected"  # blacklisted or refused on purpose
    VOICEMAIL = "voicemail"  # the caller left a message
    AFTER_HOURS = "after_hours"  # outside working hours, no message left
    DIALPLAN = "dialplan"  # handed back to the dialplan (fallback or pass-through)
    NO_ANSWER = "no_answer"  # outbound: the manager or the client did not pick up
    BUSY = "busy"  # outbound: the client's line was busy
    FAILED = "failed"  # pbxbrain or Asterisk failed; the journal says why


class EventKind(enum.StrEnum):
    """Kinds of call-journal entries: one row per thing that happened to a call."""

    ENTERED = "entered"  # the call entered pbxbrain (Stasis or FastAGI)
    ROUTED = "routed"  # the plan decided for the call (rule, steps, notes)
    ANSWERED = "answered"  # a channel was answered
    RINGING = "ringing"  # a target is being rung
    LEG_ENDED = "leg_ended"  # a rung target did not take the call (busy, no answer, ...)
    NOT_RUNG = "not_rung"  # targets of a ring step taken by other calls before their turn
    PLAYED = "played"  # a prompt was played to the caller
    REJECTED = "rejected"  # refused without answering (blacklist)
    BRIDGED = "bridged"
    RECORDING_STARTED = "recording_started"
    RECORDING_FINISHED = "recording_finished"
    CALLER_HANGUP = "caller_hangup"
    HANGUP = "hangup"  # pbxbrain hung the call up
    CONTINUED = "continued"  # handed back to the dialplan
    ERROR = "error"
    ENDED = "ended"  # the caller's channel is gone
    RECOVERED = "recovered"  # found after a restart, or while pbxbrain was down


@dataclass(frozen=True, slots=True)
class InboundCall:
    """A call entering pbxbrain, as the ARI or FastAGI adapter sees it.

    ``caller`` is E.164 (``+74951234567``) when the number could be parsed, else the
    digits as Asterisk gave them (``caller_raw``); ``dialed`` is the DID or short number.
    """

    call_id: str
    channel_id: str
    caller: str
    caller_raw: str
    dialed: str
    at: datetime
    caller_name: str = ""
    direction: Direction = Direction.INBOUND
    node: str = ""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One event in a call's journal."""

    call_id: str
    at: datetime
    kind: EventKind
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallSummary:
    """A call as stored: what the API, the reports and the CRM see."""

    call_id: str
    direction: Direction
    channel_id: str
    caller: str
    caller_raw: str
    dialed: str
    started_at: datetime
    node: str = ""
    caller_name: str = ""
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: CallOutcome | None = None
    answered_by: str | None = None
    line: str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """Something to deliver outside (CRM task, webhook), committed with the outcome it follows.

    ``key`` is the idempotency key: delivering the same key twice must be harmless.
    """

    key: str
    kind: str
    payload: Mapping[str, Any]
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """An outbox row due for delivery."""

    id: int
    key: str
    kind: str
    payload: Mapping[str, Any]
    attempts: int
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """An outbox row that is not delivered and failed at least once (for the API and ops).

    ``failed_at`` is set when the CRM refused the message for good (no automatic retry
    until somebody retries it by hand); otherwise ``next_attempt_at`` says when the next
    automatic attempt is due.
    """

    id: int
    key: str
    kind: str
    call_id: str | None
    attempts: int
    last_error: str
    created_at: datetime
    next_attempt_at: datetime
    failed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """Metadata of a recording kept by pbxbrain."""

    recording_id: str
    call_id: str
    name: str  # Asterisk's recording name
    path: str  # where pbxbrain keeps the file (relative to the recordings dir)
    format: str
    started_at: datetime
    duration_s: float | None = None
    size_bytes: int | None = None


class TaskStatus(enum.StrEnum):
    """A missed-call task's state."""

    OPEN = "open"
    DONE = "done"  # the manager called back (or closed it by hand)


@dataclass(frozen=True, slots=True)
class Contact:
    """A client as pbxbrain knows it: phone (E.164), name, responsible manager (staff id).

    ``crm_ref`` is the contact's id in an external CRM, when there is one.
    """

    phone: str
    name: str = ""
    owner: str | None = None
    crm_ref: str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class MissedCall:
    """What the outbox delivers for a call nobody answered (payload of ``missed_call``)."""

    call_id: str
    phone: str  # the caller, E.164 (or raw when unparseable)
    outcome: CallOutcome  # missed | abandoned | after_hours | voicemail
    at: datetime  # when the call ended
    due_at: datetime  # call back before this
    responsible: str | None  # staff id
    line: str | None = None
    source: str | None = None
    recording: str | None = None  # recording id (voicemail), for the task's link


@dataclass(frozen=True, slots=True)
class Task:
    """A missed-call task: call ``phone`` back, ``responsible`` does it by ``due_at``.

    Repeated misses from the same number while a task is open update it (``misses``).
    """

    task_id: str
    phone: str
    responsible: str | None
    due_at: datetime
    status: TaskStatus
    created_at: datetime
    misses: int = 1
    last_call_id: str | None = None
    closed_at: datetime | None = None
    crm_ref: str | None = None
    closed_by: str | None = None  # staff id (or API token name) that closed it
    callback_delay_s: float | None = None  # first miss -> call back; None when closed by hand



@dataclass(frozen=True, slots=True)
class ImportRowError:
    """One problem of a contact import. ``row`` is the 1-based number of the record (CSV:
    the data row, the header not counted; JSON: the list item); 0 for the file as a whole."""

    row: int
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What a contact import did: every record is either created, updated or listed in
    ``errors`` (``dry_run``: would be)."""

    total: int
    created: int = 0
    updated: int = 0
    errors: tuple[ImportRowError, ...] = field(default_factory=tuple)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """True when no record was refused."""
        return not self.errors

@dataclass(frozen=True, slots=True)
class OriginateRequest:
    """A click-to-call the HTTP API accepted: ring ``staff_id``'s phone, then dial ``number``.

    Everything here is already checked: ``staff_id`` exists and has a phone, ``number`` is
    E.164 and allowed by ``numbers.dial_allowed`` (``domain.dialing``), ``crm_ids`` holds
    only ``contact_id``/``deal_id`` of ``[A-Za-z0-9_.:-]{1,64}``. ``idempotency_key`` is the
    client's ``Idempotency-Key`` (None when not given; the API already answered repeats),
    ``requested_by`` the name of the API token.
    """

    staff_id: str
    number: str
    crm_ids: Mapping[str, str]
    idempotency_key: str | None
    requested_by: str


def client_of(call: InboundCall | CallSummary) -> str | None:
    """The client of a call, the party outside the company: the caller of an inbound call,
    the number dialed by an outbound one; None for internal calls."""
    if call.direction is Direction.INBOUND:
        return call.caller
    if call.direction is Direction.OUTBOUND:
        return call.dialed
    return None


#: Why a rung phone did not take the call, in the journal's words, by its Q.850 hang-up
#: cause (Asterisk's ``AST_CAUSE_*``, as ARI's ChannelDestroyed reports it).
_CAUSE_REASONS: Final[Mapping[int, str]] = {
    0: "failed", 1: "unallocated number", 3: "no route", 16: "hung up", 17: "busy",
    18: "no answer", 19: "no answer", 20: "unreachable", 21: "rejected",
    22: "number changed", 27: "out of order", 28: "invalid number",
    29: "facility rejected", 34: "congestion", 38: "network out of order",
    41: "temporary failure", 58: "no common codec", 102: "timeout"}

#: A SIP final response's Q.850 cause, as chan_pjsip maps it (``hangup_sip2cause``): a
#: phone's last response read from the dialplan gets the reason its Stasis leg would.
_SIP_CAUSES: Final[Mapping[int, int]] = {
    401: 21, 403: 21, 404: 1, 407: 21, 408: 18, 409: 41, 410: 22, 420: 3, 480: 19,
    483: 19, 484: 28, 485: 1, 486: 17, 488: 58, 500: 38, 501: 29, 502: 27, 503: 34,
    504: 102, 600: 17, 603: 21, 604: 1, 606: 58}


def leg_end_reason(cause: int, text: str = "") -> str:
    """The journal's reason for a rung leg that ended with hang-up ``cause`` (Asterisk's
    own ``text`` for the cause, else its number, when it has no name here)."""
    return _CAUSE_REASONS.get(cause, text or f"cause {cause}")


def sip_refusal_reason(response: str) -> str | None:
    """The journal's reason for a phone whose last SIP response was ``response``
    (``SIP 486 Busy Here``, as the dialplan's ``HANGUPCAUSE(channel,tech)`` says): None
    unless it is a refusal (a final response from 300 on) other than 487, which only
    says the INVITE was cancelled (by a timeout, or an answer elsewhere)."""
    words = response.split(" ", 2)
    if len(words) < 2 or words[0] != "SIP" or not words[1].isdigit():
        return None
    code = int(words[1])
    if code < 300 or code == 487:
        return None
    # chan_pjsip's default for other 5xx is congestion; for other 3xx, 4xx and 6xx its
    # causes (normal clearing, interworking) say less than the response itself.
    cause = _SIP_CAUSES.get(code, 34 if 500 <= code < 600 else None)
    return response if cause is None else leg_end_reason(cause)
