"""Request and response models of the HTTP API (pydantic), and their conversions.

The OpenAPI document is generated from these models (``api.openapi``); the handlers build
every JSON answer through them, so what the document says is what the server sends.
Request models forbid unknown fields and are strict about types (no ``123`` for a string).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from pbxbrain.domain.dialing import MAX_INPUT_LENGTH
from pbxbrain.domain.model import (
    CallOutcome,
    CallSummary,
    Direction,
    EventKind,
    JournalEntry,
    RecordingInfo,
)

__all__ = [
    "ID_PATTERN",
    "NUMBER_PATTERN",
    "CallDetail",
    "CallLinks",
    "CallList",
    "CallListLinks",
    "CallOut",
    "CallsQuery",
    "CrmIdsIn",
    "ErrorBody",
    "ErrorDetail",
    "EventsQuery",
    "Health",
    "OriginateAccepted",
    "OriginateBody",
    "RecordingLinks",
    "RecordingOut",
    "TimelineEntry",
    "call_detail",
    "call_out",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
"""Call ids, recording ids, staff ids, CRM ids, cursors."""
NUMBER_PATTERN = r"^[0-9+() .-]{1,20}$"
"""What a phone number may be written with (checked further by ``domain.dialing``)."""
EVENT_TYPES_PATTERN = r"^[a-z][a-z0-9_.]{0,63}(,[a-z][a-z0-9_.]{0,63}){0,15}$"

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
                      r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})")


def _rfc3339(value: object) -> object:
    """An RFC 3339 moment with its offset, as a datetime; a ``+`` of the offset that a query
    string turned into a space is put back."""
    if not isinstance(value, str):
        return value
    text = value
    if re.fullmatch(r".+[0-9] [0-9]{2}:[0-9]{2}", text):
        head, _, offset = text.rpartition(" ")
        text = f"{head}+{offset}"
    if not _RFC3339.fullmatch(text):
        raise ValueError("must be a date and time with its UTC offset (RFC 3339), like "
                         "2027-01-01T09:00:00+03:00 or 2027-01-01T06:00:00Z")
    try:
        return datetime.fromisoformat(text.upper())
    except ValueError:
        raise ValueError("is not a date and time that exists") from None


QueryMoment = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Query(BaseModel):
    # Query values are text: not strict, so "50" is a limit of 50.
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- requests -------------------------------------------------------------------------------


class CrmIdsIn(_Request):
    """The CRM records a click-to-call belongs to; they come back in its events."""

    contact_id: Identifier | None = Field(None, description="The client's contact id.",
                                          examples=["C-1042"])
    deal_id: Identifier | None = Field(None, description="The deal the call is about.",
                                       examples=["D-77"])


class OriginateBody(_Request):
    """Click-to-call: ring ``manager``'s phone; when they answer, dial ``number``."""

    manager: Identifier = Field(description="Staff id (ivanov) or short number (101) of the "
                                            "manager whose phone rings first.",
                                examples=["ivanov"])
    number: str = Field(
        description="The client's number: international (+7 495 123-45-67) or national "
                    "when the PBX has a default region. Digits, '+', spaces, '(', ')', '-' "
                    "and '.' only; it must be a valid number within numbers.dial_allowed.",
        examples=["+74951234567"],
        json_schema_extra={"pattern": NUMBER_PATTERN, "minLength": 1,
                           "maxLength": MAX_INPUT_LENGTH})
    crm: CrmIdsIn | None = None


class CallsQuery(_Query):
    """Filters and paging of ``GET /v1/calls``."""

    since: QueryMoment | None = Field(
        None, description="Calls started at or after this moment (ISO 8601 with offset; "
                          "write + as %2B in a URL).", examples=["2027-01-01T00:00:00Z"])
    until: QueryMoment | None = Field(
        None, description="Calls started before this moment (ISO 8601 with offset).")
    manager: Identifier | None = Field(
        None, description="Only calls answered by this manager (staff id or short number; "
                          "the id of a manager no longer configured still finds their calls).")
    number: str | None = Field(
        None, description="Only calls from or to this number (E.164 preferred).",
        json_schema_extra={"pattern": NUMBER_PATTERN})
    outcome: CallOutcome | None = Field(None, description="Only calls that ended so.")
    line: str | None = Field(None, description="Only calls to this line (DID).",
                             json_schema_extra={"pattern": NUMBER_PATTERN})
    limit: int = Field(50, ge=1, le=200, description="Calls per page.")
    cursor: Identifier | None = Field(
        None, description="Opaque: where the previous page ended (take the next link).")


class EventsQuery(_Query):
    """Filters of ``GET /v1/events``."""

    types: Annotated[str, StringConstraints(pattern=EVENT_TYPES_PATTERN)] | None = Field(
        None, description="Comma-separated event types to receive (default: all), e.g. "
                          "screen_pop,call.ended.")


# --- responses ------------------------------------------------------------------------------


class ErrorDetail(_Response):
    """What went wrong."""

    code: str = Field(description="Machine-readable reason, e.g. rate_limited.")
    message: str = Field(description="What went wrong and what to do, for people.")
    field: str | None = Field(None, description="The request field at fault, if one is.")


class ErrorBody(_Response):
    """Every 4xx and 5xx answer (except /v1/health's 503) has this shape."""

    error: ErrorDetail


class Health(_Response):
    """The daemon's health: each component ok or what is wrong."""

    status: Literal["ok", "unavailable"]
    version: str
    checks: dict[str, str]


class CallLinks(_Response):
    """Where a call is."""

    self: str = Field(description="The call: GET it for its timeline and recordings.")


class OriginateAccepted(_Response):
    """The click-to-call started: the manager's phone is ringing."""

    call_id: str
    status: Literal["ringing_manager"]
    links: CallLinks


class CallOut(_Response):
    """A call as stored."""

    call_id: str
    direction: Direction
    caller: str = Field(description="E.164 when it parsed, else as received.")
    caller_raw: str
    caller_name: str
    dialed: str
    line: str | None
    source: str | None
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    outcome: CallOutcome | None = Field(description="null while the call is in progress.")
    answered_by: str | None = Field(description="Staff id of the manager who answered.")
    links: CallLinks


class CallListLinks(_Response):
    """Paging links."""

    next: str | None = Field(description="The next page; null on the last one.")


class CallList(_Response):
    """A page of calls, newest first."""

    calls: list[CallOut]
    links: CallListLinks


class TimelineEntry(_Response):
    """One event of a call's journal."""

    at: datetime
    kind: EventKind
    data: dict[str, Any]


class RecordingLinks(_Response):
    """Where a recording's audio is."""

    audio: str


class RecordingOut(_Response):
    """A recording of a call."""

    recording_id: str
    format: str
    started_at: datetime
    duration_s: float | None
    size_bytes: int | None
    links: RecordingLinks


class CallDetail(CallOut):
    """A call with its timeline (journal, oldest first) and recordings."""

    timeline: list[TimelineEntry]
    recordings: list[RecordingOut]


# --- conversions ----------------------------------------------------------------------------


def call_path(call_id: str) -> str:
    """The API path of a call."""
    return f"/v1/calls/{call_id}"


def call_out(call: CallSummary) -> CallOut:
    """The API view of a stored call."""
    return CallOut(**_call_fields(call))


def _call_fields(call: CallSummary) -> dict[str, Any]:
    return {
        "call_id": call.call_id, "direction": call.direction, "caller": call.caller,
        "caller_raw": call.caller_raw, "caller_name": call.caller_name, "dialed": call.dialed,
        "line": call.line, "source": call.source, "started_at": call.started_at,
        "answered_at": call.answered_at, "ended_at": call.ended_at, "outcome": call.outcome,
        "answered_by": call.answered_by, "links": CallLinks(self=call_path(call.call_id)),
    }


def call_detail(call: CallSummary, journal: list[JournalEntry],
                recordings: list[RecordingInfo]) -> CallDetail:
    """The API view of a call with its journal and recordings."""
    return CallDetail(
        **_call_fields(call),
        timeline=[TimelineEntry(at=entry.at, kind=entry.kind, data=dict(entry.data))
                  for entry in journal],
        recordings=[RecordingOut(recording_id=rec.recording_id, format=rec.format,
                                 started_at=rec.started_at, duration_s=rec.duration_s,
                                 size_bytes=rec.size_bytes,
                                 links=RecordingLinks(audio=f"/v1/recordings/{rec.recording_id}"))
                    for rec in recordings],
    )
