"""The journal writer: ordered, never blocks the call path, survives a dead database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from pbxbrain.domain.model import (
    CallOutcome,
    EventKind,
    InboundCall,
    JournalEntry,
    OutboxMessage,
)
from pbxbrain.ports import StoreUnavailable
from pbxbrain.service import Journal

AT = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
CALL = InboundCall("c1", "chan1", "+79161112233", "89161112233", "74951234567", AT)


class FlakyStore:
    """A CallStore fake that is down for its first ``failures`` writes."""

    def __init__(self, failures: int = 0, signal_at: int = 1) -> None:
        self.failures = failures
        self.writes: list[str] = []
        self.attempts = 0
        self.batches = 0
        self.signal_at = signal_at
        self.reached = asyncio.Event()  # set once ``signal_at`` attempts were made

    def _maybe_fail(self) -> None:
        self.attempts += 1
        if self.attempts >= self.signal_at:
            self.reached.set()
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("database at db:5432 refused the connection")

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        self.batches += 1
        yield

    async def open_call(self, call: InboundCall, *, line: str | None = None,
                        source: str | None = None) -> None:
        self._maybe_fail()
        self.writes.append(f"open {call.call_id}")

    async def append(self, entry: JournalEntry) -> None:
        self._maybe_fail()
        self.writes.append(f"event {entry.kind.value}")

    async def append_many(self, entries: Sequence[JournalEntry]) -> None:
        self._maybe_fail()
        self.writes.extend(f"event {e.kind.value}" for e in entries)

    async def mark_answered(self, call_id: str, at: datetime, by: str | None) -> None:
        self._maybe_fail()
        self.writes.append(f"answered {by}")

    async def close_call(self, call_id: str, outcome: CallOutcome, ended_at: datetime, *,
                         outbox: Sequence[OutboxMessage] = (),
                         data: dict[str, object] | None = None) -> None:
        self._maybe_fail()
        self.writes.append(f"close {outcome.value} outbox={len(outbox)}")


async def test_given_writes_then_they_reach_the_store_in_order() -> None:
    store = FlakyStore()
    journal = Journal(store)  # type: ignore[arg-type]
    worker = asyncio.create_task(journal.run())
    journal.entered(CALL)
    journal.event("c1", AT, EventKind.ANSWERED, by="pbxbrain")
    journal.answered("c1", AT, "ivanov")
    journal.closed("c1", CallOutcome.ANSWERED, AT,
                   outbox=[OutboxMessage("k", "task", {})])
    assert await journal.drain(2.0)
    worker.cancel()
    assert store.writes == ["open c1", "event answered", "answered ivanov",
                            "close answered outbox=1"]
    assert store.batches == 1  # queued together, committed together
    assert journal.status == "ok"


async def test_given_a_dead_database_then_writes_wait_are_reported_and_land_later() -> None:
    store = FlakyStore(failures=3)
    journal = Journal(store, retry_first_s=0.001, retry_max_s=0.002)  # type: ignore[arg-type]
    journal.entered(CALL)
    journal.closed("c1", CallOutcome.MISSED, AT)
    # The call path did not wait: both writes are queued before the worker even runs.
    assert journal.backlog == 2
    worker = asyncio.create_task(journal.run())
    await store.reached.wait()
    assert await journal.drain(2.0)
    worker.cancel()
    assert store.writes == ["open c1", "close missed outbox=0"]
    assert store.attempts == 5  # three refused, then two stored
    assert journal.status == "ok"


async def test_given_the_database_stays_down_then_status_says_what_waits() -> None:
    store = FlakyStore(failures=10_000, signal_at=3)
    journal = Journal(store, retry_first_s=0.001, retry_max_s=0.001)  # type: ignore[arg-type]
    journal.entered(CALL)
    worker = asyncio.create_task(journal.run())
    await store.reached.wait()
    assert journal.status == ("1 journal writes waiting: "
                              "database at db:5432 refused the connection")
    assert not await journal.drain(0.01)
    worker.cancel()
