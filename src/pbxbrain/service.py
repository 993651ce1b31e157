"""The call journal writer: the call path never waits on the database.

Every write (open, append, answered, close) is queued in order and applied by one
worker. When the database is down, the worker keeps the queue, retries with backoff,
and reports the backlog through ``status`` (and so ``/v1/health``): a dead database
delays the journal, it never holds a caller or loses an entry while pbxbrain runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pbxbrain.domain.model import (
    CallOutcome,
    EventKind,
    InboundCall,
    JournalEntry,
    OutboxMessage,
)
from pbxbrain.ports import CallStore, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Write:
    call_id: str
    what: str
    apply: Callable[[CallStore], Awaitable[None]]


class Journal:
    """Ordered, retried writes of call facts to the CallStore."""

    def __init__(self, store: CallStore, *, retry_first_s: float = 0.2,
                 retry_max_s: float = 10.0) -> None:
        self._store = store
        self._queue: deque[_Write] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._retry_first = retry_first_s
        self._retry_max = retry_max_s
        self.last_error = ""
        self.written = 0

    # -- what the call path calls (never blocks) -----------------------------
    def entered(self, call: InboundCall, *, line: str | None = None,
                source: str | None = None) -> None:
        """The call entered pbxbrain."""
        self._put(call.call_id, "open", lambda s: s.open_call(call, line=line, source=source))

    def event(self, call_id: str, at: datetime, kind: EventKind, **data: object) -> None:
        """Something happened to the call."""
        entry = JournalEntry(call_id=call_id, at=at, kind=kind, data=dict(data))
        self._put(call_id, kind.value, lambda s: s.append(entry))

    def answered(self, call_id: str, at: datetime, by: str | None) -> None:
        """Who answered, when (the first answer wins)."""
        self._put(call_id, "answered", lambda s: s.mark_answered(call_id, at, by))

    def closed(self, call_id: str, outcome: CallOutcome, at: datetime, *,
               outbox: Sequence[OutboxMessage] = (), **data: object) -> None:
        """The call's outcome, with its outbox rows (one transaction in the store)."""
        self._put(call_id, "close", lambda s: s.close_call(
            call_id, outcome, at, outbox=outbox, data=dict(data)))

    # -- status ----------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Writes not yet in the database."""
        return len(self._queue)

    @property
    def status(self) -> str:
        """``ok``, or what is wrong, for the health endpoint."""
        if not self._queue or not self.last_error:
            return "ok"
        return f"{len(self._queue)} journal writes waiting: {self.last_error}"

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued write is stored; False when the deadline passed."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- the worker ------------------------------------------------------------
    def _put(self, call_id: str, what: str,
             apply: Callable[[CallStore], Awaitable[None]]) -> None:
        self._queue.append(_Write(call_id, what, apply))
        self._idle.clear()
        self._wakeup.set()

    async def run(self) -> None:
        """Apply queued writes in order, forever; retry the head while the store is down."""
        delay = self._retry_first
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            write = self._queue[0]
            try:
                await write.apply(self._store)
            except StoreUnavailable as exc:
                if not self.last_error:
                    log.error("journal: database unavailable (%s); %d writes queued, "
                              "retrying", exc, len(self._queue))
                self.last_error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            except Exception as exc:
                # A write the database refuses for good (a bug, not an outage): keep the
                # journal moving, and say exactly what was dropped.
                log.exception("journal: %s of call %s refused, skipped", write.what,
                              write.call_id)
                self.last_error = f"{write.what} of call {write.call_id} refused: {exc}"
            else:
                if self.last_error:
                    log.info("journal: database back, %d writes left", len(self._queue) - 1)
                self.last_error = ""
                self.written += 1
            delay = self._retry_first
            self._queue.popleft()
