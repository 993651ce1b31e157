"""Missed-call deadlines: in hours, after hours (next morning), weekends, holidays. Pure.

Instants are written with their UTC offset (``+03:00`` is Moscow) and compared in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pbxbrain.config import parse_config
from pbxbrain.domain.model import CallOutcome, CallSummary, Direction, InboundCall
from pbxbrain.domain.sla import due_at, is_missed, missed_call_for, sla_for

CONFIG = parse_config(
    """\
asterisk:
  ari: {user: pbxbrain, password: secret}
  ami: {user: pbxbrain, secret: secret}
  trunk: pstn
schedules:
  office:
    timezone: Europe/Moscow
    weekly: {mon-fri: "09:00-18:00", sat: "10:00-14:00", sun: closed}
    holidays: [2027-01-01, 2027-01-07]
  never: {timezone: UTC, weekly: {mon-sun: closed}}
staff:
  ivanov: {name: Ivan, phone: PJSIP/101}
lines:
  "+74951234567": {schedule: office, route: [{manager: ivanov}]}
  "+74959876543": {schedule: office, route: [{manager: ivanov}], sla_minutes: 60}
  "+74950000000": {route: [{manager: ivanov}]}
missed_calls: {sla_minutes: 15}
""",
    env={},
)
OFFICE = CONFIG.schedules["office"]
NEVER = CONFIG.schedules["never"]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("ended", "sla", "expected"),
    [
        # 2026-12-02 is a Wednesday.
        pytest.param("2026-12-02T10:00:00+03:00", 15, "2026-12-02T10:15:00+03:00",
                     id="in-hours"),
        pytest.param("2026-12-02T09:00:00+03:00", 15, "2026-12-02T09:15:00+03:00",
                     id="at-opening"),
        pytest.param("2026-12-02T17:55:00+03:00", 15, "2026-12-02T18:10:00+03:00",
                     id="just-before-closing-keeps-wall-clock-sla"),
        pytest.param("2026-12-02T18:00:00+03:00", 15, "2026-12-03T09:15:00+03:00",
                     id="at-closing-next-morning"),
        pytest.param("2026-12-02T23:30:00+03:00", 15, "2026-12-03T09:15:00+03:00",
                     id="late-evening-next-morning"),
        pytest.param("2026-12-03T06:10:00+03:00", 30, "2026-12-03T09:30:00+03:00",
                     id="early-morning-same-morning"),
        pytest.param("2026-12-04T19:00:00+03:00", 15, "2026-12-05T10:15:00+03:00",
                     id="friday-evening-saturday-hours"),
        pytest.param("2026-12-05T15:00:00+03:00", 15, "2026-12-07T09:15:00+03:00",
                     id="saturday-afternoon-monday"),
        pytest.param("2026-12-06T12:00:00+03:00", 15, "2026-12-07T09:15:00+03:00",
                     id="sunday-monday"),
        pytest.param("2026-12-31T20:00:00+03:00", 15, "2027-01-02T10:15:00+03:00",
                     id="new-year-holiday-skipped"),
        pytest.param("2027-01-06T19:00:00+03:00", 15, "2027-01-08T09:15:00+03:00",
                     id="christmas-holiday-skipped"),
    ],
)
def test_given_schedule_then_due_is_sla_after_the_end_or_after_the_next_opening(
    ended: str, sla: int, expected: str
) -> None:
    assert due_at(at(ended), OFFICE, sla) == at(expected)


def test_given_no_schedule_then_due_is_sla_after_the_end() -> None:
    assert due_at(at("2026-12-06T03:00:00+03:00"), None, 15) == at("2026-12-06T03:15:00+03:00")


def test_given_schedule_that_never_opens_then_due_is_sla_after_the_end() -> None:
    assert due_at(at("2026-12-02T10:00:00+00:00"), NEVER, 5) == at("2026-12-02T10:05:00+00:00")


def test_given_naive_end_then_value_error() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        due_at(datetime(2026, 12, 2, 10, 0), OFFICE, 15)


@pytest.mark.parametrize(
    ("outcome", "missed"),
    [
        (CallOutcome.MISSED, True),
        (CallOutcome.ABANDONED, True),
        (CallOutcome.AFTER_HOURS, True),
        (CallOutcome.VOICEMAIL, True),
        (CallOutcome.REJECTED, False),  # blacklisted
        (CallOutcome.ANSWERED, False),
        (CallOutcome.DIALPLAN, False),
        (CallOutcome.FAILED, False),
    ],
)
def test_given_outcome_then_missed_or_not(outcome: CallOutcome, missed: bool) -> None:
    assert is_missed(outcome) is missed


@pytest.mark.parametrize(
    ("line", "schedule", "sla"),
    [
        ("+74951234567", "office", 15),
        ("+74959876543", "office", 60),  # the line's own SLA
        ("+74950000000", None, 15),  # no schedule
        ("+74951111111", None, 15),  # unknown line
        (None, None, 15),
    ],
)
def test_given_line_then_its_schedule_and_sla(
    line: str | None, schedule: str | None, sla: int
) -> None:
    found, minutes = sla_for(CONFIG, line)
    assert found == (CONFIG.schedules[schedule] if schedule else None)
    assert minutes == sla


def test_given_summary_of_after_hours_call_then_missed_call_is_due_next_morning() -> None:
    call = CallSummary(
        call_id="c1", direction=Direction.INBOUND, channel_id="ch1", caller="+79161234567",
        caller_raw="89161234567", dialed="+74951234567",
        started_at=at("2026-12-02T22:59:00+03:00"), ended_at=at("2026-12-02T23:00:00+03:00"),
        outcome=CallOutcome.AFTER_HOURS, line="+74951234567", source="website",
    )

    missed = missed_call_for(call, CallOutcome.AFTER_HOURS, "ivanov", OFFICE, 15,
                             recording="rec-1")

    assert missed.call_id == "c1"
    assert missed.phone == "+79161234567"
    assert missed.at == at("2026-12-02T23:00:00+03:00")
    assert missed.due_at == at("2026-12-03T09:15:00+03:00")
    assert (missed.responsible, missed.line, missed.source, missed.recording) == (
        "ivanov", "+74951234567", "website", "rec-1")


def test_given_inbound_call_and_end_then_missed_call_takes_them() -> None:
    call = InboundCall("c2", "ch2", "+79161234567", "89161234567", "74951234567",
                       at("2026-12-02T10:00:00+03:00"))

    missed = missed_call_for(call, CallOutcome.ABANDONED, None, None, 15,
                             ended_at=at("2026-12-02T10:00:20+03:00"), line="+74951234567")

    assert missed.due_at == at("2026-12-02T10:15:20+03:00")
    assert missed.line == "+74951234567"
    assert missed.responsible is None


@pytest.mark.parametrize("outcome", [CallOutcome.REJECTED, CallOutcome.ANSWERED])
def test_given_outcome_that_is_not_missed_then_no_missed_call(outcome: CallOutcome) -> None:
    call = InboundCall("c3", "ch3", "+79161234567", "89161234567", "74951234567",
                       at("2026-12-02T10:00:00+03:00"))
    with pytest.raises(ValueError, match="not a missed call"):
        missed_call_for(call, outcome, None, None, 15, ended_at=call.at)


def test_given_call_without_end_then_value_error() -> None:
    call = InboundCall("c4", "ch4", "+79161234567", "89161234567", "74951234567",
                       at("2026-12-02T10:00:00+03:00"))
    with pytest.raises(ValueError, match="no end time"):
        missed_call_for(call, CallOutcome.MISSED, None, None, 15)
