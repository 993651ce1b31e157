"""The benchmark's arithmetic: narrowing down the highest rate with no failed call."""

from __future__ import annotations

import pytest
from bench.run import Column, Report, refine_limit, summarize


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
