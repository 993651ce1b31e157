"""Sticky managers: the manager each caller was assigned by the sticky strategy.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

``caller_managers`` maps a caller's E.164 number to the staff id who took (or was made
responsible for) his first call in a sticky department, with that call's id. It is
pbxbrain's own memory, so stickiness works with any CRM and while the CRM is down; a
contact's owner in the CRM, when known, still comes first (``service.Router``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "caller_managers",
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("staff_id", sa.String(64), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("phone", name="pk_caller_managers"),
    )


def downgrade() -> None:
    op.drop_table("caller_managers")
