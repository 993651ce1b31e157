"""Working hours: open or closed at an instant, and the next opening, across DST changes.

Instants are written with their UTC offset (``+03:00`` is Moscow, which has no DST;
Berlin is ``+01:00`` in winter and ``+02:00`` in summer) and compared in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pbxbrain.config import Schedule, parse_config
from pbxbrain.domain.schedule import is_open, next_opening

CONFIG = """\
asterisk:
  ari: {user: pbxbrain, password: secret}
  ami: {user: pbxbrain, secret: secret}
  trunk: pstn
schedules:
  office:
    timezone: Europe/Moscow
    weekly: {mon-fri: "09:00-18:00", sat: "10:00-14:00", sun: closed}
    holidays: [2027-01-01, 2027-01-07]
  split: {timezone: Europe/Moscow, weekly: {mon-fri: "09:00-13:00, 14:00-18:00"}}
  night: {timezone: Europe/Moscow, weekly: {mon: "22:00-24:00", tue: "00:00-06:00"}}
  late: {timezone: Europe/Moscow, weekly: {mon: "22:00-24:00"}}
  berlin: {timezone: Europe/Berlin, weekly: {sun: "08:00-12:00"}}
  berlin_gap: {timezone: Europe/Berlin, weekly: {sun: "02:30-04:00"}}
  berlin_fold: {timezone: Europe/Berlin, weekly: {sun: "02:30-02:45"}}
  never: {timezone: UTC, weekly: {mon-sun: closed}}
  mondays: {timezone: UTC, weekly: {mon: "09:00-10:00"},
            holidays: [2027-01-04, 2027-01-11, 2027-01-18, 2027-01-25, 2027-02-01]}
"""

SCHEDULES = parse_config(CONFIG, env={}).schedules


def at(text: str) -> datetime:
    """An instant from ISO text with an offset, in UTC."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None, "write test instants with their offset"
    return moment.astimezone(UTC)


def schedule(name: str) -> Schedule:
    return SCHEDULES[name]


@pytest.mark.parametrize(
    ("name", "when", "expected"),
    [
        # opening and closing edges (Moscow, UTC+3 all year)
        ("office", "2026-11-23T08:59:59+03:00", False),
        ("office", "2026-11-23T09:00:00+03:00", True),
        ("office", "2026-11-23T17:59:59+03:00", True),
        ("office", "2026-11-23T18:00:00+03:00", False),
        ("office", "2026-11-28T10:00:00+03:00", True),  # saturday hours
        ("office", "2026-11-28T14:00:00+03:00", False),
        ("office", "2026-11-29T12:00:00+03:00", False),  # sunday closed
        # the zone decides the day: 23:30 UTC on Monday is Tuesday 02:30 in Moscow
        ("office", "2026-11-23T23:30:00+00:00", False),
        ("office", "2026-11-23T06:00:00+00:00", True),  # 09:00 in Moscow
        # holidays are closed all day, the next working day is not
        ("office", "2027-01-01T12:00:00+03:00", False),
        ("office", "2027-01-07T12:00:00+03:00", False),
        ("office", "2027-01-04T12:00:00+03:00", True),
        # the lunch break
        ("split", "2026-11-23T12:59:59+03:00", True),
        ("split", "2026-11-23T13:00:00+03:00", False),
        ("split", "2026-11-23T14:00:00+03:00", True),
        # across midnight: 24:00 ends monday, tuesday goes on from 00:00
        ("night", "2026-11-23T21:59:59+03:00", False),
        ("night", "2026-11-23T22:00:00+03:00", True),
        ("night", "2026-11-23T23:59:59+03:00", True),
        ("night", "2026-11-24T00:00:00+03:00", True),
        ("night", "2026-11-24T05:59:59+03:00", True),
        ("night", "2026-11-24T06:00:00+03:00", False),
        ("night", "2026-11-23T00:00:00+03:00", False),  # monday 00:00 is not sunday night
        ("late", "2026-11-23T23:59:59.999999+03:00", True),
        ("late", "2026-11-24T00:00:00+03:00", False),
        # Berlin, a normal winter sunday: 08:00 CET is 07:00 UTC
        ("berlin", "2027-03-21T06:59:59+00:00", False),
        ("berlin", "2027-03-21T07:00:00+00:00", True),
        # 2027-03-28, clocks go forward: 08:00 CEST is 06:00 UTC
        ("berlin", "2027-03-28T05:59:59+00:00", False),
        ("berlin", "2027-03-28T06:00:00+00:00", True),
        ("berlin", "2027-03-28T09:59:59+00:00", True),
        ("berlin", "2027-03-28T10:00:00+00:00", False),
        # 2027-10-31, clocks go back: 08:00 CET is 07:00 UTC again
        ("berlin", "2027-10-31T06:59:59+00:00", False),
        ("berlin", "2027-10-31T07:00:00+00:00", True),
        ("berlin", "2027-10-31T10:59:59+00:00", True),
        ("berlin", "2027-10-31T11:00:00+00:00", False),
        # 02:00-03:00 does not exist on 2027-03-28: 02:30-04:00 is open 03:00-04:00 CEST
        ("berlin_gap", "2027-03-28T00:59:59+00:00", False),  # 01:59:59 CET
        ("berlin_gap", "2027-03-28T01:00:00+00:00", True),  # 03:00 CEST
        ("berlin_gap", "2027-03-28T01:59:59+00:00", True),
        ("berlin_gap", "2027-03-28T02:00:00+00:00", False),  # 04:00 CEST
        # 02:00-03:00 happens twice on 2027-10-31: 02:30-02:45 is open twice
        ("berlin_fold", "2027-10-31T00:29:59+00:00", False),
        ("berlin_fold", "2027-10-31T00:30:00+00:00", True),  # 02:30 CEST
        ("berlin_fold", "2027-10-31T00:50:00+00:00", False),
        ("berlin_fold", "2027-10-31T01:30:00+00:00", True),  # 02:30 CET
        ("berlin_fold", "2027-10-31T01:45:00+00:00", False),
        ("never", "2026-11-23T12:00:00+00:00", False),
    ],
)
def test_given_a_schedule_and_an_instant_then_open_or_closed(
    name: str, when: str, expected: bool
) -> None:
    assert is_open(schedule(name), at(when)) is expected


@pytest.mark.parametrize(
    ("name", "when", "expected"),
    [
        # open now: now
        ("office", "2026-11-23T10:15:00+03:00", "2026-11-23T10:15:00+03:00"),
        # before opening the same day
        ("office", "2026-11-23T08:59:59+03:00", "2026-11-23T09:00:00+03:00"),
        # friday evening: saturday morning
        ("office", "2026-11-27T18:00:00+03:00", "2026-11-28T10:00:00+03:00"),
        # saturday afternoon: monday morning (sunday closed)
        ("office", "2026-11-28T14:00:00+03:00", "2026-11-30T09:00:00+03:00"),
        # new year's eve: the holiday is skipped, saturday opens
        ("office", "2026-12-31T18:30:00+03:00", "2027-01-02T10:00:00+03:00"),
        # after the lunch break starts
        ("split", "2026-11-23T13:00:00+03:00", "2026-11-23T14:00:00+03:00"),
        ("night", "2026-11-23T21:00:00+03:00", "2026-11-23T22:00:00+03:00"),
        # DST: the same 08:00 is an hour earlier in UTC after clocks go forward
        ("berlin", "2027-03-27T12:00:00+00:00", "2027-03-28T06:00:00+00:00"),
        ("berlin", "2027-03-21T12:00:00+00:00", "2027-03-28T06:00:00+00:00"),
        ("berlin", "2027-10-30T12:00:00+00:00", "2027-10-31T07:00:00+00:00"),
        # a start inside the skipped hour opens when the clocks jump (03:00 CEST)
        ("berlin_gap", "2027-03-28T00:00:00+00:00", "2027-03-28T01:00:00+00:00"),
        ("berlin_gap", "2027-03-21T00:00:00+00:00", "2027-03-21T01:30:00+00:00"),
        # a range in the repeated hour opens a second time
        ("berlin_fold", "2027-10-31T00:00:00+00:00", "2027-10-31T00:30:00+00:00"),
        ("berlin_fold", "2027-10-31T00:50:00+00:00", "2027-10-31T01:30:00+00:00"),
        # five holiday mondays in a row: the sixth monday
        ("mondays", "2027-01-01T00:00:00+00:00", "2027-02-08T09:00:00+00:00"),
    ],
)
def test_given_a_schedule_when_closed_then_next_opening_is_the_first_open_instant(
    name: str, when: str, expected: str
) -> None:
    opening = next_opening(schedule(name), at(when))

    assert opening == at(expected)
    assert opening is not None
    assert opening.utcoffset() == UTC.utcoffset(None)
    assert is_open(schedule(name), opening)


def test_given_a_schedule_never_open_then_no_next_opening() -> None:
    assert next_opening(schedule("never"), at("2026-11-23T12:00:00+00:00")) is None


def test_given_a_naive_instant_then_it_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        is_open(schedule("office"), datetime(2026, 11, 23, 10, 0))
    with pytest.raises(ValueError, match="no time zone"):
        next_opening(schedule("office"), datetime(2026, 11, 23, 10, 0))


def test_given_an_instant_in_another_offset_then_it_is_the_same_instant() -> None:
    moscow = datetime.fromisoformat("2026-11-23T09:00:00+03:00")

    assert is_open(schedule("office"), moscow)
    assert next_opening(schedule("office"), moscow) == at("2026-11-23T06:00:00+00:00")
