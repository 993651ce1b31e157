"""Alembic, configured in code: ``await migrate(url)`` brings a database to the newest schema.

No ini file is needed at run time. The scripts are found, in this order, at:

1. ``$PBXBRAIN_MIGRATIONS`` (a directory holding ``env.py`` and ``versions/``);
2. ``<repo>/migrations`` next to ``src/`` (editable installs, the repository checkout);
3. ``pbxbrain/migrations`` inside the installed package (for wheels that ship them).

For authoring revisions, ``alembic.ini`` at the repository root points the ``alembic``
command at the same scripts; ``migrations/env.py`` takes the URL from ``-x url=…``,
``sqlalchemy.url`` or ``$PBXBRAIN_DATABASE_URL``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from pbxbrain.adapters.db import (
    SQLITE_BEGIN_OPTION,
    as_store_unavailable,
    create_engine,
    describe_url,
    dispose_engine,
)

__all__ = [
    "MIGRATIONS_ENV",
    "alembic_config",
    "current_revision",
    "head_revision",
    "migrate",
    "migrations_dir",
]

log = logging.getLogger(__name__)

MIGRATIONS_ENV: Final = "PBXBRAIN_MIGRATIONS"
# Any constant will do: it only has to be the same for every pbxbrain node.
_PG_MIGRATION_LOCK: Final = 0x7062_7862_7261_696E % (2**63)  # "pbxbrain"


def migrations_dir() -> Path:
    """The directory of pbxbrain's Alembic scripts (see the module docstring)."""
    override = os.environ.get(MIGRATIONS_ENV)
    if override:
        path = Path(override).expanduser()
        if not (path / "env.py").is_file():
            raise FileNotFoundError(f"${MIGRATIONS_ENV}={override!r} has no env.py")
        return path
    here = Path(__file__).resolve()
    candidates = [
        here.parents[3] / "migrations",  # <repo>/src/pbxbrain/adapters/migrate.py
        here.parents[1] / "migrations",  # <site-packages>/pbxbrain/migrations
    ]
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    raise FileNotFoundError(
        "pbxbrain's migrations were not found (looked in "
        + ", ".join(str(p) for p in candidates)
        + f"); set ${MIGRATIONS_ENV} to the migrations directory"
    )


def alembic_config(script_location: Path | None = None) -> Config:
    """An Alembic Config for pbxbrain's scripts, without any ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location or migrations_dir()))
    return cfg


def head_revision() -> str:
    """The newest revision the scripts know."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("pbxbrain's migrations have no revisions")
    return head


def _upgrade(conn: Connection, cfg: Config) -> str | None:
    if conn.dialect.name == "postgresql":
        # Several nodes starting at once: one migrates, the others wait and find head.
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
    return MigrationContext.configure(conn).get_current_revision()


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def migrate(url: str) -> str:
    """Apply every pending migration (``upgrade head``) and return the database's revision.

    Runs in one transaction (PostgreSQL and SQLite both have transactional DDL), so a
    failed migration leaves the schema as it was. On PostgreSQL an advisory lock makes
    nodes that start together migrate one after the other. A database that cannot be
    reached raises ``StoreUnavailable``; a failing migration raises as it is.
    """
    cfg = alembic_config()
    engine = create_engine(url)
    try:
        # SQLite: take the write lock up front, so a concurrent migrate waits its turn.
        async with engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"}).begin() as conn:
            revision = await conn.run_sync(_upgrade, cfg)
    except Exception as exc:
        unavailable = as_store_unavailable(exc, url)
        if unavailable is None or unavailable is exc:
            raise
        raise unavailable from exc
    finally:
        await dispose_engine(engine)
    if revision is None:
        raise RuntimeError(f"database {describe_url(url)} has no revision after upgrade")
    log.info("database %s is at revision %s", describe_url(url), revision)
    return revision


async def current_revision(url: str) -> str | None:
    """The database's revision, or None when it was never migrated."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current)
    except Exception as exc:
        unavailable = as_store_unavailable(exc, url)
        if unavailable is None or unavailable is exc:
            raise
        raise unavailable from exc
    finally:
        await dispose_engine(engine)
