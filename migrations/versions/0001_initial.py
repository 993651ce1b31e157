"""Initial schema: calls, their journal, recordings, the outbox, round-robin cursors.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Written by hand for SQLite and PostgreSQL alike:

* datetimes are ``timestamptz`` on PostgreSQL; on SQLite the application stores UTC;
* autoincrement keys are BIGSERIAL on PostgreSQL and INTEGER PRIMARY KEY (the rowid) on
  SQLite, hence the ``with_variant``;
* JSON is JSONB on PostgreSQL, JSON text on SQLite;
* constraint and index names follow ``pbxbrain.adapters.db.NAMING_CONVENTION``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DICT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("node", sa.String(64), nullable=False, server_default=""),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("channel_id", sa.String(128), nullable=False),
        sa.Column("caller", sa.String(64), nullable=False),
        sa.Column("caller_raw", sa.String(64), nullable=False),
        sa.Column("caller_name", sa.String(128), nullable=False, server_default=""),
        sa.Column("dialed", sa.String(64), nullable=False),
        sa.Column("line", sa.String(64), nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        _ts("started_at"),
        _ts("answered_at", nullable=True),
        sa.Column("answered_by", sa.String(128), nullable=True),
        _ts("ended_at", nullable=True),
        # NULL while the call is in progress.
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
    )
    op.create_index("ix_calls_channel_id", "calls", ["channel_id"])
    op.create_index("ix_calls_caller", "calls", ["caller"])
    op.create_index("ix_calls_dialed", "calls", ["dialed"])
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index(
        "ix_calls_open",
        "calls",
        ["started_at"],
        postgresql_where=sa.text("outcome IS NULL"),
        sqlite_where=sa.text("outcome IS NULL"),
    )

    op.create_table(
        "call_events",
        sa.Column("id", BIGINT_PK, nullable=False, autoincrement=True),
        sa.Column("call_id", sa.String(64), nullable=False),
        _ts("at"),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data", JSON_DICT, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_call_events"),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name="fk_call_events_call_id_calls", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_call_events_call_id_id", "call_events", ["call_id", "id"])

    op.create_table(
        "recordings",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        _ts("started_at"),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_recordings"),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name="fk_recordings_call_id_calls", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_recordings_call_id", "recordings", ["call_id"])

    op.create_table(
        "outbox",
        sa.Column("id", BIGINT_PK, nullable=False, autoincrement=True),
        # The idempotency key: the same message is never queued twice.
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=True),
        sa.Column("payload", JSON_DICT, nullable=False),
        _ts("created_at"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _ts("next_attempt_at"),
        _ts("delivered_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("key", name="uq_outbox_key"),
        # SET NULL: purging old calls must not drop messages still to deliver.
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name="fk_outbox_call_id_calls", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_outbox_call_id", "outbox", ["call_id"])
    # Partial: delivered rows pile up with past next_attempt_at; the poll skips them.
    op.create_index(
        "ix_outbox_next_attempt_at",
        "outbox",
        ["next_attempt_at"],
        postgresql_where=sa.text("delivered_at IS NULL"),
        sqlite_where=sa.text("delivered_at IS NULL"),
    )

    op.create_table(
        "rr_cursors",
        sa.Column("group_id", sa.String(64), nullable=False),
        # The next position to hand out.
        sa.Column("position", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("group_id", name="pk_rr_cursors"),
    )


def downgrade() -> None:
    op.drop_table("rr_cursors")
    op.drop_table("outbox")
    op.drop_table("recordings")
    op.drop_table("call_events")
    op.drop_table("calls")
