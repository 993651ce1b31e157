"""The benchmark's arithmetic: narrowing down the highest rate with no failed call."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.run import (
    Column,
    Report,
    _upgraded,
    callers_file,
    invite_times,
    post_dial_delays,
    refine_limit,
    summarize,
)


def report_with(limits: dict[str, float], ladder: tuple[float, ...]) -> Report:
    """A report of the ladder, each column failing above its limit."""
    report = Report(machine={}, started="now", call_seconds=3, seconds_per_rate=10)
    for rate in ladder:
        for column, limit in limits.items():
            run(report, column, rate, limit)
    return report


def run(report: Report, column: str, rate: float, limit: float) -> Column:
    ok = rate <= limit
    col = Column(column, rate, attempted=10, completed=10 if ok else 7, failed=0 if ok else 3)
    report.columns.append(col)
    return col


@pytest.mark.parametrize(("limit", "steps", "found"), [
    (57, 4, 55.0),   # 40 passed, 80 failed: 60 fails, 50 passes, 55 passes, 58 fails
    (110, 4, 110.0),  # nothing failed up to 80: 160 fails, 120 fails, 100, 110 pass
    (57, 0, 40.0),   # no refinement: the ladder's answer
    (3, 3, 3.0),     # the first rung failed: 3 passes (2 → 4 → 3)
])
def test_given_a_column_limit_then_refining_narrows_the_zero_failure_rate(
    limit: float, steps: int, found: float,
) -> None:
    report = report_with({"pbxbrain": limit}, (2, 5, 10, 20, 40, 80))

    refine_limit("pbxbrain", report, lambda c, r: run(report, c, r, limit), steps, 160)

    assert summarize(report)["max_zero_failure_cps_pbxbrain"] == found


def test_given_a_lucky_pass_above_a_failure_then_it_does_not_count() -> None:
    report = Report(machine={}, started="now", call_seconds=3, seconds_per_rate=10)
    for rate, limit in ((10, 100), (20, 0), (40, 100)):
        run(report, "baseline", rate, limit)
    assert summarize(report)["max_zero_failure_cps_baseline"] == 10


def test_post_dial_delay_pairs_each_callers_invite_with_the_first_phone_invite(
        tmp_path: Path) -> None:
    caller_log = tmp_path / "bench_caller_1_logs.log"
    caller_log.write_text("1795585528.000000 312560.000000 +79160000001\n"
                          "1795585528.000000 412000.000000 +79160000002\n"
                          "1795585528.000000 512000.000000 +79160000003\n")
    phone_log = tmp_path / "bench_phone_2_logs.log"
    phone_log.write_text(
        '1795585528.000000 322560.000000 From: "Ivan" <sip:+79160000001@127.0.0.1>;tag=a\n'
        'garbage line\n'
        '1795585528.000000 432000.000000 From: <sip:+79160000002@127.0.0.1>;tag=b\n'
        '1795585529.000000 32000.000000 From: <sip:+79160000002@127.0.0.1>;tag=c\n')
    sent = invite_times([caller_log])
    assert sent == {"+79160000001": pytest.approx(1795585528.31256),
                    "+79160000002": pytest.approx(1795585528.412),
                    "+79160000003": pytest.approx(1795585528.512)}
    delays = post_dial_delays(sent, invite_times([phone_log]))
    # the third caller rang nobody; the second's retry to another phone does not count
    assert delays == [pytest.approx(10.0, abs=1e-3), pytest.approx(20.0, abs=1e-3)]


def test_callers_are_new_numbers_in_sipp_injection_format(tmp_path: Path) -> None:
    first = callers_file(tmp_path / "a.csv", 2)
    second = callers_file(tmp_path / "b.csv", 1)
    assert len(set(first + second)) == 3
    assert all(n.startswith("+7916") and len(n) == 12 for n in first + second)
    assert (tmp_path / "a.csv").read_text() == f"SEQUENTIAL\n{first[0]};\n{first[1]};\n"


def test_a_saved_run_from_before_the_answer_delay_reads_its_pdd_as_answer_delay() -> None:
    old = {"column": "pbxbrain", "rate": 20, "pdd_ms_p50": 15.9, "pdd_ms_p99": 43.1}
    col = Column(**_upgraded(old))
    assert (col.answer_ms_p50, col.answer_ms_p99) == (15.9, 43.1)
    assert col.pdd_ms_p99 is None


def test_a_caller_refused_because_nobody_was_free_is_not_a_clean_rate() -> None:
    report = Report(machine={}, started="now", call_seconds=3, seconds_per_rate=10)
    report.columns += [Column("pbxbrain", 20, attempted=10, completed=10, answered=10),
                       Column("pbxbrain", 40, attempted=10, completed=10, answered=7)]
    assert summarize(report)["max_zero_failure_cps_pbxbrain"] == 20
