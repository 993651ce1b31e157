"""The CRM tables (contacts, missed-call tasks, applied keys) and the outbox's delivery side.

Models here share ``Base`` and ``UtcDateTime`` with ``adapters/db.py`` (which imports this
module, so ``Base.metadata`` always holds every table); the schema itself is migration
``0002_crm``.

``SqlOutbox`` is the ``OutboxStore`` port: delivery workers *claim* due rows with a lease
(``claimed_by``/``claimed_until``), so that several pbxbrain nodes on one PostgreSQL never
deliver the same row at once:

* PostgreSQL: ``UPDATE outbox SET claimed_by=…, claimed_until=… WHERE id IN (SELECT id …
  ORDER BY next_attempt_at, id LIMIT n FOR UPDATE SKIP LOCKED) RETURNING …``. Concurrent
  claimers skip each other's locked rows instead of queueing on them; once committed, the
  lease keeps the rows out of every other claim until it expires.
* SQLite: the same UPDATE … RETURNING, without row locks: the write transaction
  (``BEGIN IMMEDIATE``) holds the database's single write lock, so claims are serial.

A worker that dies mid-delivery leaves its rows leased: they are claimable again when the
lease expires (or at once when the same node restarts: ``release_claims``). The CRM side
is idempotent on the message key, so such a second delivery is harmless.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from functools import cached_property
from typing import Final

from sqlalchemy import (
    Float,
    Index,
    Integer,
    String,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import Executable

from pbxbrain.adapters.db import (
    Base,
    BigIntPK,
    Outbox,
    SqlAccess,
    UtcDateTime,
    executing,
    table_of,
)
from pbxbrain.domain.model import DeliveryFailure, PendingDelivery

__all__ = ["ContactRow", "CrmApplied", "SqlAccess", "SqlOutbox", "TaskRow"]

_MAX_ERROR_CHARS: Final = 2000


# --------------------------------------------------------------------------- models


class ContactRow(Base):
    """A client of the built-in CRM, keyed by E.164 number; ``owner`` is a staff id."""

    __tablename__ = "contacts"

    phone: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), server_default="")
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    crm_ref: Mapped[str | None] = mapped_column(String(128))
    source: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class TaskRow(Base):
    """A missed-call task: call ``phone`` back. At most one open task per phone.

    ``created_at`` is when the first missed call of the task ended, ``last_missed_at`` the
    latest one; ``callback_delay_s`` is from ``created_at`` to the call back.
    """

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    phone: Mapped[str] = mapped_column(String(64), index=True)
    responsible: Mapped[str | None] = mapped_column(String(64), index=True)
    due_at: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[str] = mapped_column(String(16))
    misses: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    last_call_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_missed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    closed_by: Mapped[str | None] = mapped_column(String(128))
    callback_delay_s: Mapped[float | None] = mapped_column(Float)
    crm_ref: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        # The rule "one open task per phone", enforced by the database itself: concurrent
        # missed calls from one number (even on two nodes) meet in one upsert.
        Index(
            "uq_tasks_open_phone",
            "phone",
            unique=True,
            postgresql_where=text("status = 'open'"),
            sqlite_where=text("status = 'open'"),
        ),
        Index("ix_tasks_status_id", "status", "id"),
    )


class CrmApplied(Base):
    """Outbox keys the built-in CRM has applied: a message delivered twice applies once."""

    __tablename__ = "crm_applied"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(UtcDateTime())


# --------------------------------------------------------------------------- the outbox


_DELIVERED: Final = (
    update(table_of(Outbox))
    .where(table_of(Outbox).c.id.in_(bindparam("b_ids", expanding=True)),
           table_of(Outbox).c.delivered_at.is_(None))
    .values(delivered_at=bindparam("b_at", type_=UtcDateTime()), last_error=None,
            claimed_by=None, claimed_until=None)
)


class SqlOutbox(SqlAccess):
    """``OutboxStore`` over the ``outbox`` table (rows are written by ``SqlCallStore``)."""

    @cached_property
    def _claim(self) -> Executable:
        """The claiming statement, built once: the outbox worker claims every few hundred
        milliseconds under load."""
        outbox = table_of(Outbox).c
        now = bindparam("b_now", type_=UtcDateTime())
        due = (
            select(outbox.id)
            .where(
                outbox.delivered_at.is_(None),
                outbox.failed_at.is_(None),
                outbox.next_attempt_at <= now,
                or_(outbox.claimed_until.is_(None), outbox.claimed_until <= now),
            )
            .order_by(outbox.next_attempt_at, outbox.id)
            .limit(bindparam("b_limit", type_=Integer()))
        )
        if self._dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        return (
            update(table_of(Outbox))
            .where(outbox.id.in_(due.scalar_subquery()))
            .values(claimed_by=bindparam("b_node"),
                    claimed_until=bindparam("b_until", type_=UtcDateTime()))
            .returning(outbox.id, outbox.key, outbox.kind, outbox.payload, outbox.attempts,
                       outbox.call_id, outbox.next_attempt_at)
        )

    async def claim_deliveries(
        self, node: str, now: datetime, limit: int = 20, lease_s: float = 120.0
    ) -> list[PendingDelivery]:
        """Lease up to ``limit`` due rows to ``node`` until ``now + lease_s``; oldest first.

        Due: not delivered, not failed for good, ``next_attempt_at <= now``, and no lease
        running at ``now``. Two claimers never get the same row while its lease runs.
        """
        if limit <= 0:
            return []
        params = {"b_now": now, "b_limit": limit, "b_node": node,
                  "b_until": now + timedelta(seconds=lease_s)}
        rows = await self._run(lambda conn: conn.execute(self._claim, params).all(),
                               write=True)
        rows = sorted(rows, key=lambda r: (r.next_attempt_at, r.id))
        return [
            PendingDelivery(
                id=r.id,
                key=r.key,
                kind=r.kind,
                payload=r.payload or {},
                attempts=r.attempts,
                call_id=r.call_id,
            )
            for r in rows
        ]

    async def delivered(self, delivery_ids: Collection[int], at: datetime) -> None:
        """Mark rows delivered (the first time only) and release their leases."""
        params = {"b_ids": list(delivery_ids), "b_at": at}
        await self._run(executing(_DELIVERED, params), write=True)

    async def delivery_failed(self, delivery_id: int, error: str, retry_at: datetime) -> None:
        """Count a failed attempt, keep its error, schedule the next one, release the lease."""
        await self._attempt_failed(delivery_id, error, next_attempt_at=retry_at)

    async def delivery_rejected(self, delivery_id: int, error: str, at: datetime) -> None:
        """Count a failed attempt and mark the row failed for good at ``at`` (no retry)."""
        await self._attempt_failed(delivery_id, error, failed_at=at)

    async def _attempt_failed(self, delivery_id: int, error: str, **then: datetime) -> None:
        """Count a failed attempt of an undelivered row, keep its error, release its
        lease, and set ``then`` (when to retry, or that it failed for good)."""
        async with self._tx(write=True) as conn:
            await conn.execute(
                update(Outbox)
                .where(Outbox.id == delivery_id, Outbox.delivered_at.is_(None))
                .values(
                    attempts=Outbox.attempts + 1,
                    last_error=error[:_MAX_ERROR_CHARS],
                    claimed_by=None,
                    claimed_until=None,
                    **then,
                )
            )

    async def release_claims(self, node: str) -> int:
        """Release every lease ``node`` holds on undelivered rows; returns how many."""
        async with self._tx(write=True) as conn:
            result = await conn.execute(
                update(Outbox)
                .where(Outbox.claimed_by == node, Outbox.delivered_at.is_(None))
                .values(claimed_by=None, claimed_until=None)
                .returning(Outbox.id)
            )
            return len(result.all())

    async def next_due_at(self) -> datetime | None:
        """When the next row becomes claimable (its attempt time, or its lease's end when
        later); None when nothing waits for delivery."""
        effective = case(
            (
                and_(
                    Outbox.claimed_until.is_not(None),
                    Outbox.claimed_until > Outbox.next_attempt_at,
                ),
                Outbox.claimed_until,
            ),
            else_=Outbox.next_attempt_at,
        )
        stmt = select(func.min(type_coerce(effective, UtcDateTime()))).where(
            Outbox.delivered_at.is_(None), Outbox.failed_at.is_(None)
        )
        async with self._tx(write=False) as conn:
            value: datetime | None = (await conn.execute(stmt)).scalar_one_or_none()
        return value

    async def failing(self) -> tuple[int, str]:
        """How many undelivered rows failed at least once, and the newest one's error."""
        failing = and_(Outbox.delivered_at.is_(None), Outbox.attempts > 0)
        async with self._tx(write=False) as conn:
            count = (
                await conn.execute(select(func.count()).select_from(Outbox).where(failing))
            ).scalar_one()
            error = (
                await conn.execute(
                    select(Outbox.last_error).where(failing).order_by(Outbox.id.desc()).limit(1)
                )
            ).scalar_one_or_none()
        return int(count), error or ""

    async def failed_deliveries(
        self, limit: int = 100, *, before_id: int | None = None
    ) -> list[DeliveryFailure]:
        """Undelivered rows that failed at least once (retrying or failed for good), newest
        first; ``before_id`` (the last id of the previous page) pages on."""
        page = [] if before_id is None else [Outbox.id < before_id]
        stmt = (
            select(
                Outbox.id,
                Outbox.key,
                Outbox.kind,
                Outbox.call_id,
                Outbox.attempts,
                Outbox.last_error,
                Outbox.created_at,
                Outbox.next_attempt_at,
                Outbox.failed_at,
            )
            .where(Outbox.delivered_at.is_(None), Outbox.attempts > 0, *page)
            .order_by(Outbox.id.desc())
            .limit(limit)
        )
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            DeliveryFailure(
                id=r.id,
                key=r.key,
                kind=r.kind,
                call_id=r.call_id,
                attempts=r.attempts,
                last_error=r.last_error or "",
                created_at=r.created_at,
                next_attempt_at=r.next_attempt_at,
                failed_at=r.failed_at,
            )
            for r in rows
        ]

    async def retry_now(self, delivery_id: int) -> bool:
        """Make an undelivered row due now, also one failed for good, and drop its lease.

        False when there is no such undelivered row. The next worker wake-up delivers it
        (poke the worker to make that immediate).
        """
        async with self._tx(write=True) as conn:
            result = await conn.execute(
                update(Outbox)
                .where(Outbox.id == delivery_id, Outbox.delivered_at.is_(None))
                .values(
                    failed_at=None,
                    next_attempt_at=self._clock(),
                    claimed_by=None,
                    claimed_until=None,
                )
                .returning(Outbox.id)
            )
            return result.first() is not None
