"""CRM: contacts, missed-call tasks, applied keys; delivery leases on the outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Written by hand for SQLite and PostgreSQL alike (see 0001 for the conventions):

* ``contacts``: the built-in CRM's clients, keyed by E.164 number, with their owner;
* ``tasks``: missed-call tasks; at most one *open* task per phone, enforced by the partial
  unique index ``uq_tasks_open_phone`` (``WHERE status = 'open'``, on both databases);
* ``crm_applied``: outbox keys the built-in CRM has applied (idempotent deliveries);
* ``outbox`` gains ``claimed_by``/``claimed_until`` (a node's lease on a row it delivers)
  and ``failed_at`` (the CRM refused the row for good; retried only by hand). Adding
  nullable columns is a plain ALTER TABLE on both databases; so is dropping them again
  (SQLite >= 3.35), as none of them is indexed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False, server_default=""),
        # A staff id; for the built-in CRM this is also the sticky manager of the client.
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("crm_ref", sa.String(128), nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("phone", name="pk_contacts"),
    )
    op.create_index("ix_contacts_owner", "contacts", ["owner"])

    op.create_table(
        "tasks",
        sa.Column("id", BIGINT_PK, nullable=False, autoincrement=True),
        sa.Column("phone", sa.String(64), nullable=False),
        sa.Column("responsible", sa.String(64), nullable=True),
        _ts("due_at"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("misses", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("last_call_id", sa.String(64), nullable=True),
        # When the first missed call of the task ended; the latest one.
        _ts("created_at"),
        _ts("last_missed_at"),
        _ts("closed_at", nullable=True),
        sa.Column("closed_by", sa.String(128), nullable=True),
        sa.Column("callback_delay_s", sa.Float(), nullable=True),
        sa.Column("crm_ref", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
    )
    op.create_index("ix_tasks_phone", "tasks", ["phone"])
    op.create_index("ix_tasks_responsible", "tasks", ["responsible"])
    op.create_index("ix_tasks_status_id", "tasks", ["status", "id"])
    op.create_index(
        "uq_tasks_open_phone",
        "tasks",
        ["phone"],
        unique=True,
        postgresql_where=sa.text("status = 'open'"),
        sqlite_where=sa.text("status = 'open'"),
    )

    op.create_table(
        "crm_applied",
        sa.Column("key", sa.String(255), nullable=False),
        _ts("applied_at"),
        sa.PrimaryKeyConstraint("key", name="pk_crm_applied"),
    )

    op.add_column("outbox", sa.Column("claimed_by", sa.String(64), nullable=True))
    op.add_column("outbox", _ts("claimed_until", nullable=True))
    op.add_column("outbox", _ts("failed_at", nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "failed_at")
    op.drop_column("outbox", "claimed_until")
    op.drop_column("outbox", "claimed_by")
    op.drop_table("crm_applied")
    op.drop_table("tasks")
    op.drop_table("contacts")
