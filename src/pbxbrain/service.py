"""Call orchestration that needs no Asterisk: the journal writer and the router.

The call journal writer: the call path never waits on the database.

Every write (open, append, answered, close) is queued in order and applied by one
worker. When the database is down, the worker keeps the queue, retries with backoff,
and reports the backlog through ``status`` (and so ``/v1/health``): a dead database
delays the journal, it never holds a caller or loses an entry while pbxbrain runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from pbxbrain.domain.model import (
    CallOutcome,
    Contact,
    EventKind,
    InboundCall,
    JournalEntry,
    OutboxMessage,
    RecordingInfo,
)
from pbxbrain.domain.plan import Facts, Plan
from pbxbrain.domain.routing import cursor_groups, decide
from pbxbrain.ports import CallStore, ContactLookup, LookupResult, PhoneStates, StoreUnavailable

if TYPE_CHECKING:
    from pbxbrain.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Write:
    call_id: str
    what: str
    apply: Callable[[CallStore], Awaitable[None]]
    entry: JournalEntry | None = None  # set for plain journal entries (batched together)


class Journal:
    """Ordered, retried writes of call facts to the CallStore."""

    def __init__(self, store: CallStore, *, retry_first_s: float = 0.2,
                 retry_max_s: float = 10.0, linger_s: float = 0.0,
                 on_outbox: Callable[[], None] | None = None) -> None:
        """``linger_s``: how long the first write of a batch waits for company (a call
        makes half a dozen writes within a second; one transaction for all of them, and
        for other calls', is much cheaper than one each)."""
        self._store = store
        self._linger = linger_s
        self._on_outbox = on_outbox  # told after outbox rows are committed
        self._outbox_written = False
        self._batch_max = 200
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
        self._put(call_id, kind.value, lambda s: s.append(entry), entry)

    def answered(self, call_id: str, at: datetime, by: str | None) -> None:
        """Who answered, when (the first answer wins)."""
        self._put(call_id, "answered", lambda s: s.mark_answered(call_id, at, by))

    def remembered(self, call_id: str, phone: str, staff_id: str, at: datetime) -> None:
        """``staff_id`` is caller ``phone``'s sticky manager from now on."""
        self._put(call_id, "sticky manager",
                  lambda s: s.remember_manager(phone, staff_id, call_id, at))

    def recording(self, rec: RecordingInfo) -> None:
        """A recording kept for the call (metadata; the file is already stored)."""
        self._put(rec.call_id, "recording", lambda s: s.add_recording(rec))

    def closed(self, call_id: str, outcome: CallOutcome, at: datetime, *,
               outbox: Sequence[OutboxMessage] = (),
               data: Mapping[str, object] | None = None) -> None:
        """The call's outcome, with its outbox rows (one transaction in the store)."""

        async def apply(store: CallStore) -> None:
            await store.close_call(call_id, outcome, at, outbox=outbox, data=dict(data or {}))
            if outbox:
                self._outbox_written = True  # told after the batch's commit

        self._put(call_id, "close", apply)

    def closing(self, call_id: str) -> bool:
        """Whether the call's close is queued, not yet in the database."""
        return any(w.call_id == call_id and w.what == "close" for w in self._queue)

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
             apply: Callable[[CallStore], Awaitable[None]],
             entry: JournalEntry | None = None) -> None:
        self._queue.append(_Write(call_id, what, apply, entry))
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
                if self._linger > 0:
                    await asyncio.sleep(self._linger)
                continue
            # Everything queued so far goes in one transaction: one commit per batch, not
            # per entry, is what keeps the journal cheap under load.
            writes = [self._queue[i] for i in range(min(len(self._queue), self._batch_max))]
            self._outbox_written = False
            try:
                try:
                    async with self._store.batch():
                        await self._apply_batch(writes)
                except StoreUnavailable:
                    raise
                except Exception:
                    # One write the database refuses undid the batch: write them one by
                    # one, so that only the refused one is skipped.
                    self._outbox_written = False
                    for write in writes:
                        await self._apply(write)
            except StoreUnavailable as exc:
                if not self.last_error:
                    log.error("journal: database unavailable (%s); %d writes queued, "
                              "retrying", exc, len(self._queue))
                self.last_error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            if self.last_error and not self.last_error.startswith("refused:"):
                log.info("journal: database back, %d writes left",
                         len(self._queue) - len(writes))
                self.last_error = ""
            self.written += len(writes)
            delay = self._retry_first
            for _ in writes:
                self._queue.popleft()
            if self._outbox_written and self._on_outbox is not None:
                self._on_outbox()

    async def _apply_batch(self, writes: Sequence[_Write]) -> None:
        """Apply writes in order; runs of plain journal entries go as one INSERT."""
        entries: list[JournalEntry] = []
        for write in writes:
            if write.entry is not None:
                entries.append(write.entry)
                continue
            if entries:
                await self._store.append_many(entries)
                entries = []
            await write.apply(self._store)
        if entries:
            await self._store.append_many(entries)

    async def _apply(self, write: _Write) -> None:
        try:
            await write.apply(self._store)
        except StoreUnavailable:
            raise
        except Exception as exc:
            # A write the database refuses for good (a bug, not an outage): keep the
            # journal moving, and say exactly what was dropped.
            log.exception("journal: %s of call %s refused, skipped", write.what,
                          write.call_id)
            self.last_error = f"refused: {write.what} of call {write.call_id}: {exc}"


class Router:
    """Gathers the facts for a call, each with a deadline and a fallback, then decides.

    The decision itself is ``domain.routing.decide``: pure. What can be slow or down here
    (the database for round-robin cursors, Asterisk for phone states, later the CRM) is
    bounded, so a sick dependency degrades the route, never holds the caller.
    """

    def __init__(self, config: Config, store: CallStore, phones: PhoneStates,
                 contacts: ContactLookup, *, deadline_s: float = 0.5) -> None:
        self.config = config
        self._store = store
        self._phones = phones
        self._contacts = contacts
        self._deadline = deadline_s
        self._local_cursors: dict[str, int] = {}  # used while the database is down

    async def plan(self, call: InboundCall, now: datetime) -> tuple[Plan, Contact | None]:
        """The plan for ``call`` at ``now``, and the caller's contact if the CRM knows him."""
        # The CRM lookup and the phone states are fetched while the cursors advance.
        lookup = asyncio.create_task(self._contacts.lookup(call.caller))
        phones = asyncio.create_task(self._phone_states(call))
        try:
            return await self._plan(call, now, lookup, phones)
        finally:
            lookup.cancel()
            phones.cancel()

    async def _phone_states(self, call: InboundCall) -> tuple[frozenset[str], frozenset[str]]:
        """(busy, offline); nobody known busy or offline when Asterisk is too slow."""
        try:
            return await asyncio.wait_for(self._phones.snapshot(), self._deadline * 2)
        except TimeoutError:
            log.warning("call %s: phone states not known in time", call.call_id)
            return frozenset(), frozenset()

    async def _plan(self, call: InboundCall, now: datetime,
                    lookup: asyncio.Task[LookupResult],
                    phones: asyncio.Task[tuple[frozenset[str], frozenset[str]]],
                    ) -> tuple[Plan, Contact | None]:
        cursors: dict[str, int] = {}
        groups = cursor_groups(call.dialed, call.caller, self.config)
        remembered = (asyncio.create_task(self._remembered_manager(call))
                      if any(self.config.departments[g].strategy == "sticky" for g in groups)
                      else None)
        for group in groups:
            size = len(self.config.departments[group].members)
            if size == 0:
                continue
            try:
                cursors[group] = await asyncio.wait_for(
                    self._store.advance_cursor(group, size), self._deadline)
            except (StoreUnavailable, TimeoutError) as exc:
                position = self._local_cursors.get(group, 0)
                self._local_cursors[group] = position + 1
                cursors[group] = position % size
                log.warning("call %s: round-robin cursor of %s from memory (%s)",
                            call.call_id, group, str(exc) or "database too slow")
        busy, offline = await phones
        found = await lookup  # bounded by its own deadline; never raises
        owner = found.owner if found.owner in self.config.staff else None
        # The CRM's owner is the caller's manager; else the one the sticky strategy gave him.
        sticky, sticky_known = owner, True
        if sticky is None and remembered is not None:
            sticky_known, sticky = await remembered
        facts = Facts(owner=owner, crm_ok=found.answered, busy=busy, offline=offline,
                      cursors=cursors, sticky=sticky, sticky_known=sticky_known)
        return decide(call, facts, self.config, now), found.contact

    async def _remembered_manager(self, call: InboundCall) -> tuple[bool, str | None]:
        """(known, the caller's sticky manager); not known when the database did not
        answer in time."""
        if not call.caller.startswith("+"):
            return True, None
        try:
            return True, await asyncio.wait_for(self._store.manager_of(call.caller),
                                                self._deadline)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("call %s: caller's sticky manager not known (%s); nobody new is "
                        "assigned", call.call_id, str(exc) or "database too slow")
            return False, None

    def manager_to_remember(self, plan: Plan, answered_by: str | None) -> str | None:
        """Who becomes the caller's sticky manager after a call routed by ``plan``.

        Only when the plan assigned one (the caller had none): the member of that sticky
        department who answered, else the plan's pick (who gets the missed-call task).
        """
        pick = plan.assign_sticky
        if pick is None:
            return None
        department = self.config.department_of(pick)
        if answered_by is not None and self.config.department_of(answered_by) == department:
            return answered_by
        return pick
