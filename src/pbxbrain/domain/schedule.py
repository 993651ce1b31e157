"""Working hours: is a schedule open at an instant, and when does it open next. Pure.

Instants are timezone-aware datetimes (UTC in pbxbrain); a schedule's hours are wall-clock
times in its own zone (``Schedule.timezone``). The rules:

* An instant is open when its local wall-clock time, on its local date, falls in one of
  that date's ranges (``start <= t < end``, an end of 24:00 includes the last second).
* Holidays (local dates) are closed all day, whatever ``weekly`` says.
* DST changes need no special case for ``is_open``: the instant is converted to local time
  and the wall clock decides. So on a spring-forward day the missing hour is never open,
  and on a fall-back day a range in the repeated hour is open twice.
* ``next_opening`` returns ``now`` when open, else the first later instant that is open.
  That instant is either the start of a range (in either fold of a repeated hour) or a
  moment the zone's offset changes (a range start inside a skipped hour opens when the
  clocks jump); all of these candidates are checked with ``is_open`` and the earliest wins.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pbxbrain.config import Schedule

# The zone's offset is probed this often to find DST changes; zones change at most twice a
# year, never twice within a few hours.
_PROBE = timedelta(hours=6)
# How far to look ahead for an opening: an open weekday comes back every 7 days, and each
# holiday still to come can take one of those turns; one more week covers a range lost to
# a DST jump.
_WEEK = 7


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{now.isoformat()} has no time zone; pass an aware datetime (UTC)")
    return now.astimezone(UTC)


def is_open(schedule: Schedule, now: datetime) -> bool:
    """Is ``schedule`` open at ``now`` (an aware datetime, normally UTC)?"""
    return is_open_local(schedule, local_time(schedule, now))


def local_time(schedule: Schedule, now: datetime) -> datetime:
    """``now`` (an aware datetime, normally UTC) on the wall clock of ``schedule``'s zone."""
    return _utc(now).astimezone(schedule.zone())


def is_open_local(schedule: Schedule, local: datetime) -> bool:
    """Is ``schedule`` open at ``local``, an instant given by ``local_time``?"""
    moment = local.time()
    return any(hours.contains(moment) for hours in schedule.hours(local.date()))


def next_opening(schedule: Schedule, now: datetime) -> datetime | None:
    """The first instant at or after ``now`` when ``schedule`` is open, in UTC.

    ``now`` itself when the schedule is open; None when it never opens (no open day in
    ``weekly``, or holidays cover every open day ahead).
    """
    now = _utc(now)
    if is_open(schedule, now):
        return now
    if not any(schedule.weekly.values()):
        return None
    zone = schedule.zone()
    today = now.astimezone(zone).date()
    days = _WEEK * (sum(1 for holiday in schedule.holidays if holiday >= today) + 2)
    # From the day before: where clocks go back at midnight, a later instant can have an
    # earlier local date.
    candidates = [
        instant
        for offset in range(-1, days)
        for instant in _range_starts(schedule, today + timedelta(days=offset), zone)
    ]
    candidates += _offset_changes(zone, now, now + timedelta(days=days + 1))
    opening = [instant for instant in candidates if instant > now and is_open(schedule, instant)]
    return min(opening, default=None)


def _range_starts(schedule: Schedule, day: date, zone: tzinfo) -> list[datetime]:
    """The UTC instants where ``day``'s ranges start, both folds of an ambiguous time."""
    return [
        datetime.combine(day, hours.start, tzinfo=zone).replace(fold=fold).astimezone(UTC)
        for hours in schedule.hours(day)
        for fold in (0, 1)
    ]


def _offset_changes(zone: tzinfo, start: datetime, end: datetime) -> list[datetime]:
    """Instants in ``(start, end]`` where ``zone``'s UTC offset changes (DST), to the second."""

    def offset(second: int) -> timedelta | None:
        return datetime.fromtimestamp(second, UTC).astimezone(zone).utcoffset()

    step = int(_PROBE.total_seconds())
    changes: list[datetime] = []
    low = int(start.timestamp())
    last = int(end.timestamp())
    while low < last:
        high = min(low + step, last)
        before = offset(low)
        if offset(high) != before:
            lo, hi = low, high  # offset(lo) == before != offset(hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(mid) == before:
                    lo = mid
                else:
                    hi = mid
            changes.append(datetime.fromtimestamp(hi, UTC))
        low = high
    return changes
