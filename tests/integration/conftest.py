"""Fixtures of the integration tests: a freshly migrated database per test, on both backends.

``store_url`` runs each test twice: on a new SQLite file, and on PostgreSQL, where one
database serves the session and each test gets its public schema dropped, recreated and
migrated again (~70 ms; CREATE DATABASE … TEMPLATE takes ~270 ms). The PostgreSQL server
is started only when a PostgreSQL test runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pbxbrain.adapters.db import SqlCallStore, create_engine
from pbxbrain.adapters.migrate import migrate
from tests.support.postgres import PostgresServer, running_postgres

PG_DATABASE = "pbxbrain_test"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session, with an empty ``PG_DATABASE``."""
    with running_postgres() as server:
        asyncio.run(server.execute(f"CREATE DATABASE {PG_DATABASE}"))
        yield server


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on."""
    name: str = request.param
    return name


@pytest.fixture
def pg(backend: str, request: pytest.FixtureRequest) -> PostgresServer | None:
    """The PostgreSQL server when the test runs on PostgreSQL, else None."""
    if backend != "postgres":
        return None
    # A sync fixture, set up outside the event loop that runs the async ones.
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server


@pytest.fixture
async def blank_url(pg: PostgresServer | None, tmp_path: Path) -> str:
    """An empty database that was never migrated."""
    if pg is None:
        return f"sqlite+aiosqlite:///{tmp_path / 'blank.db'}"
    await pg.reset_database(PG_DATABASE)
    return pg.url(PG_DATABASE)


@pytest.fixture
async def store_url(blank_url: str) -> str:
    """A fresh database at the newest schema."""
    await migrate(blank_url)
    return blank_url


@pytest.fixture
async def pg_store_url(pg_server: PostgresServer) -> str:
    """A fresh PostgreSQL database at the newest schema, for PostgreSQL-only tests."""
    await pg_server.reset_database(PG_DATABASE)
    url = pg_server.url(PG_DATABASE)
    await migrate(url)
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlCallStore]:
    """A store on a fresh database."""
    s = SqlCallStore(create_engine(store_url))
    yield s
    await s.close()
