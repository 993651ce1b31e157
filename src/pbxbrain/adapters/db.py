"""The database adapter: SQLAlchemy 2 models and ``SqlCallStore``, the ``CallStore`` port.

One code path serves SQLite (the default) and PostgreSQL (asyncpg). The schema
itself is created by the Alembic migrations in ``migrations/`` (see ``adapters/migrate.py``);
the models below describe it for queries and for drift checks, and must match them.

Points worth knowing:

* Every datetime is stored as UTC and comes back timezone-aware UTC (``UtcDateTime``);
  SQLite keeps naive ISO strings, PostgreSQL ``timestamptz``.
* On SQLite, SQLAlchemy (not the driver) emits ``BEGIN``, so that a transaction covers
  reads too; transactions that write use ``BEGIN IMMEDIATE``, which takes the write lock
  up front and lets ``busy_timeout`` queue writers instead of failing them.
* Idempotency lives in the statements, not in read-then-write: ``INSERT .. ON CONFLICT DO
  NOTHING`` for calls, recordings and outbox keys, ``UPDATE .. WHERE outcome IS NULL`` for
  closing, an upsert with ``RETURNING`` for the round-robin cursors, an upsert for the
  callers' sticky managers.
* Connection failures of either driver become ``StoreUnavailable``, naming the database
  without its password.
* The call path's transactions are functions of a sync ``Connection`` (``SqlAccess._run``):
  on a SQLite file they run on a thread of their own through the stdlib driver, one hop
  per transaction; on PostgreSQL (and in-memory SQLite) through the async engine's
  ``run_sync``. The rest (API queries, imports) use an ``AsyncConnection`` (``_tx``),
  on aiosqlite for SQLite.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import orjson
import sqlalchemy.exc as sa_exc
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    event,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, RowMapping, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TypeDecorator

from pbxbrain.domain.model import (
    CallOutcome,
    CallSummary,
    Direction,
    EventKind,
    InboundCall,
    JournalEntry,
    OutboxMessage,
    RecordingInfo,
)
from pbxbrain.ports import StoreUnavailable

__all__ = [
    "SQLITE_BEGIN_OPTION",
    "Base",
    "Call",
    "CallEvent",
    "Outbox",
    "Recording",
    "RrCursor",
    "SqlAccess",
    "SqlCallStore",
    "UtcDateTime",
    "as_store_unavailable",
    "create_engine",
    "describe_url",
    "dispose_engine",
    "executing",
    "normalize_url",
    "table_of",
]

SQLITE_DRIVER: Final = "sqlite+aiosqlite"
POSTGRES_DRIVER: Final = "postgresql+asyncpg"
# Execution option read by the SQLite "begin" listener: which BEGIN to emit
# ("DEFERRED" by default, "IMMEDIATE" for transactions that write).
SQLITE_BEGIN_OPTION: Final = "pbxbrain_sqlite_begin"


# --------------------------------------------------------------------------- types


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored as UTC, always returned aware in UTC.

    Naive datetimes are refused: the domain promises aware ones, and guessing a zone
    would silently shift a call's times.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pbxbrain stores aware datetimes only")
        value = value.astimezone(UTC)
        # SQLite's DATETIME drops the offset anyway; store the UTC wall time.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# A 64-bit autoincrement key that SQLite accepts as its rowid alias (INTEGER PRIMARY KEY).
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")
JsonDict = JSON().with_variant(postgresql.JSONB(), "postgresql")


# --------------------------------------------------------------------------- models

NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of pbxbrain's tables; ``Base.metadata`` is Alembic's target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Call(Base):
    """One call as pbxbrain saw it; ``outcome`` is NULL while the call is in progress."""

    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str] = mapped_column(String(64), server_default="")
    direction: Mapped[str] = mapped_column(String(16))
    channel_id: Mapped[str] = mapped_column(String(128), index=True)
    caller: Mapped[str] = mapped_column(String(64), index=True)
    caller_raw: Mapped[str] = mapped_column(String(64))
    caller_name: Mapped[str] = mapped_column(String(128), server_default="")
    dialed: Mapped[str] = mapped_column(String(64), index=True)
    line: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    answered_by: Mapped[str | None] = mapped_column(String(128))
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    outcome: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        # Small partial index: the calls still in progress (re-sync after a restart).
        Index(
            "ix_calls_open",
            "started_at",
            postgresql_where=text("outcome IS NULL"),
            sqlite_where=text("outcome IS NULL"),
        ),
    )


class CallEvent(Base):
    """One call-journal entry; ``id`` gives the insertion order."""

    __tablename__ = "call_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JsonDict)

    __table_args__ = (Index("ix_call_events_call_id_id", "call_id", "id"),)


class Recording(Base):
    """Metadata of a recording; the file lives under the recordings directory."""

    __tablename__ = "recordings"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    duration_s: Mapped[float | None] = mapped_column(Float)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Outbox(Base):
    """A message to deliver outside, written in the transaction of the outcome it follows."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    # SET NULL: purging old calls must not drop messages still to deliver.
    call_id: Mapped[str | None] = mapped_column(
        ForeignKey("calls.id", ondelete="SET NULL"), index=True
    )
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    # Delivery leases and permanent failures (migration 0002; ``crm_store.SqlOutbox``).
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    __table_args__ = (
        # Partial: delivered rows pile up with past next_attempt_at; the poll skips them.
        Index(
            "ix_outbox_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("delivered_at IS NULL"),
            sqlite_where=text("delivered_at IS NULL"),
        ),
    )


class RrCursor(Base):
    """A round-robin group's next position."""

    __tablename__ = "rr_cursors"

    group_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CallerManager(Base):
    """A caller's own manager (the sticky strategy): who took his first call."""

    __tablename__ = "caller_managers"

    phone: Mapped[str] = mapped_column(String(32), primary_key=True)  # E.164
    staff_id: Mapped[str] = mapped_column(String(64))
    call_id: Mapped[str] = mapped_column(String(64))  # the call that made the assignment
    assigned_at: Mapped[datetime] = mapped_column(UtcDateTime())


# --------------------------------------------------------------------------- engine


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and pick pbxbrain's async driver for it.

    ``sqlite://…`` becomes ``sqlite+aiosqlite://…``; ``postgresql://…`` and
    ``postgres://…`` become ``postgresql+asyncpg://…``. Other databases raise ValueError.
    """
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite" and u.drivername in ("sqlite", SQLITE_DRIVER):
        return u.set(drivername=SQLITE_DRIVER)
    if backend in ("postgresql", "postgres") and u.drivername in (
        "postgresql",
        "postgres",
        POSTGRES_DRIVER,
    ):
        return u.set(drivername=POSTGRES_DRIVER)
    raise ValueError(
        f"unsupported database URL {u.render_as_string(hide_password=True)!r}: "
        f"use {SQLITE_DRIVER}:///path/to/file.db or {POSTGRES_DRIVER}://user@host/db"
    )


def describe_url(url: str | URL) -> str:
    """The URL as safe to log and show: the password is masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<unparsable database URL>"


def _json_text(value: object) -> str:
    """JSON columns' serializer: orjson (several times json's speed), as text for the
    drivers; keys that are not strings become strings, as ``json.dumps`` makes them."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def create_engine(
    url: str | URL,
    *,
    connect_timeout: float = 5.0,
    command_timeout: float = 30.0,
    busy_timeout_ms: int = 5000,
    echo: bool = False,
) -> AsyncEngine:
    """Build the AsyncEngine for a pbxbrain database URL (SQLite or PostgreSQL).

    SQLite: WAL journal, foreign keys on, ``busy_timeout_ms`` for waiting on the write
    lock, and SQLAlchemy-controlled transactions (see the module docstring).
    PostgreSQL: ``pool_pre_ping`` (a connection dropped by a server restart is replaced,
    not handed out), ``connect_timeout`` seconds to connect and ``command_timeout``
    seconds per statement, so that a dead or blackholed server fails fast.
    """
    u = normalize_url(url)
    if u.drivername == SQLITE_DRIVER:
        # Every transaction here ends in COMMIT or ROLLBACK (``SqlAccess._tx``), so the
        # pool's own rollback on check-in would only cost a thread hop per transaction.
        engine = create_async_engine(u, echo=echo, pool_reset_on_return=None,
                                     json_serializer=_json_text,
                                     json_deserializer=orjson.loads,
                                     connect_args={"timeout": busy_timeout_ms / 1000})
        _install_sqlite_hooks(engine.sync_engine, busy_timeout_ms)
        if not _in_memory(u):
            _SQLITE_THREADS[engine.sync_engine] = _SqliteThread(u, busy_timeout_ms, echo)
        return engine
    return create_async_engine(
        u,
        echo=echo,
        pool_pre_ping=True,
        pool_timeout=connect_timeout * 2,
        pool_recycle=1800,
        json_serializer=_json_text,
        json_deserializer=orjson.loads,
        connect_args={
            "timeout": connect_timeout,
            "command_timeout": command_timeout,
            "server_settings": {"application_name": "pbxbrain"},
        },
    )


def _in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


class _SqliteThread:
    """The same SQLite file through the stdlib driver, driven from threads of its own.

    ``SqlAccess._run`` sends it whole transactions (a function of a sync ``Connection``):
    one thread hop per transaction, where aiosqlite makes three or four per statement
    (cursor, execute, fetch, close), each a future, a loop wake-up and a greenlet switch.
    That hop overhead was half of the database's CPU per call (see docs/architecture.md,
    Performance). Writers share one thread (SQLite has one writer anyway), readers another,
    so that a writer waiting for the lock (an import holding it) does not hold up the call
    path's reads. A transaction never waits on the event loop, so a writer of the async
    engine holding the lock is waited for (``busy_timeout``), not deadlocked.
    """

    def __init__(self, url: URL, busy_timeout_ms: int, echo: bool) -> None:
        self.engine: Engine = create_sync_engine(
            url.set(drivername="sqlite+pysqlite"), echo=echo, pool_reset_on_return=None,
            json_serializer=_json_text, json_deserializer=orjson.loads,
            connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False})
        _install_sqlite_hooks(self.engine, busy_timeout_ms)
        self.writer = self.engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        self._threads: dict[bool, ThreadPoolExecutor] = {}

    def _thread(self, write: bool) -> ThreadPoolExecutor:
        thread = self._threads.get(write)
        if thread is None:  # first use, or used again after close(): as the pool reconnects
            thread = self._threads[write] = ThreadPoolExecutor(
                1, thread_name_prefix="pbxbrain-sqlite-" + ("writer" if write else "reader"))
        return thread

    async def run(self, fn: Callable[[Connection], _T], *, write: bool) -> _T:
        abandoned = threading.Event()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._thread(write), self._transaction, fn, write, abandoned)
        except asyncio.CancelledError:
            # A caller that gave up (a timeout, a stop) gets a rollback, as an awaited
            # transaction would: a round-robin step given up on must not be taken later.
            abandoned.set()
            raise

    def _transaction(self, fn: Callable[[Connection], _T], write: bool,
                     abandoned: threading.Event) -> _T:
        with (self.writer if write else self.engine).begin() as conn:
            result = fn(conn)
            if abandoned.is_set():
                raise _Abandoned
            return result

    async def close(self) -> None:
        """Close the connections after the transactions queued, and stop the threads."""
        threads, self._threads = self._threads, {}
        loop = asyncio.get_running_loop()
        for thread in threads.values():
            await loop.run_in_executor(thread, _nothing)  # behind the queued transactions
            thread.shutdown(wait=False)
        self.engine.dispose()


def _nothing() -> None:
    pass


class _Abandoned(Exception):
    """Rolls back a transaction whose caller gave up on it."""


_T = TypeVar("_T")
# The SQLite threads of each engine made by ``create_engine`` (none for PostgreSQL and
# in-memory databases); dropped with the engine.
_SQLITE_THREADS: Final[weakref.WeakKeyDictionary[Engine, _SqliteThread]] = (
    weakref.WeakKeyDictionary())


async def dispose_engine(engine: AsyncEngine) -> None:
    """Close an engine's pooled connections, and stop its SQLite threads if it has them
    (both come back if the engine is used again)."""
    thread = _SQLITE_THREADS.get(engine.sync_engine)
    if thread is not None:
        await thread.close()
    await engine.dispose()


def _install_sqlite_hooks(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Stop the driver from issuing its own (deferred, DML-only) BEGIN: see _on_begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA journal_mode")
            row = cursor.fetchone()
            mode = str(row[0]).lower() if row else ""
        finally:
            cursor.close()
        if mode in ("wal", "memory"):
            return
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except Exception as exc:
            # Switching a new file to WAL needs it unlocked, and SQLite does not wait on
            # this pragma: when another connection is writing to the fresh file, keep this
            # connection going; the file is switched by the next connection that can.
            if "locked" not in str(exc):
                raise
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


# --------------------------------------------------------------------------- errors

_UNAVAILABLE_ERRORS: Final = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # pool checkout timed out
    OSError,  # refused, unreachable, reset; raised as is by asyncpg's connect
    TimeoutError,  # asyncpg's connect timeout
)
# SQLSTATE classes meaning "this server cannot serve you now": connection exception
# (08), insufficient resources (53, too many connections), operator intervention (57P:
# shutdown, starting up), invalid authorization (28), unknown database (3D). asyncpg's
# errors carry them; SQLAlchemy's asyncpg adapter copies them to ``sqlstate``.
_UNAVAILABLE_SQLSTATE_PREFIXES: Final = ("08", "53", "57P", "28", "3D")


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        for err in (exc.orig, exc.orig.__cause__ if exc.orig is not None else None):
            if err is None:
                continue
            if isinstance(err, OSError | TimeoutError):
                return True
            sqlstate = getattr(err, "sqlstate", None)
            if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES):
                return True
    return False


def _short_error(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's SQL text and parameters."""
    orig: BaseException = exc
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        # asyncpg's own exception (InvalidCatalogNameError…) says more than the adapter's.
        orig = exc.orig.__cause__ or exc.orig
    message = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {message}" if message else type(orig).__name__


def as_store_unavailable(exc: BaseException, url: str | URL) -> StoreUnavailable | None:
    """``StoreUnavailable`` for a connection-level failure of either driver, else None.

    The message names the database (password masked) and the driver's own words, never
    the SQL or its parameters.
    """
    if isinstance(exc, StoreUnavailable):
        return exc
    if not _is_unavailable(exc):
        return None
    return StoreUnavailable(f"database {describe_url(url)} is unavailable: {_short_error(exc)}")


# --------------------------------------------------------------------------- the store


def _utcnow() -> datetime:
    return datetime.now(UTC)


def executing(stmt: Executable, params: Mapping[str, Any] | None = None,
              ) -> Callable[[Connection], None]:
    """A transaction function that runs one statement and wants nothing back."""

    def run(conn: Connection) -> None:
        conn.execute(stmt, params)

    return run


def _each(writes: Sequence[Callable[[Connection], None]], conn: Connection) -> None:
    for write in writes:
        write(conn)


#: The writes deferred by the ``SqlAccess.batch`` running in this task, if any.
_BATCH: ContextVar[list[Callable[[Connection], None]] | None] = ContextVar(
    "pbxbrain_db_batch", default=None)


class SqlAccess:
    """Transactions on a pbxbrain engine, the rules every SQL adapter shares: writers take
    SQLite's write lock up front (BEGIN IMMEDIATE); connection failures are
    StoreUnavailable; a value that cannot be bound is the ValueError/TypeError it is; and
    inside a ``batch()`` every deferrable write joins the batch's transaction.

    Two ways to run a transaction: ``_run`` (a function of a sync ``Connection``, for the
    call path: on a SQLite file one thread hop for the whole transaction, on PostgreSQL
    the same function through ``run_sync``) and ``_tx`` (an ``AsyncConnection``, for the
    rest: API queries, imports).
    """

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._clock = clock
        self._writer = (
            engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            if self._dialect == "sqlite"
            else engine
        )
        self._thread = _SQLITE_THREADS.get(engine.sync_engine)

    @property
    def engine(self) -> AsyncEngine:
        """The engine this runs on."""
        return self._engine

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Run the writes made inside this block in one transaction, at its end.

        Only deferrable writes (``_batchable_write``) may be made inside; they return at once, and
        their errors (LookupError, StoreUnavailable…) are raised by the block's end. Any
        error undoes the whole batch: the caller retries it after an outage, or writes
        its entries one by one to find the one the database refuses. The journal writer
        uses it: one commit for many journal entries.
        """
        if _BATCH.get() is not None:
            raise RuntimeError("batch() inside a batch")
        writes: list[Callable[[Connection], None]] = []
        token = _BATCH.set(writes)
        try:
            yield
        finally:
            _BATCH.reset(token)
        if writes:
            await self._run(lambda conn: _each(writes, conn), write=True)

    async def _batchable_write(self, fn: Callable[[Connection], None]) -> None:
        """A write that returns nothing: deferred to the end of the running ``batch()``,
        else run now in its own transaction."""
        writes = _BATCH.get()
        if writes is not None:
            writes.append(fn)
            return
        await self._run(fn, write=True)

    async def _run(self, fn: Callable[[Connection], _T], *, write: bool) -> _T:
        """Run ``fn`` in one transaction and return what it returns."""
        with self._transaction():
            if self._thread is not None:
                return await self._thread.run(fn, write=write)
            async with (self._writer if write else self._engine).begin() as conn:
                return await conn.run_sync(fn)

    @asynccontextmanager
    async def _tx(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        with self._transaction():
            async with (self._writer if write else self._engine).begin() as conn:
                yield conn

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """The rules of both ways: none inside a batch; what a failure raises (a value
        the statement could not bind, a naive datetime or a payload that is not JSON, is
        the caller's bug, raised as the ValueError/TypeError it is; a connection failure
        is StoreUnavailable; anything else is itself)."""
        if _BATCH.get() is not None:
            raise RuntimeError("only deferrable writes (_batchable_write) may run inside a batch()")
        try:
            yield
        except sa_exc.StatementError as exc:
            if not isinstance(exc, sa_exc.DBAPIError) and isinstance(
                    exc.orig, ValueError | TypeError):
                raise exc.orig from exc
            unavailable = as_store_unavailable(exc, self._engine.url)
            if unavailable is None:
                raise
            raise unavailable from exc
        except Exception as exc:
            unavailable = as_store_unavailable(exc, self._engine.url)
            if unavailable is None or unavailable is exc:
                raise
            raise unavailable from exc

    def _insert(self, table: type[Base] | Table) -> postgresql.Insert | sqlite.Insert:
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)


def table_of(model: type[Base]) -> Table:
    """The Core table of a model (statements on it skip the ORM's per-statement work)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


_CALLS = table_of(Call).c
_MARK_ANSWERED: Final = (
    update(table_of(Call))
    .where(_CALLS.id == bindparam("b_id"), _CALLS.answered_at.is_(None))
    .values(answered_at=bindparam("b_at", type_=UtcDateTime()), answered_by=bindparam("b_by"))
)
_CLOSE_CALL: Final = (
    update(table_of(Call))
    .where(_CALLS.id == bindparam("b_id"), _CALLS.outcome.is_(None))
    .values(outcome=bindparam("b_outcome"), ended_at=bindparam("b_ended", type_=UtcDateTime()))
    .returning(_CALLS.id)
)
_CALL_EXISTS: Final = select(_CALLS.id).where(_CALLS.id == bindparam("b_id"))


class SqlCallStore(SqlAccess):
    """``CallStore`` over an ``AsyncEngine`` made by ``create_engine``.

    Beyond the port's contract: ``append`` and ``close_call`` on an unknown call raise
    ``LookupError``; ``add_recording`` is idempotent on the recording id; ``list_calls``
    matches ``number`` against the caller and the dialed number, and returns no rows for
    an unknown ``before_id``; ``ping`` gives up after ``ping_timeout`` seconds.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], datetime] = _utcnow,
        ping_timeout: float = 5.0,
    ) -> None:
        super().__init__(engine, clock=clock)
        self._ping_timeout = ping_timeout
        # Built once: building a statement per call cost as much as running it.
        self._insert_call = self._insert(table_of(Call)).on_conflict_do_nothing(
            index_elements=[_CALLS.id]).returning(_CALLS.id)
        self._insert_recording = self._insert(table_of(Recording)).on_conflict_do_nothing(
            index_elements=[table_of(Recording).c.id])
        self._insert_event = self._insert(table_of(CallEvent))
        cursors = table_of(RrCursor).c
        size = bindparam("b_size", type_=Integer())
        now = bindparam("b_now", type_=UtcDateTime())
        self._advance_cursor = (
            self._insert(table_of(RrCursor))
            .values(group_id=bindparam("b_group"), position=bindparam("b_first"), updated_at=now)
            .on_conflict_do_update(index_elements=[cursors.group_id],
                                   set_={"position": (cursors.position % size + 1) % size,
                                         "updated_at": now})
            .returning(cursors.position)
        )
        self._insert_outbox = self._insert(table_of(Outbox)).on_conflict_do_nothing(
            index_elements=[table_of(Outbox).c.key])

    @classmethod
    def from_url(cls, url: str, **engine_kwargs: Any) -> SqlCallStore:
        """A store with its own engine (``create_engine(url, **engine_kwargs)``)."""
        return cls(create_engine(url, **engine_kwargs))

    async def close(self) -> None:
        """Close the engine's pooled connections (and its SQLite thread)."""
        await dispose_engine(self._engine)

    # ----------------------------------------------------------------- health

    async def ping(self) -> None:
        """Raise StoreUnavailable when the database does not answer within ``ping_timeout``."""
        try:
            async with asyncio.timeout(self._ping_timeout):
                await self._run(executing(select(1)), write=False)
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"database {describe_url(self._engine.url)} did not answer within"
                f" {self._ping_timeout:g} s"
            ) from exc

    # ----------------------------------------------------------------- calls

    async def open_call(
        self, call: InboundCall, *, line: str | None = None, source: str | None = None
    ) -> None:
        """Create the call row and its ``entered`` journal entry in one transaction.

        Idempotent on ``call.call_id``: opening the same call twice keeps the first row.
        """
        row = {"id": call.call_id, "node": call.node, "direction": call.direction.value,
               "channel_id": call.channel_id, "caller": call.caller,
               "caller_raw": call.caller_raw, "caller_name": call.caller_name,
               "dialed": call.dialed, "line": line, "source": source, "started_at": call.at}
        data: dict[str, Any] = {
            "channel_id": call.channel_id,
            "caller": call.caller,
            "dialed": call.dialed,
        }
        if line is not None:
            data["line"] = line
        if source is not None:
            data["source"] = source

        def write(conn: Connection) -> None:
            if conn.execute(self._insert_call, row).first() is not None:
                conn.execute(self._insert_event, [{"call_id": call.call_id, "at": call.at,
                                                   "kind": EventKind.ENTERED.value,
                                                   "data": data}])

        await self._batchable_write(write)

    async def append(self, entry: JournalEntry) -> None:
        """Add one journal entry to a call; LookupError when the call is unknown."""
        await self.append_many([entry])

    async def append_many(self, entries: Sequence[JournalEntry]) -> None:
        """Add journal entries in one INSERT (the journal writer's batches); LookupError
        when one names an unknown call."""
        if not entries:
            return
        rows = [{"call_id": e.call_id, "at": e.at, "kind": e.kind.value, "data": dict(e.data)}
                for e in entries]

        def write(conn: Connection) -> None:
            try:
                conn.execute(self._insert_event, rows)
            except sa_exc.IntegrityError as exc:
                if len(entries) == 1:
                    raise LookupError(f"no call {entries[0].call_id!r} to journal "
                                      f"{entries[0].kind}") from exc
                raise LookupError(f"a journal entry names an unknown call (one of "
                                  f"{sorted({e.call_id for e in entries})})") from exc

        await self._batchable_write(write)

    async def mark_answered(self, call_id: str, at: datetime, by: str | None) -> None:
        """Record who answered and when (first answer wins; later calls are ignored)."""
        params = {"b_id": call_id, "b_at": at, "b_by": by}
        await self._batchable_write(executing(_MARK_ANSWERED, params))

    async def close_call(
        self,
        call_id: str,
        outcome: CallOutcome,
        ended_at: datetime,
        *,
        outbox: Sequence[OutboxMessage] = (),
        data: dict[str, object] | None = None,
    ) -> None:
        """Set the outcome and end time, journal ``ended`` and queue ``outbox`` atomically.

        Closing a call that is already closed changes nothing (no second outbox row); an
        outbox key already queued (by any call) is kept as it is. The ``ended`` entry's
        data is ``data`` plus ``outcome``. Outbox rows are due at ``ended_at``.
        Raises LookupError when the call is unknown (nothing is written).
        """
        now = self._clock()
        ended = {"call_id": call_id, "at": ended_at, "kind": EventKind.ENDED.value,
                 "data": {**(data or {}), "outcome": outcome.value}}
        rows = [{"key": msg.key, "kind": msg.kind,
                 "call_id": msg.call_id if msg.call_id is not None else call_id,
                 "payload": dict(msg.payload), "created_at": now, "attempts": 0,
                 "next_attempt_at": ended_at} for msg in outbox]

        def write(conn: Connection) -> None:
            # The UPDATE is the guard: only one closer can move the outcome off NULL.
            closed = conn.execute(_CLOSE_CALL, {"b_id": call_id, "b_outcome": outcome.value,
                                                "b_ended": ended_at})
            if closed.first() is None:
                if conn.execute(_CALL_EXISTS, {"b_id": call_id}).first() is None:
                    raise LookupError(f"no call {call_id!r} to close")
                return
            conn.execute(self._insert_event, [ended])
            for row in rows:  # one by one: the same key twice in one call keeps the first
                conn.execute(self._insert_outbox, row)

        await self._batchable_write(write)

    async def get_call(self, call_id: str) -> CallSummary | None:
        """One call, or None."""
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(Call).where(Call.id == call_id))).mappings()
            found = row.first()
        return _summary(found) if found is not None else None

    async def journal(self, call_id: str) -> list[JournalEntry]:
        """A call's journal, in insertion order."""
        async with self._tx(write=False) as conn:
            result = await conn.execute(
                select(CallEvent.at, CallEvent.kind, CallEvent.data)
                .where(CallEvent.call_id == call_id)
                .order_by(CallEvent.id)
            )
            rows = result.all()
        return [
            JournalEntry(call_id=call_id, at=at, kind=EventKind(kind), data=data or {})
            for at, kind, data in rows
        ]

    async def list_calls(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        number: str | None = None,
        outcome: CallOutcome | None = None,
        limit: int = 100,
        before_id: str | None = None,
    ) -> list[CallSummary]:
        """Calls, newest first (``started_at``, then id), filtered; ``before_id`` pages on.

        ``since`` is inclusive, ``until`` exclusive; ``number`` matches the caller or the
        dialed number exactly (normalise it to E.164 first, as the calls are stored);
        ``before_id`` is the last call of the previous page (an unknown id gives an empty
        page).
        """
        if limit <= 0:
            return []
        stmt = select(Call)
        if since is not None:
            stmt = stmt.where(Call.started_at >= since)
        if until is not None:
            stmt = stmt.where(Call.started_at < until)
        if number is not None:
            stmt = stmt.where(or_(Call.caller == number, Call.dialed == number))
        if outcome is not None:
            stmt = stmt.where(Call.outcome == outcome.value)
        stmt = stmt.order_by(Call.started_at.desc(), Call.id.desc()).limit(limit)
        async with self._tx(write=False) as conn:
            if before_id is not None:
                cursor = (
                    await conn.execute(select(Call.started_at).where(Call.id == before_id))
                ).first()
                if cursor is None:
                    return []
                cursor_at = cursor[0]
                stmt = stmt.where(
                    or_(
                        Call.started_at < cursor_at,
                        and_(Call.started_at == cursor_at, Call.id < before_id),
                    )
                )
            rows = (await conn.execute(stmt)).mappings().all()
        return [_summary(r) for r in rows]

    async def open_calls(self) -> list[CallSummary]:
        """Calls with no outcome yet, oldest first (to re-sync after a restart)."""
        async with self._tx(write=False) as conn:
            rows = (
                (
                    await conn.execute(
                        select(Call)
                        .where(Call.outcome.is_(None))
                        .order_by(Call.started_at, Call.id)
                    )
                )
                .mappings()
                .all()
            )
        return [_summary(r) for r in rows]

    # ----------------------------------------------------------------- recordings

    async def add_recording(self, rec: RecordingInfo) -> None:
        """Keep a recording's metadata (idempotent on ``recording_id``).

        LookupError when the call is unknown.
        """
        row = {"id": rec.recording_id, "call_id": rec.call_id, "name": rec.name,
               "path": rec.path, "format": rec.format, "started_at": rec.started_at,
               "duration_s": rec.duration_s, "size_bytes": rec.size_bytes,
               "created_at": self._clock()}

        def write(conn: Connection) -> None:
            try:
                conn.execute(self._insert_recording, row)
            except sa_exc.IntegrityError as exc:
                raise LookupError(f"no call {rec.call_id!r} for recording") from exc

        await self._batchable_write(write)

    async def finish_recording(
        self, recording_id: str, duration_s: float | None, size_bytes: int | None
    ) -> None:
        """Set a finished recording's duration and size (unknown ids are ignored)."""
        stmt = (update(Recording).where(Recording.id == recording_id)
                .values(duration_s=duration_s, size_bytes=size_bytes))
        await self._batchable_write(executing(stmt))

    async def recordings(self, call_id: str) -> list[RecordingInfo]:
        """A call's recordings, in the order they started."""
        async with self._tx(write=False) as conn:
            rows = (
                (
                    await conn.execute(
                        select(Recording)
                        .where(Recording.call_id == call_id)
                        .order_by(Recording.started_at, Recording.id)
                    )
                )
                .mappings()
                .all()
            )
        return [_recording(r) for r in rows]

    async def get_recording(self, recording_id: str) -> RecordingInfo | None:
        """One recording's metadata, or None (the ``RecordingIndex`` port of the API)."""
        async with self._tx(write=False) as conn:
            r = (
                (await conn.execute(select(Recording).where(Recording.id == recording_id)))
                .mappings()
                .first()
            )
        return None if r is None else _recording(r)

    # ----------------------------------------------------------------- round robin

    async def advance_cursor(self, group: str, size: int) -> int:
        """Atomically return the group's round-robin position in ``[0, size)`` and advance it.

        One upsert statement with RETURNING: on PostgreSQL concurrent callers queue on
        the row lock, on SQLite on the database write lock, so no position is handed out
        twice in a round. The stored value is the next position; a group whose size
        changed wraps into the new range.
        """
        if size <= 0:
            raise ValueError(f"round-robin group {group!r} has size {size}, expected >= 1")
        params = {"b_group": group, "b_first": 1 % size, "b_size": size, "b_now": self._clock()}
        next_position = await self._run(
            lambda conn: conn.execute(self._advance_cursor, params).scalar_one(), write=True)
        return int(next_position - 1) % size

    # ----------------------------------------------------------------- sticky managers

    async def manager_of(self, phone: str) -> str | None:
        """The manager assigned to caller ``phone`` (E.164) by the sticky strategy."""
        stmt = select(CallerManager.staff_id).where(CallerManager.phone == phone)
        found: str | None = await self._run(
            lambda conn: conn.execute(stmt).scalar_one_or_none(), write=False)
        return found

    async def remember_manager(self, phone: str, staff_id: str, call_id: str,
                               at: datetime) -> None:
        """Make ``staff_id`` caller ``phone``'s manager (replacing any earlier one)."""
        values = {"staff_id": staff_id, "call_id": call_id, "assigned_at": at}
        stmt = (self._insert(CallerManager).values(phone=phone, **values)
                .on_conflict_do_update(index_elements=[CallerManager.phone], set_=values))
        await self._batchable_write(executing(stmt))


def _recording(row: RowMapping) -> RecordingInfo:
    return RecordingInfo(
        recording_id=row["id"],
        call_id=row["call_id"],
        name=row["name"],
        path=row["path"],
        format=row["format"],
        started_at=row["started_at"],
        duration_s=row["duration_s"],
        size_bytes=row["size_bytes"],
    )


def _summary(row: RowMapping) -> CallSummary:
    outcome = row["outcome"]
    return CallSummary(
        call_id=row["id"],
        direction=Direction(row["direction"]),
        channel_id=row["channel_id"],
        caller=row["caller"],
        caller_raw=row["caller_raw"],
        dialed=row["dialed"],
        started_at=row["started_at"],
        node=row["node"],
        caller_name=row["caller_name"],
        answered_at=row["answered_at"],
        ended_at=row["ended_at"],
        outcome=CallOutcome(outcome) if outcome is not None else None,
        answered_by=row["answered_by"],
        line=row["line"],
        source=row["source"],
    )


# The CRM tables (contacts, tasks, crm_applied) live in their own module but on the same
# ``Base.metadata``: importing them here keeps the metadata whole wherever the models are
# used (migrations, drift checks). At the bottom, since that module imports this one.
from pbxbrain.adapters import crm_store as _crm_store  # noqa: E402, F401
