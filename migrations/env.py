"""Alembic environment of pbxbrain, async-capable.

Two ways in:

* ``pbxbrain.adapters.migrate.migrate(url)`` opens the connection (and its transaction)
  itself and hands it over in ``config.attributes["connection"]``;
* the ``alembic`` command (authoring, ``alembic.ini`` at the repository root) takes the URL
  from ``-x url=…``, ``sqlalchemy.url`` or ``$PBXBRAIN_DATABASE_URL`` and runs the
  migrations in one transaction on pbxbrain's own async engine.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from pbxbrain.adapters.db import Base, create_engine, normalize_url

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("PBXBRAIN_DATABASE_URL")
    )
    if not url:
        raise RuntimeError(
            "no database URL: pass -x url=…, set sqlalchemy.url or $PBXBRAIN_DATABASE_URL"
        )
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_own_engine(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=normalize_url(_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
elif (given := config.attributes.get("connection")) is not None:
    _run(given)
else:
    asyncio.run(_run_on_own_engine(_url()))
