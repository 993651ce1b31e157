"""SqlCallStore against real databases: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from pbxbrain.adapters.crm_store import SqlOutbox
from pbxbrain.adapters.db import Base, CallEvent, Outbox, SqlCallStore, create_engine
from pbxbrain.adapters.migrate import (
    MIGRATIONS_ENV,
    alembic_config,
    current_revision,
    head_revision,
    migrate,
    migrations_dir,
)
from pbxbrain.domain.model import (
    CallOutcome,
    Direction,
    EventKind,
    InboundCall,
    JournalEntry,
    OutboxMessage,
    PendingDelivery,
    RecordingInfo,
)
from pbxbrain.ports import CallStore, StoreUnavailable
from tests.support.postgres import PostgresServer, free_tcp_port

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MSK = timezone(timedelta(hours=3))


def inbound(
    call_id: str, at: datetime = T0, caller: str = "+79161234567", dialed: str = "+74951234567"
) -> InboundCall:
    return InboundCall(
        call_id=call_id,
        channel_id=f"chan-{call_id}",
        caller=caller,
        caller_raw=caller.lstrip("+"),
        dialed=dialed,
        at=at,
        caller_name="Client",
        node="node-a",
    )


def missed_task(call_id: str, key: str | None = None) -> OutboxMessage:
    return OutboxMessage(
        key=key or f"missed:{call_id}",
        kind="crm.missed_task",
        payload={"call_id": call_id, "responsible": ["ivanov"], "nested": {"n": 1}},
        call_id=call_id,
    )


async def due_rows(store: SqlCallStore, now: datetime) -> list[PendingDelivery]:
    """The outbox rows due at ``now``, as the delivery worker claims them."""
    return await SqlOutbox(store.engine).claim_deliveries("test", now)


async def count(store: SqlCallStore, model: type[Base]) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(model))).scalar_one())


def test_given_sql_store_then_it_satisfies_the_port() -> None:
    def accepts(_store: CallStore) -> None: ...

    accepts(SqlCallStore(create_engine("sqlite+aiosqlite:///:memory:")))


# --------------------------------------------------------------------------- calls


async def test_given_call_opened_twice_then_one_row_and_one_entered_entry(
    store: SqlCallStore,
) -> None:
    await store.open_call(inbound("c1"), line="+74951234567", source="website")
    await store.open_call(inbound("c1", at=T0 + timedelta(seconds=5), caller="+70000000000"))

    call = await store.get_call("c1")
    assert call is not None
    assert (call.caller, call.started_at, call.line, call.source) == (
        "+79161234567",
        T0,
        "+74951234567",
        "website",
    )
    assert (call.direction, call.node, call.caller_name, call.outcome) == (
        Direction.INBOUND,
        "node-a",
        "Client",
        None,
    )
    journal = await store.journal("c1")
    assert [e.kind for e in journal] == [EventKind.ENTERED]
    assert journal[0].data["channel_id"] == "chan-c1"
    assert await count(store, CallEvent) == 1


async def test_given_entries_then_journal_keeps_insertion_order_and_data(
    store: SqlCallStore,
) -> None:
    await store.open_call(inbound("c1"))
    # Deliberately out of time order: the journal is ordered by insertion.
    entries = [
        JournalEntry("c1", T0 + timedelta(seconds=3), EventKind.RINGING, {"targets": ["101"]}),
        JournalEntry("c1", T0 + timedelta(seconds=1), EventKind.ANSWERED, {"by": "ivanov"}),
        JournalEntry("c1", T0 + timedelta(seconds=1), EventKind.BRIDGED, {}),
        JournalEntry(
            "c1", T0 + timedelta(seconds=9), EventKind.ERROR, {"detail": {"code": 404, "ok": False}}
        ),
    ]
    for entry in entries:
        await store.append(entry)

    journal = await store.journal("c1")
    assert journal[0].kind is EventKind.ENTERED
    assert journal[1:] == entries
    assert all(e.at.tzinfo is not None and e.at.utcoffset() == timedelta(0) for e in journal)


async def test_given_a_batch_then_entries_of_several_calls_land_in_one_commit(
    store: SqlCallStore,
) -> None:
    async with store.batch():
        await store.open_call(inbound("b1"))
        await store.open_call(inbound("b2"))
        await store.append_many([
            JournalEntry("b1", T0, EventKind.RINGING, {"staff": "ivanov"}),
            JournalEntry("b2", T0, EventKind.RINGING, {"staff": "petrov"}),
            JournalEntry("b1", T0, EventKind.ANSWERED, {"by": "ivanov"}),
        ])
    assert [(e.kind, dict(e.data)) for e in await store.journal("b1")] == [
        (EventKind.ENTERED, {"channel_id": "chan-b1", "caller": "+79161234567",
                             "dialed": "+74951234567"}),
        (EventKind.RINGING, {"staff": "ivanov"}),
        (EventKind.ANSWERED, {"by": "ivanov"}),
    ]
    assert [e.kind for e in await store.journal("b2")] == [EventKind.ENTERED,
                                                           EventKind.RINGING]


async def test_given_a_batch_with_an_unknown_call_then_nothing_of_it_is_kept(
    store: SqlCallStore,
) -> None:
    async def batch() -> None:
        async with store.batch():
            await store.open_call(inbound("b3"))
            await store.append_many([JournalEntry("nope", T0, EventKind.RINGING)])

    with pytest.raises(LookupError):
        await batch()
    assert await store.get_call("b3") is None


async def test_given_unknown_call_then_append_and_close_raise_lookup_error(
    store: SqlCallStore,
) -> None:
    with pytest.raises(LookupError):
        await store.append(JournalEntry("nope", T0, EventKind.RINGING))
    with pytest.raises(LookupError):
        await store.close_call("nope", CallOutcome.MISSED, T0, outbox=[missed_task("nope")])
    assert await count(store, Outbox) == 0
    assert await store.get_call("nope") is None


async def test_given_datetimes_in_any_zone_then_they_come_back_aware_utc(
    store: SqlCallStore,
) -> None:
    at_msk = datetime(2026, 3, 2, 12, 0, 0, 123456, tzinfo=MSK)
    await store.open_call(inbound("c1", at=at_msk))
    call = await store.get_call("c1")
    assert call is not None
    assert call.started_at == at_msk
    assert call.started_at.utcoffset() == timedelta(0)
    assert call.started_at.hour == 9
    assert call.started_at.microsecond == 123456


async def test_given_naive_datetime_then_it_is_refused(store: SqlCallStore) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        await store.open_call(inbound("c1", at=datetime(2026, 3, 2, 9, 0)))
    assert await store.get_call("c1") is None


async def test_given_two_answers_then_the_first_wins(store: SqlCallStore) -> None:
    await store.open_call(inbound("c1"))
    await store.mark_answered("c1", T0 + timedelta(seconds=4), "ivanov")
    await store.mark_answered("c1", T0 + timedelta(seconds=5), "petrov")
    call = await store.get_call("c1")
    assert call is not None
    assert (call.answered_at, call.answered_by) == (T0 + timedelta(seconds=4), "ivanov")


# --------------------------------------------------------------------------- closing


async def test_given_close_then_outcome_ended_entry_and_outbox_are_written(
    store: SqlCallStore,
) -> None:
    await store.open_call(inbound("c1"))
    ended = T0 + timedelta(seconds=30)
    await store.close_call(
        "c1",
        CallOutcome.MISSED,
        ended,
        outbox=[missed_task("c1"), OutboxMessage("hook:c1", "webhook", {"a": [1, 2]})],
        data={"reason": "nobody answered"},
    )

    call = await store.get_call("c1")
    assert call is not None
    assert (call.outcome, call.ended_at) == (CallOutcome.MISSED, ended)
    last = (await store.journal("c1"))[-1]
    assert (last.kind, last.at) == (EventKind.ENDED, ended)
    assert last.data == {"reason": "nobody answered", "outcome": "missed"}
    due = await due_rows(store, ended)
    assert [(d.key, d.kind, d.attempts, d.call_id) for d in due] == [
        ("missed:c1", "crm.missed_task", 0, "c1"),
        ("hook:c1", "webhook", 0, "c1"),  # an outbox message without call_id gets the call's
    ]
    assert due[0].payload == {"call_id": "c1", "responsible": ["ivanov"], "nested": {"n": 1}}
    assert await store.open_calls() == []


async def test_given_closed_call_then_closing_again_changes_nothing(store: SqlCallStore) -> None:
    await store.open_call(inbound("c1"))
    await store.close_call(
        "c1", CallOutcome.MISSED, T0 + timedelta(seconds=30), outbox=[missed_task("c1")]
    )
    await store.close_call(
        "c1",
        CallOutcome.ANSWERED,
        T0 + timedelta(seconds=60),
        outbox=[missed_task("c1", key="other-key")],
    )

    call = await store.get_call("c1")
    assert call is not None
    assert (call.outcome, call.ended_at) == (CallOutcome.MISSED, T0 + timedelta(seconds=30))
    assert [e.kind for e in await store.journal("c1")].count(EventKind.ENDED) == 1
    assert await count(store, Outbox) == 1


async def test_given_outbox_key_already_queued_then_close_does_not_raise(
    store: SqlCallStore,
) -> None:
    await store.open_call(inbound("c1"))
    await store.open_call(inbound("c2"))
    shared = OutboxMessage("crm:client:+79161234567", "crm.task", {"n": 1})
    await store.close_call("c1", CallOutcome.MISSED, T0, outbox=[shared, shared])
    await store.close_call("c2", CallOutcome.MISSED, T0, outbox=[shared])

    due = await due_rows(store, T0)
    assert [(d.key, d.call_id) for d in due] == [("crm:client:+79161234567", "c1")]
    call = await store.get_call("c2")
    assert call is not None
    assert call.outcome is CallOutcome.MISSED


async def test_given_outbox_that_cannot_be_written_then_nothing_of_the_close_is_kept(
    store: SqlCallStore,
) -> None:
    await store.open_call(inbound("c1"))
    bad = OutboxMessage("bad", "crm.task", {"not json": object()})
    with pytest.raises(TypeError, match="JSON serializable"):
        await store.close_call("c1", CallOutcome.MISSED, T0, outbox=[missed_task("c1"), bad])

    call = await store.get_call("c1")
    assert call is not None
    assert call.outcome is None
    assert call.ended_at is None
    assert [e.kind for e in await store.journal("c1")] == [EventKind.ENTERED]
    assert await count(store, Outbox) == 0
    # and the call can still be closed properly
    await store.close_call("c1", CallOutcome.MISSED, T0, outbox=[missed_task("c1")])
    assert await count(store, Outbox) == 1


async def test_given_concurrent_opens_and_closes_then_one_row_one_close_one_message(
    store_url: str,
) -> None:
    stores = [SqlCallStore(create_engine(store_url)) for _ in range(3)]
    try:
        await asyncio.gather(*(stores[i % 3].open_call(inbound("c1")) for i in range(9)))
        await asyncio.gather(
            *(
                stores[i % 3].close_call(
                    "c1",
                    CallOutcome.MISSED,
                    T0 + timedelta(seconds=i),
                    outbox=[missed_task("c1", key=f"k{i}")],
                )
                for i in range(9)
            )
        )
        kinds = [e.kind for e in await stores[0].journal("c1")]
        assert kinds == [EventKind.ENTERED, EventKind.ENDED]
        assert await count(stores[0], Outbox) == 1
    finally:
        for s in stores:
            await s.close()


# --------------------------------------------------------------------------- listing


async def test_given_calls_then_list_is_newest_first_and_pages_without_gaps(
    store: SqlCallStore,
) -> None:
    for i in range(7):
        await store.open_call(inbound(f"c{i}", at=T0 + timedelta(minutes=i)))
    # Two calls starting at the same instant: the id breaks the tie.
    await store.open_call(inbound("tie-a", at=T0 + timedelta(minutes=3)))
    await store.open_call(inbound("tie-b", at=T0 + timedelta(minutes=3)))

    everything = [c.call_id for c in await store.list_calls()]
    assert everything == ["c6", "c5", "c4", "tie-b", "tie-a", "c3", "c2", "c1", "c0"]

    paged: list[str] = []
    before: str | None = None
    while page := await store.list_calls(limit=2, before_id=before):
        assert len(page) <= 2
        paged += [c.call_id for c in page]
        before = page[-1].call_id
    assert paged == everything
    assert await store.list_calls(before_id="unknown") == []
    assert await store.list_calls(limit=0) == []


async def test_given_filters_then_list_calls_applies_them(store: SqlCallStore) -> None:
    await store.open_call(inbound("a", at=T0, caller="+79990000001"))
    await store.open_call(inbound("b", at=T0 + timedelta(hours=1), caller="+79990000002"))
    await store.open_call(
        inbound("c", at=T0 + timedelta(hours=2), caller="+79990000001", dialed="+78120000000")
    )
    await store.close_call("b", CallOutcome.MISSED, T0 + timedelta(hours=1, minutes=1))

    async def ids(**kw: Any) -> list[str]:
        return [c.call_id for c in await store.list_calls(**kw)]

    assert await ids(since=T0 + timedelta(hours=1)) == ["c", "b"]
    assert await ids(until=T0 + timedelta(hours=1)) == ["a"]
    assert await ids(since=T0 + timedelta(minutes=1), until=T0 + timedelta(hours=2)) == ["b"]
    assert await ids(number="+79990000001") == ["c", "a"]
    assert await ids(number="+79990000002") == ["b"]
    assert await ids(number="+78120000000") == ["c"]  # and the dialed number
    assert await ids(outcome=CallOutcome.MISSED) == ["b"]
    assert await ids(outcome=CallOutcome.ANSWERED) == []
    assert await ids(number="+79990000001", before_id="c") == ["a"]
    assert [c.call_id for c in await store.open_calls()] == ["a", "c"]


# --------------------------------------------------------------------------- recordings


async def test_given_recordings_then_they_are_kept_finished_and_listed(
    store: SqlCallStore,
) -> None:
    await store.open_call(inbound("c1"))
    first = RecordingInfo("r1", "c1", "pbx-c1-1", "2026/03/02/c1-1.wav", "wav", T0)
    second = RecordingInfo(
        "r2", "c1", "pbx-c1-2", "2026/03/02/c1-2.wav", "wav", T0 + timedelta(seconds=10)
    )
    await store.add_recording(second)
    await store.add_recording(first)
    await store.add_recording(first)  # idempotent
    await store.finish_recording("r1", 12.5, 200_000_000_000)
    await store.finish_recording("unknown", 1.0, 1)

    recs = await store.recordings("c1")
    assert [r.recording_id for r in recs] == ["r1", "r2"]
    assert (recs[0].duration_s, recs[0].size_bytes) == (12.5, 200_000_000_000)
    assert recs[1] == second
    assert await store.recordings("c2") == []
    with pytest.raises(LookupError):
        await store.add_recording(RecordingInfo("r3", "nope", "n", "p", "wav", T0))


# --------------------------------------------------------------------------- outbox


# --------------------------------------------------------------------------- round robin


async def test_given_cursor_then_positions_cycle_per_group(store: SqlCallStore) -> None:
    assert [await store.advance_cursor("sales", 3) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [await store.advance_cursor("spb", 2) for _ in range(3)] == [0, 1, 0]
    # The group shrank: the cursor wraps into the new range.
    assert [await store.advance_cursor("sales", 1) for _ in range(2)] == [0, 0]
    assert await store.advance_cursor("solo", 1) == 0
    with pytest.raises(ValueError, match="size 0"):
        await store.advance_cursor("sales", 0)


async def test_given_many_concurrent_callers_then_each_position_is_handed_out_equally(
    store_url: str,
) -> None:
    stores = [SqlCallStore(create_engine(store_url)) for _ in range(5)]
    try:
        positions = await asyncio.gather(
            *(stores[i % len(stores)].advance_cursor("sales", 5) for i in range(50))
        )
        assert Counter(positions) == dict.fromkeys(range(5), 10)
        assert await stores[0].advance_cursor("sales", 5) == 0  # the round is complete
    finally:
        for s in stores:
            await s.close()


async def test_given_sticky_managers_then_the_latest_assignment_is_kept_per_caller(
    store: SqlCallStore,
) -> None:
    assert await store.manager_of("+79161234567") is None
    await store.remember_manager("+79161234567", "ivanov", "c1", T0)
    await store.remember_manager("+79167654321", "petrov", "c2", T0)
    assert await store.manager_of("+79161234567") == "ivanov"
    # Reassigned (his manager left the department): the new one replaces the old.
    await store.remember_manager("+79161234567", "sidorov", "c3", T0 + timedelta(days=1))
    assert await store.manager_of("+79161234567") == "sidorov"
    assert await store.manager_of("+79167654321") == "petrov"


# --------------------------------------------------------------------------- failures


async def test_given_sqlite_then_connections_use_wal_foreign_keys_and_busy_timeout(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout_ms=1234)
    try:
        async with engine.connect() as conn:
            pragmas = [
                (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            ]
    finally:
        await engine.dispose()
    assert pragmas == ["wal", 1, 1234]


async def test_given_live_database_then_ping_passes(store: SqlCallStore) -> None:
    await store.ping()


async def test_given_closed_postgres_port_then_ping_raises_store_unavailable_quickly() -> None:
    port = free_tcp_port()
    store = SqlCallStore(
        create_engine(f"postgresql+asyncpg://pbx:s3cret@127.0.0.1:{port}/pbx", connect_timeout=2)
    )
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.ping()
    finally:
        await store.close()
    assert time.monotonic() - started < 3
    assert f"127.0.0.1:{port}/pbx" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize(
    ("connect_timeout", "ping_timeout"),
    [pytest.param(0.5, 10, id="connect-timeout"), pytest.param(10, 0.5, id="ping-timeout")],
)
async def test_given_server_that_never_answers_then_ping_times_out_as_unavailable(
    silent_server: int, connect_timeout: float, ping_timeout: float
) -> None:
    store = SqlCallStore(
        create_engine(
            f"postgresql+asyncpg://pbx@127.0.0.1:{silent_server}/pbx",
            connect_timeout=connect_timeout,
        ),
        ping_timeout=ping_timeout,
    )
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{silent_server}"):
            await store.ping()
    finally:
        await store.close()
    assert time.monotonic() - started < 3


async def test_given_unreachable_sqlite_file_then_ping_raises_store_unavailable(
    tmp_path: Path,
) -> None:
    threads_before = set(threading.enumerate())
    store = SqlCallStore(create_engine(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db"))
    try:
        with pytest.raises(StoreUnavailable, match=r"missing/dir/x\.db"):
            await store.ping()
    finally:
        await store.close()
    # aiosqlite stops the worker thread of a failed connect without waiting for it; let it
    # finish while this test's event loop still runs.
    for thread in set(threading.enumerate()) - threads_before:
        await asyncio.to_thread(thread.join, 5)


@pytest.mark.postgres
async def test_given_postgres_restarts_then_store_is_unavailable_then_recovers(
    pg_server: PostgresServer, pg_store_url: str
) -> None:
    store = SqlCallStore(create_engine(pg_store_url, connect_timeout=2))
    try:
        await store.open_call(inbound("c1"))
        pg_server.stop()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="pbxbrain_test"):
                await store.ping()
            with pytest.raises(StoreUnavailable):
                await store.append(JournalEntry("c1", T0, EventKind.RINGING))
            assert time.monotonic() - started < 5
        finally:
            pg_server.start()
        # The pool drops the dead connections (pre-ping) and carries on.
        await store.ping()
        await store.append(JournalEntry("c1", T0, EventKind.RINGING))
        assert [e.kind for e in await store.journal("c1")] == [
            EventKind.ENTERED,
            EventKind.RINGING,
        ]
    finally:
        await store.close()


# --------------------------------------------------------------------------- migrations


async def test_given_blank_database_then_migrate_reaches_head_and_is_repeatable(
    blank_url: str,
) -> None:
    assert await current_revision(blank_url) is None
    head = head_revision()
    assert await migrate(blank_url) == head
    assert await migrate(blank_url) == head
    assert await current_revision(blank_url) == head

    def downgrade_to_base(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")

    engine = create_engine(blank_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(downgrade_to_base)
    finally:
        await engine.dispose()
    assert await current_revision(blank_url) is None
    assert await migrate(blank_url) == head


async def test_given_nodes_migrating_at_once_then_all_reach_head(blank_url: str) -> None:
    assert await asyncio.gather(*(migrate(blank_url) for _ in range(3))) == [head_revision()] * 3


async def test_given_migrated_database_then_it_matches_the_models(store: SqlCallStore) -> None:
    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_given_migrations_env_override_then_it_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = migrations_dir()
    monkeypatch.setenv(MIGRATIONS_ENV, str(real))
    assert migrations_dir() == real
    monkeypatch.setenv(MIGRATIONS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=MIGRATIONS_ENV):
        migrations_dir()


# -- the SQLite file's own threads (SqlAccess._run) --------------------------------------


@pytest.fixture
async def sqlite_file(tmp_path: Path) -> AsyncIterator[tuple[SqlCallStore, Path]]:
    """A migrated SQLite file and a store on it (busy_timeout 3 s)."""
    path = tmp_path / "threads.db"
    await migrate(f"sqlite+aiosqlite:///{path}")
    store = SqlCallStore(create_engine(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=3000))
    yield store, path
    await store.close()


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another connection holds the file's write lock (an import, another process)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_given_a_writer_waiting_for_the_lock_then_reads_still_answer(
    sqlite_file: tuple[SqlCallStore, Path],
) -> None:
    store, path = sqlite_file
    await store.remember_manager("+79161234567", "ivanov", "c0", T0)
    with write_lock_held(path):
        waiting = asyncio.create_task(store.open_call(inbound("c1")))
        # The write waits for the lock (up to busy_timeout, 3 s); the call path's reads
        # must not wait behind it.
        assert await asyncio.wait_for(store.manager_of("+79161234567"), 2) == "ivanov"
        assert not waiting.done()
    await waiting
    assert await store.get_call("c1") is not None


async def test_given_a_write_given_up_on_then_it_is_rolled_back(
    sqlite_file: tuple[SqlCallStore, Path],
) -> None:
    # The router gives the cursor 0.5 s and then picks from memory: the advance it gave
    # up on must not be taken later, or the next caller skips a manager.
    store, path = sqlite_file
    with write_lock_held(path), pytest.raises(TimeoutError):
        await asyncio.wait_for(store.advance_cursor("sales", 3), 0.3)

    assert [await store.advance_cursor("sales", 3) for _ in range(3)] == [0, 1, 2]


async def test_given_a_closed_store_then_it_reconnects_when_used_again(
    sqlite_file: tuple[SqlCallStore, Path],
) -> None:
    store, _ = sqlite_file
    await store.open_call(inbound("c1"))
    await store.close()

    await store.append(JournalEntry("c1", T0, EventKind.RINGING, {"staff": "ivanov"}))

    assert [e.kind for e in await store.journal("c1")] == [EventKind.ENTERED,
                                                           EventKind.RINGING]
