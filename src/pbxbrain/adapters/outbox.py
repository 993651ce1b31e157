"""The outbox: what the CRM must hear about a call, and the worker that makes sure it does.

Messages are written by the journal, in the transaction that closes the call
(``Journal.closed(..., outbox=[...])``); build them with the functions below, which fix the
kinds, keys and payloads (JSON-safe; datetimes are ISO 8601 with their offset):

========================  ==========================  ===================================
kind                      key                         payload
========================  ==========================  ===================================
``missed_call``           ``missed:<call id>``        call_id, phone, outcome, at, due_at,
                                                      responsible, line, source, recording
``called_back``           ``called_back:<call id>``   phone, call_id, by, at
``call_finished``         ``finished:<call id>``      the ``CallSummary`` fields +
                                                      recording_url
========================  ==========================  ===================================

``OutboxWorker`` delivers them to the ``Crm``:

* it claims due rows with a lease (``OutboxStore.claim_deliveries``), so several nodes on
  one database never deliver a row at the same time, and delivers them one by one;
* delivered: ``delivered``, once per round for all its rows. ``CrmUnavailable``:
  ``delivery_failed`` with exponential backoff (``first_delay_s`` * 2^attempts, capped at
  ``max_delay_s``, ± 20 % jitter from the injected random source), retried forever: a
  missed call is never dropped.
  ``CrmRejected``, or a payload that cannot be read: ``delivery_rejected`` at once (failed
  for good, listed by ``failed_deliveries``, retried only by hand: ``retry_now``);
* each failure is one log line with the call id, kind, attempt and error; ``status`` is
  ``ok`` or ``N deliveries failing: <error>`` for ``/v1/health``;
* it waits on an event (``poke()``: new rows were committed, or one was retried by hand)
  or until the next row is due, at most ``tick_s``; it never polls in a tight loop;
* a worker killed mid-delivery leaves its rows leased; another worker (or the same node
  after a restart: ``release_claims``) delivers them later. The CRM side dedupes on the
  key, so the CRM sees the message once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from pbxbrain.domain.model import (
    CallOutcome,
    CallSummary,
    Direction,
    MissedCall,
    OutboxMessage,
    PendingDelivery,
)
from pbxbrain.ports import Crm, CrmRejected, CrmUnavailable, OutboxStore, StoreUnavailable

__all__ = [
    "CALLED_BACK",
    "CALL_FINISHED",
    "MISSED_CALL",
    "OutboxWorker",
    "call_finished_message",
    "called_back_message",
    "missed_call_message",
]

log = logging.getLogger(__name__)

MISSED_CALL: Final = "missed_call"
CALLED_BACK: Final = "called_back"
CALL_FINISHED: Final = "call_finished"
_MAX_EXPONENT: Final = 30


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --------------------------------------------------------------------------- messages


def missed_call_message(missed: MissedCall) -> OutboxMessage:
    """The ``missed_call`` message of a missed call (key ``missed:<call id>``)."""
    return OutboxMessage(
        key=f"missed:{missed.call_id}",
        kind=MISSED_CALL,
        call_id=missed.call_id,
        payload={
            "call_id": missed.call_id,
            "phone": missed.phone,
            "outcome": missed.outcome.value,
            "at": _iso(missed.at),
            "due_at": _iso(missed.due_at),
            "responsible": missed.responsible,
            "line": missed.line,
            "source": missed.source,
            "recording": missed.recording,
        },
    )


def called_back_message(phone: str, call_id: str, by: str | None, at: datetime) -> OutboxMessage:
    """The ``called_back`` message: manager ``by`` talked to ``phone`` on call ``call_id``
    (answered at ``at``); it closes the number's open task. Key ``called_back:<call id>``."""
    return OutboxMessage(
        key=f"called_back:{call_id}",
        kind=CALLED_BACK,
        call_id=call_id,
        payload={"phone": phone, "call_id": call_id, "by": by, "at": _iso(at)},
    )


def call_finished_message(call: CallSummary, recording_url: str | None = None) -> OutboxMessage:
    """The ``call_finished`` message (the CRM's call log). Key ``finished:<call id>``."""
    return OutboxMessage(
        key=f"finished:{call.call_id}",
        kind=CALL_FINISHED,
        call_id=call.call_id,
        payload={
            "call_id": call.call_id,
            "direction": call.direction.value,
            "channel_id": call.channel_id,
            "caller": call.caller,
            "caller_raw": call.caller_raw,
            "dialed": call.dialed,
            "started_at": _iso(call.started_at),
            "node": call.node,
            "caller_name": call.caller_name,
            "answered_at": _iso(call.answered_at),
            "ended_at": _iso(call.ended_at),
            "outcome": call.outcome.value if call.outcome is not None else None,
            "answered_by": call.answered_by,
            "line": call.line,
            "source": call.source,
            "recording_url": recording_url,
        },
    )


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _MissedPayload(_Payload):
    call_id: str
    phone: str
    outcome: CallOutcome
    at: AwareDatetime
    due_at: AwareDatetime
    responsible: str | None = None
    line: str | None = None
    source: str | None = None
    recording: str | None = None


class _CalledBackPayload(_Payload):
    phone: str
    call_id: str
    by: str | None = None
    at: AwareDatetime


class _FinishedPayload(_Payload):
    call_id: str
    direction: Direction
    channel_id: str = ""
    caller: str
    caller_raw: str = ""
    dialed: str
    started_at: AwareDatetime
    node: str = ""
    caller_name: str = ""
    answered_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None
    outcome: CallOutcome | None = None
    answered_by: str | None = None
    line: str | None = None
    source: str | None = None
    recording_url: str | None = None


# --------------------------------------------------------------------------- the worker


class OutboxWorker:
    """Delivers the outbox to the CRM; see the module docstring.

    ``on_contact_changed(phone)`` is called after a ``missed_call`` or ``called_back`` was
    delivered (e.g. ``CachedLookup.invalidate``: the contact may be new or have an owner).
    """

    def __init__(
        self,
        store: OutboxStore,
        crm: Crm,
        node: str,
        clock: Callable[[], datetime] = _utcnow,
        *,
        rand: Callable[[], float] = random.random,
        batch: int = 20,
        lease_s: float = 120.0,
        tick_s: float = 30.0,
        first_delay_s: float = 5.0,
        max_delay_s: float = 600.0,
        deliver_timeout_s: float = 30.0,
        linger_s: float = 0.0,
        on_contact_changed: Callable[[str], None] | None = None,
    ) -> None:
        """``linger_s``: after a poke, wait this long for more rows, so that the calls of a
        busy moment are claimed and marked in one transaction each, not one per call."""
        if lease_s <= deliver_timeout_s:
            raise ValueError(f"lease_s ({lease_s}) must exceed deliver_timeout_s "
                             f"({deliver_timeout_s}): a lease must outlive a delivery")
        self._store = store
        self._crm = crm
        self._node = node
        self._clock = clock
        self._rand = rand
        self._batch = batch
        self._lease = timedelta(seconds=lease_s)
        self._tick = tick_s
        self._first = first_delay_s
        self._max = max_delay_s
        self._deliver_timeout = deliver_timeout_s
        self._on_contact_changed = on_contact_changed
        self._linger = linger_s
        # When the next row is due, as far as this worker knows; None: ask the database.
        self._next_due: datetime | None = None
        self._wakeup = asyncio.Event()
        self._failing = 0
        self._status_dirty = True  # count the failing rows a previous run left
        self._db_error = ""
        self.last_error = ""
        self.delivered_count = 0

    # -- what others call ----------------------------------------------------------
    def poke(self) -> None:
        """New rows were committed (or one was retried by hand): look now."""
        self._wakeup.set()

    @property
    def status(self) -> str:
        """``ok``, or what is wrong, for the health endpoint."""
        if self._failing:
            return f"{self._failing} deliveries failing: {self.last_error}"
        if self._db_error:
            return f"outbox not read: {self._db_error}"
        return "ok"

    def retry_delay(self, attempts: int) -> float:
        """Seconds before the next attempt of a row that failed ``attempts`` times before
        this failure: ``first_delay_s`` * 2^attempts with ± 20 % jitter, at most
        ``max_delay_s``."""
        base: float = self._first * 2.0 ** min(attempts, _MAX_EXPONENT)
        return min(self._max, base * (0.8 + 0.4 * self._rand()))

    # -- the loop --------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver forever: release this node's stale leases, then claim, deliver, wait."""
        released = False
        db_delay = 0.5
        while True:
            self._wakeup.clear()
            try:
                if not released:
                    stale = await self._store.release_claims(self._node)
                    released = True
                    if stale:
                        log.info("outbox: took back %d deliveries a previous run of %s "
                                 "had claimed", stale, self._node)
                handled = await self.run_once()
                # Re-count failing rows only when that count can have changed: it costs a
                # query, and the worker runs after every missed or answered call.
                if self._status_dirty or self._failing:
                    await self.refresh_status()
                    self._status_dirty = False
                if self._db_error:
                    log.info("outbox: database back")
                self._db_error = ""
                db_delay = 0.5
                wait = 0.0 if handled >= self._batch else await self._idle_wait(handled)
            except StoreUnavailable as exc:
                if not self._db_error:
                    log.error("outbox: database unavailable (%s); retrying", exc)
                self._db_error = str(exc)
                wait = db_delay
                db_delay = min(db_delay * 2, self._tick)
            except Exception as exc:
                # Not an outage (a schema not migrated yet, a bug): the worker must not die
                # with missed calls still to deliver; say so and try again later.
                log.exception("outbox: unexpected error; retrying")
                self._db_error = f"{type(exc).__name__}: {exc}"
                wait = db_delay
                db_delay = min(db_delay * 2, self._tick)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                    if self._linger > 0:
                        await asyncio.sleep(self._linger)

    async def _idle_wait(self, handled: int) -> float:
        """Seconds until the next row is due (at most ``tick_s``, at least a moment, so
        that a row claimable only by another node cannot spin this loop).

        After a round of first attempts that all went through, the rows still waiting are
        the ones this worker knew of before (retries keep their times; new failures were
        noted by ``_fail``): no need to ask the database again.
        """
        if handled == 0 or self._next_due is None:
            due = await self._store.next_due_at()
            self._next_due = due if due is not None else self._clock() + timedelta(
                seconds=self._tick)
        seconds = (self._next_due - self._clock()).total_seconds()
        return min(self._tick, max(0.2, seconds))

    async def run_once(self) -> int:
        """Claim one batch of due rows and deliver them; returns how many were claimed.

        Rows whose lease would run out before their delivery could finish are left for
        the next claim.
        """
        now = self._clock()
        rows = await self._store.claim_deliveries(
            self._node, now, self._batch, self._lease.total_seconds())
        if any(row.attempts for row in rows):
            self._next_due = None  # a retry was due: when the next one is, ask again
        lease_end = now + self._lease - timedelta(seconds=self._deliver_timeout)
        done: list[tuple[int, str | None]] = []  # (row id, phone) delivered
        try:
            for row in rows:
                if self._clock() >= lease_end:
                    break
                delivered = await self._deliver(row)
                if delivered is not None:
                    done.append((row.id, delivered[0]))
        except BaseException:
            # Stopped (or the database failed) mid-round: mark what went through if the
            # database answers at once, and let the stop or the error go on. Rows not
            # marked go again when their lease ends; the CRM dedupes them on their keys.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._mark_delivered(done), 2.0)
            raise
        await self._mark_delivered(done)
        return len(rows)

    async def _mark_delivered(self, done: list[tuple[int, str | None]]) -> None:
        """One transaction marks a round's deliveries; then the contacts' caches go."""
        if not done:
            return
        await self._store.delivered([row_id for row_id, _ in done], self._clock())
        self.delivered_count += len(done)
        for _, phone in done:
            if phone and self._on_contact_changed is not None:
                self._on_contact_changed(phone)

    async def refresh_status(self) -> None:
        """Re-read how many rows are failing (``run`` does it after every batch)."""
        failing, newest_error = await self._store.failing()
        self._failing = failing
        if not failing:
            self.last_error = ""
        elif not self.last_error:
            self.last_error = newest_error

    # -- one row ---------------------------------------------------------------------
    async def _deliver(self, row: PendingDelivery) -> tuple[str | None] | None:
        """Deliver one row; ``(phone,)`` when the CRM took it (the caller marks it), None
        when it failed (marked here)."""
        try:
            action = self._action(row)
        except ValidationError as exc:
            await self._reject(row, f"unreadable {row.kind} payload: {_short(exc)}")
            return None
        except ValueError as exc:
            await self._reject(row, str(exc))
            return None
        try:
            async with asyncio.timeout(self._deliver_timeout):
                phone = await action
        except CrmRejected as exc:
            await self._reject(row, str(exc))
        except CrmUnavailable as exc:
            await self._fail(row, str(exc) or type(exc).__name__)
        except TimeoutError:
            await self._fail(row, f"the CRM did not finish within {self._deliver_timeout:g} s")
        except StoreUnavailable:
            raise
        except Exception as exc:
            # A bug (ours or the adapter's), not the CRM's answer: keep the row, retry.
            log.exception("outbox: %s of call %s crashed", row.kind, row.call_id or "-")
            await self._fail(row, f"{type(exc).__name__}: {exc}")
        else:
            return (phone,)
        return None

    def _action(self, row: PendingDelivery) -> Coroutine[Any, Any, str | None]:
        """The coroutine that delivers ``row``, returning the phone it concerns (or None).
        Raises ValidationError/ValueError for a payload or kind it cannot read."""
        payload: Mapping[str, Any] = row.payload
        match row.kind:
            case "missed_call":
                missed = _MissedPayload.model_validate(payload)
                return self._missed(missed, row.key)
            case "called_back":
                back = _CalledBackPayload.model_validate(payload)
                return self._called_back(back, row.key)
            case "call_finished":
                finished = _FinishedPayload.model_validate(payload)
                return self._finished(finished, row.key)
            case _:
                raise ValueError(f"unknown outbox kind {row.kind!r}")

    async def _missed(self, p: _MissedPayload, key: str) -> str:
        await self._crm.missed_call(
            MissedCall(call_id=p.call_id, phone=p.phone, outcome=p.outcome, at=p.at,
                       due_at=p.due_at, responsible=p.responsible, line=p.line,
                       source=p.source, recording=p.recording),
            key,
        )
        return p.phone

    async def _called_back(self, p: _CalledBackPayload, key: str) -> str:
        await self._crm.called_back(p.phone, p.call_id, p.by, p.at, key)
        return p.phone

    async def _finished(self, p: _FinishedPayload, key: str) -> None:
        call = CallSummary(
            call_id=p.call_id, direction=p.direction, channel_id=p.channel_id, caller=p.caller,
            caller_raw=p.caller_raw, dialed=p.dialed, started_at=p.started_at, node=p.node,
            caller_name=p.caller_name, answered_at=p.answered_at, ended_at=p.ended_at,
            outcome=p.outcome, answered_by=p.answered_by, line=p.line, source=p.source,
        )
        await self._crm.log_call(call, p.recording_url, key)

    async def _fail(self, row: PendingDelivery, error: str) -> None:
        self._status_dirty = True
        delay = self.retry_delay(row.attempts)
        self.last_error = error
        log.warning("outbox: %s of call %s failed (attempt %d): %s; next attempt in %.0f s",
                    row.kind, row.call_id or "-", row.attempts + 1, error, delay)
        retry_at = self._clock() + timedelta(seconds=delay)
        await self._store.delivery_failed(row.id, error, retry_at)
        if self._next_due is not None:
            self._next_due = min(self._next_due, retry_at)

    async def _reject(self, row: PendingDelivery, error: str) -> None:
        self._status_dirty = True
        self.last_error = error
        log.error("outbox: %s of call %s refused for good (attempt %d): %s; marked failed, "
                  "retry it by hand once fixed", row.kind, row.call_id or "-",
                  row.attempts + 1, error)
        await self._store.delivery_rejected(row.id, error, self._clock())


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                     for e in exc.errors())
