"""OutboxWorker on a real outbox (SQLite and PostgreSQL): retries, rejections, dead workers."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta

import pytest

from pbxbrain.adapters.crm_builtin import BuiltinCrm
from pbxbrain.adapters.crm_store import SqlOutbox
from pbxbrain.adapters.db import SqlCallStore, create_engine
from pbxbrain.adapters.outbox import (
    OutboxWorker,
    call_finished_message,
    called_back_message,
    missed_call_message,
)
from pbxbrain.domain.model import (
    CallOutcome,
    CallSummary,
    Contact,
    Direction,
    InboundCall,
    MissedCall,
    OutboxMessage,
    PendingDelivery,
    TaskStatus,
)
from pbxbrain.ports import Crm, CrmRejected, CrmUnavailable

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
PHONE = "+79161234567"
DEADLINE_S = 10.0


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class FakeCrm:
    """A CRM that fails each key ``failures`` times, refuses the keys in ``reject`` once,
    dedupes on the key (an effect per key at most once), and can stall a delivery.

    ``seen[key]`` lists the clock's time of every attempt.
    """

    def __init__(self, clock: Clock, *, failures: int = 0,
                 reject: frozenset[str] = frozenset()) -> None:
        self.clock = clock
        self.failures = failures
        self.reject = set(reject)
        self.seen: dict[str, list[datetime]] = {}
        self.effects: Counter[str] = Counter()
        self.stall_before: asyncio.Event | None = None  # wait on it before applying
        self.stall_after: asyncio.Event | None = None  # wait on it after applying
        self.reached = asyncio.Event()  # a stalled delivery got to its stall
        self.applied = asyncio.Event()  # set on every effect

    async def _deliver(self, key: str) -> None:
        attempts = self.seen.setdefault(key, [])
        attempts.append(self.clock())
        if key in self.reject:
            self.reject.discard(key)
            raise CrmRejected(f"CRM said 400: {key} is not acceptable")
        if len(attempts) <= self.failures:
            raise CrmUnavailable(f"CRM said 503 (attempt {len(attempts)})")
        if self.stall_before is not None:
            self.reached.set()
            await self.stall_before.wait()
        if key not in self.effects:  # the CRM dedupes on the idempotency key
            self.effects[key] += 1
        self.applied.set()
        if self.stall_after is not None:
            self.reached.set()
            await self.stall_after.wait()

    async def find_contact(self, phone: str) -> Contact | None:
        return None

    async def missed_call(self, missed: MissedCall, key: str) -> None:
        await self._deliver(key)

    async def called_back(self, phone: str, call_id: str, by: str | None, at: datetime,
                          key: str) -> None:
        await self._deliver(key)

    async def log_call(self, call: CallSummary, recording_url: str | None, key: str) -> None:
        await self._deliver(key)

    async def screen_pop(self, event: Mapping[str, object]) -> None:
        return None


def missed(call_id: str, at: datetime = T0) -> MissedCall:
    return MissedCall(call_id=call_id, phone=PHONE, outcome=CallOutcome.MISSED, at=at,
                      due_at=at + timedelta(minutes=15), responsible="ivanov")


async def close_with(calls: SqlCallStore, call_id: str, at: datetime,
                     *messages: OutboxMessage, outcome: CallOutcome = CallOutcome.MISSED) -> None:
    await calls.open_call(InboundCall(call_id, f"ch-{call_id}", PHONE, PHONE, "+74951234567",
                                      at))
    await calls.close_call(call_id, outcome, at, outbox=messages)


async def queue_missed(calls: SqlCallStore, *call_ids: str, at: datetime = T0) -> None:
    for call_id in call_ids:
        await close_with(calls, call_id, at, missed_call_message(missed(call_id, at)))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def calls(store_url: str) -> AsyncIterator[SqlCallStore]:
    store = SqlCallStore(create_engine(store_url))
    yield store
    await store.close()


@pytest.fixture
async def outbox(store_url: str, clock: Clock) -> AsyncIterator[SqlOutbox]:
    engine = create_engine(store_url)
    yield SqlOutbox(engine, clock=clock)
    await engine.dispose()


def worker(outbox: SqlOutbox, crm: Crm, clock: Clock, node: str = "node-a",
           **options: object) -> OutboxWorker:
    settings: dict[str, object] = {"rand": lambda: 0.5, "lease_s": 120.0,
                                   "deliver_timeout_s": 5.0}
    settings.update(options)
    return OutboxWorker(outbox, crm, node, clock, **settings)  # type: ignore[arg-type]


async def within(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), DEADLINE_S)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {DEADLINE_S} s")


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("attempts", "rand", "delay"),
    [(0, 0.5, 5.0), (1, 0.5, 10.0), (2, 0.5, 20.0), (5, 0.5, 160.0), (6, 0.5, 320.0),
     (7, 0.5, 600.0), (50, 0.5, 600.0), (0, 0.0, 4.0), (0, 1.0, 6.0), (6, 1.0, 384.0),
     (7, 0.0, 512.0)],
)
def test_given_failed_attempts_then_delay_doubles_with_jitter_up_to_ten_minutes(
    attempts: int, rand: float, delay: float,
) -> None:
    w = OutboxWorker(SqlOutbox(create_engine("sqlite+aiosqlite:///:memory:")),
                     FakeCrm(Clock()), "n", rand=lambda: rand)

    assert w.retry_delay(attempts) == pytest.approx(delay)


def test_given_lease_shorter_than_a_delivery_then_refused() -> None:
    with pytest.raises(ValueError, match="lease_s"):
        OutboxWorker(SqlOutbox(create_engine("sqlite+aiosqlite:///:memory:")),
                     FakeCrm(Clock()), "n", lease_s=10, deliver_timeout_s=30)


# --------------------------------------------------------------------------- delivery


async def test_given_crm_failing_three_times_then_each_message_once_on_the_backoff_schedule(
    outbox: SqlOutbox, calls: SqlCallStore, clock: Clock,
) -> None:
    await queue_missed(calls, "c1", "c2", "c3")
    crm = FakeCrm(clock, failures=3)
    w = worker(outbox, crm, clock)

    for step in [0.0, 4.9, 0.1, 9.9, 0.1, 19.9, 0.1, 100.0]:
        clock.advance(seconds=step)
        await w.run_once()

    expected = [T0, T0 + timedelta(seconds=5), T0 + timedelta(seconds=15),
                T0 + timedelta(seconds=35)]
    assert crm.seen == {f"missed:c{i}": expected for i in (1, 2, 3)}
    assert crm.effects == {"missed:c1": 1, "missed:c2": 1, "missed:c3": 1}
    assert w.delivered_count == 3
    assert await outbox.failing() == (0, "")
    assert await outbox.next_due_at() is None


async def test_given_failures_then_status_and_one_log_line_per_failure_say_so(
    outbox: SqlOutbox, calls: SqlCallStore, clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    await queue_missed(calls, "c1")
    crm = FakeCrm(clock, failures=2)
    w = worker(outbox, crm, clock)

    with caplog.at_level(logging.WARNING, logger="pbxbrain.adapters.outbox"):
        await w.run_once()
        await w.refresh_status()
        status = w.status
        clock.advance(seconds=5)
        await w.run_once()

    assert status == "1 deliveries failing: CRM said 503 (attempt 1)"
    assert [r.getMessage() for r in caplog.records] == [
        "outbox: missed_call of call c1 failed (attempt 1): CRM said 503 (attempt 1); "
        "next attempt in 5 s",
        "outbox: missed_call of call c1 failed (attempt 2): CRM said 503 (attempt 2); "
        "next attempt in 10 s",
    ]
    clock.advance(seconds=10)
    await w.run_once()
    await w.refresh_status()
    assert w.status == "ok"


async def test_given_rejection_then_failed_at_once_visible_and_retryable_by_hand(
    outbox: SqlOutbox, calls: SqlCallStore, clock: Clock,
) -> None:
    await queue_missed(calls, "c1", "c2")
    crm = FakeCrm(clock, reject=frozenset({"missed:c1"}))
    w = worker(outbox, crm, clock)

    await w.run_once()
    await w.refresh_status()

    [failure] = await outbox.failed_deliveries()
    assert (failure.key, failure.attempts, failure.failed_at) == ("missed:c1", 1, T0)
    assert failure.last_error == "CRM said 400: missed:c1 is not acceptable"
    assert w.status == "1 deliveries failing: CRM said 400: missed:c1 is not acceptable"
    clock.advance(days=30)
    assert await w.run_once() == 0  # never retried on its own
    assert crm.effects == {"missed:c2": 1}

    assert await outbox.retry_now(failure.id)
    await w.run_once()
    await w.refresh_status()

    assert crm.effects == {"missed:c1": 1, "missed:c2": 1}
    assert await outbox.failed_deliveries() == []
    assert w.status == "ok"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (OutboxMessage("odd:1", "fax", {"a": 1}), "unknown outbox kind 'fax'"),
        (OutboxMessage("missed:bad", "missed_call", {"call_id": "x", "phone": PHONE}),
         "unreadable missed_call payload: outcome: Field required; at: Field required; "
         "due_at: Field required"),
        (OutboxMessage("called_back:bad", "called_back",
                       {"phone": PHONE, "call_id": "x", "at": "2026-12-02T09:00:00"}),
         "unreadable called_back payload: at: Input should have timezone info"),
    ],
)
async def test_given_unreadable_message_then_rejected_at_once(
    outbox: SqlOutbox, calls: SqlCallStore, clock: Clock, message: OutboxMessage, error: str,
) -> None:
    await close_with(calls, "x", T0, message)
    w = worker(outbox, FakeCrm(clock), clock)

    await w.run_once()

    [failure] = await outbox.failed_deliveries()
    assert failure.failed_at == T0
    assert failure.last_error == error


async def test_given_each_kind_then_each_reaches_its_crm_method(
    outbox: SqlOutbox, calls: SqlCallStore, clock: Clock,
) -> None:
    summary = CallSummary(call_id="c2", direction=Direction.INBOUND, channel_id="ch-c2",
                          caller=PHONE, caller_raw=PHONE, dialed="+74951234567",
                          started_at=T0, answered_at=T0, ended_at=T0 + timedelta(minutes=1),
                          outcome=CallOutcome.ANSWERED, answered_by="petrov")
    await queue_missed(calls, "c1")
    await close_with(calls, "c2", T0, called_back_message(PHONE, "c2", "petrov", T0),
                     call_finished_message(summary, "https://pbx/rec/1"),
                     outcome=CallOutcome.ANSWERED)
    changed: list[str] = []
    crm = FakeCrm(clock)
    w = worker(outbox, crm, clock, on_contact_changed=changed.append)

    await w.run_once()

    assert set(crm.effects) == {"missed:c1", "called_back:c2", "finished:c2"}
    assert changed == [PHONE, PHONE]  # missed_call and called_back, not the call log


async def test_given_crm_that_hangs_then_the_delivery_times_out_and_is_retried(
    outbox: SqlOutbox, calls: SqlCallStore, clock: Clock,
) -> None:
    await queue_missed(calls, "c1")
    crm = FakeCrm(clock)
    crm.stall_before = asyncio.Event()  # never set
    w = worker(outbox, crm, clock, deliver_timeout_s=0.2)

    await w.run_once()

    [failure] = await outbox.failed_deliveries()
    assert failure.last_error == "the CRM did not finish within 0.2 s"
    assert failure.next_attempt_at == T0 + timedelta(seconds=5)


# --------------------------------------------------------------------------- dead workers


@pytest.mark.parametrize("applied", [False, True], ids=["before-crm", "after-crm"])
async def test_given_worker_killed_mid_delivery_then_another_delivers_after_the_lease_once(
    outbox: SqlOutbox, calls: SqlCallStore, clock: Clock, applied: bool,
) -> None:
    await queue_missed(calls, "c1", "c2")
    crm = FakeCrm(clock)
    stall = asyncio.Event()
    if applied:
        crm.stall_after = stall  # the CRM got it; the worker dies before marking it
    else:
        crm.stall_before = stall
    first = worker(outbox, crm, clock, node="node-a", lease_s=60.0)
    second = worker(outbox, crm, clock, node="node-b", lease_s=60.0)

    killed = asyncio.create_task(first.run_once())
    await within(crm.reached, "the first delivery")
    killed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await killed
    crm.stall_before = crm.stall_after = None

    clock.advance(seconds=59)
    assert await second.run_once() == 0  # both rows are still leased to node-a
    clock.advance(seconds=1)
    assert await second.run_once() == 2

    assert crm.effects == {"missed:c1": 1, "missed:c2": 1}
    assert len(crm.seen["missed:c1"]) == 2
    assert await outbox.next_due_at() is None


async def test_given_builtin_crm_and_a_killed_worker_then_the_task_counts_the_miss_once(
    store_url: str, outbox: SqlOutbox, calls: SqlCallStore, clock: Clock,
) -> None:
    engine = create_engine(store_url)
    crm = BuiltinCrm(engine, clock=clock)
    await queue_missed(calls, "c1")
    await close_with(calls, "c2", T0 + timedelta(minutes=30),
                     called_back_message(PHONE, "c2", "petrov", T0 + timedelta(minutes=30)),
                     outcome=CallOutcome.ANSWERED)
    [row, _] = await outbox.claim_deliveries("node-a", T0 + timedelta(hours=1))
    # node-a applied the miss, then died before marking it delivered.
    await crm.missed_call(missed("c1"), row.key)
    clock.advance(hours=1, minutes=2)
    w = worker(outbox, crm, clock, node="node-b")

    assert await w.run_once() == 2

    try:
        [task] = await crm.list_tasks()
    finally:
        await engine.dispose()
    assert (task.misses, task.status, task.closed_by) == (1, TaskStatus.DONE, "petrov")
    assert task.callback_delay_s == 30 * 60


# --------------------------------------------------------------------------- the loop


class CountingOutbox(SqlOutbox):
    """Counts claims, to see that an idle worker does not poll in a loop."""

    claims = 0

    async def claim_deliveries(self, node: str, now: datetime, limit: int = 20,
                               lease_s: float = 120.0) -> list[PendingDelivery]:
        self.claims += 1
        return await super().claim_deliveries(node, now, limit, lease_s)


async def test_given_running_worker_then_a_poke_delivers_and_idle_means_waiting(
    store_url: str, calls: SqlCallStore,
) -> None:
    engine = create_engine(store_url)
    outbox = CountingOutbox(engine)
    crm = FakeCrm(Clock())
    w = OutboxWorker(outbox, crm, "node-a", tick_s=30.0)
    running = asyncio.create_task(w.run())
    try:
        now = datetime.now(UTC)
        await queue_missed(calls, "c1", at=now)
        w.poke()
        await within(crm.applied, "delivery after a poke")
        crm.applied.clear()
        idle_claims = outbox.claims
        await queue_missed(calls, "c2", at=now)
        w.poke()
        await within(crm.applied, "delivery after a second poke")
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await engine.dispose()

    assert crm.effects == {"missed:c1": 1, "missed:c2": 1}
    # One claim at start, one per poke (at most one more if a poke raced a claim).
    assert idle_claims <= 3
    assert outbox.claims <= idle_claims + 2


async def test_given_failed_row_then_the_loop_retries_it_when_due_without_a_poke(
    store_url: str, calls: SqlCallStore,
) -> None:
    engine = create_engine(store_url)
    outbox = SqlOutbox(engine)
    crm = FakeCrm(Clock(), failures=1)
    w = OutboxWorker(outbox, crm, "node-a", first_delay_s=0.1, rand=lambda: 0.5,
                     tick_s=30.0)
    await queue_missed(calls, "c1", at=datetime.now(UTC))
    running = asyncio.create_task(w.run())
    try:
        await within(crm.applied, "the retry")
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await engine.dispose()

    assert crm.effects == {"missed:c1": 1}
    assert len(crm.seen["missed:c1"]) == 2


async def test_given_node_restarted_then_its_old_leases_are_taken_back_at_once(
    store_url: str, calls: SqlCallStore,
) -> None:
    engine = create_engine(store_url)
    outbox = SqlOutbox(engine)
    now = datetime.now(UTC)
    await queue_missed(calls, "c1", at=now)
    await outbox.claim_deliveries("node-a", now, lease_s=3600)  # the crashed run's lease
    crm = FakeCrm(Clock())
    w = OutboxWorker(outbox, crm, "node-a", tick_s=30.0)
    running = asyncio.create_task(w.run())
    try:
        await within(crm.applied, "delivery of the row the crashed run had claimed")
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await engine.dispose()

    assert crm.effects == {"missed:c1": 1}
