"""Targets of a ring step that other calls took before their turn: one journal entry.

When every manager is on a call, a hunt through a 600-member department used to journal
a ``leg_ended`` per manager (213,576 entries in one overloaded bench run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

from pbxbrain.adapters.stasis import NOT_RUNG_KEPT, CallSession, StasisApp
from pbxbrain.domain.model import Direction, EventKind, InboundCall
from pbxbrain.domain.plan import Target

NOW = datetime(2026, 11, 25, tzinfo=UTC)


@dataclass
class Journal:
    entries: list[tuple[EventKind, dict[str, Any]]] = field(default_factory=list)

    def event(self, call_id: str, at: datetime, kind: EventKind, **data: Any) -> None:
        self.entries.append((kind, data))


class AllTaken:
    """Every manager is on another call."""

    def reserve(self, staff_id: str, call_id: str) -> bool:
        return False


def session(journal: Journal) -> CallSession:
    app = cast(StasisApp, SimpleNamespace(phones=AllTaken(), journal=journal,
                                          clock=lambda: NOW))
    call = InboundCall(call_id="c1", channel_id="ch1", caller="+79161234567",
                       caller_raw="+79161234567", dialed="+74951234567", at=NOW,
                       direction=Direction.INBOUND, node="n1")
    return CallSession(app, call)


async def test_targets_taken_by_other_calls_are_journaled_once_per_step() -> None:
    journal = Journal()
    s = session(journal)
    targets = [Target(f"m{i:03d}", f"PJSIP/{i:03d}") for i in range(600)]

    for target in targets:  # a sequential hunt: one target at a time
        assert await s._originate((target,), 10, None) == {}
    s._journal_not_rung()
    s._journal_not_rung()  # nothing left to say

    assert journal.entries == [(EventKind.NOT_RUNG, {
        "staff": [f"m{i:03d}" for i in range(NOT_RUNG_KEPT)],
        "more": 600 - NOT_RUNG_KEPT, "reason": "taken by another call"})]


async def test_a_few_targets_taken_are_all_named() -> None:
    journal = Journal()
    s = session(journal)

    await s._originate((Target("ivanov", "PJSIP/101"), Target("petrov", "PJSIP/102")), 10,
                       None)
    s._journal_not_rung()

    assert journal.entries == [(EventKind.NOT_RUNG, {"staff": ["ivanov", "petrov"],
                                                     "reason": "taken by another call"})]
