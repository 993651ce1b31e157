"""Missed calls: which outcomes are missed, and by when the client must be called back. Pure.

The rules:

* Missed outcomes are ``missed`` (nobody answered), ``abandoned`` (the caller hung up while
  ringing or in a prompt), ``after_hours`` and ``voicemail``. ``rejected`` (blacklist),
  ``answered``, ``dialplan`` (handed to the fallback, which answers for itself) and
  ``failed`` are not.
* The call-back deadline (``due_at``): within the line's working hours, ``ended_at`` plus
  the SLA; outside them, the schedule's next opening plus the SLA (a call at 23:00 is due
  the next working morning at 09:15 with a 15-minute SLA; holidays and weekends are skipped
  by the schedule). No schedule means always open. A schedule that never opens again
  falls back to ``ended_at`` plus the SLA, so that a task always has a deadline.
* The SLA is the line's ``sla_minutes`` when set, else ``missed_calls.sla_minutes``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pbxbrain.domain.model import CallOutcome, CallSummary, InboundCall, MissedCall
from pbxbrain.domain.schedule import next_opening

if TYPE_CHECKING:
    from pbxbrain.config import Config, Schedule

MISSED_OUTCOMES = frozenset(
    {CallOutcome.MISSED, CallOutcome.ABANDONED, CallOutcome.AFTER_HOURS, CallOutcome.VOICEMAIL}
)


def is_missed(outcome: CallOutcome) -> bool:
    """Does a call with this outcome need a call back (a missed-call task)?"""
    return outcome in MISSED_OUTCOMES


def due_at(ended_at: datetime, schedule: Schedule | None, sla_minutes: int) -> datetime:
    """By when a call that ended at ``ended_at`` (aware, UTC) must be called back, in UTC."""
    if ended_at.tzinfo is None or ended_at.utcoffset() is None:
        raise ValueError(f"{ended_at.isoformat()} has no time zone; pass an aware datetime")
    if sla_minutes < 0:
        raise ValueError(f"sla_minutes must not be negative, got {sla_minutes}")
    sla = timedelta(minutes=sla_minutes)
    if schedule is None:
        return ended_at + sla
    opening = next_opening(schedule, ended_at)
    return (opening if opening is not None else ended_at) + sla


def sla_for(config: Config, line: str | None) -> tuple[Schedule | None, int]:
    """The schedule and the SLA in minutes that apply to a call on ``line`` (E.164 DID).

    An unknown line (or None) has no schedule and the default SLA.
    """
    default = config.missed_calls.sla_minutes
    rules = config.lines.get(line) if line is not None else None
    if rules is None:
        return None, default
    schedule = config.schedules.get(rules.schedule) if rules.schedule else None
    return schedule, rules.sla_minutes if rules.sla_minutes is not None else default


def missed_call_for(
    call: CallSummary | InboundCall,
    outcome: CallOutcome,
    responsible: str | None,
    schedule: Schedule | None,
    sla_minutes: int,
    *,
    recording: str | None = None,
    ended_at: datetime | None = None,
    line: str | None = None,
    source: str | None = None,
) -> MissedCall:
    """The ``MissedCall`` (payload of the ``missed_call`` outbox message) of a call.

    ``ended_at`` defaults to the summary's ``ended_at``; ``line`` and ``source`` to the
    summary's (an ``InboundCall`` has neither, pass them). ``recording`` is the voicemail's
    recording id. Raises ValueError for an outcome that is not missed or an unknown end.
    """
    if not is_missed(outcome):
        raise ValueError(f"a call with outcome {outcome.value!r} is not a missed call")
    if isinstance(call, CallSummary):
        ended_at = ended_at or call.ended_at
        line = line if line is not None else call.line
        source = source if source is not None else call.source
    if ended_at is None:
        raise ValueError(f"call {call.call_id} has no end time yet")
    return MissedCall(
        call_id=call.call_id,
        phone=call.caller,
        outcome=outcome,
        at=ended_at,
        due_at=due_at(ended_at, schedule, sla_minutes),
        responsible=responsible,
        line=line,
        source=source,
        recording=recording,
    )
