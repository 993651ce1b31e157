"""A throwaway PostgreSQL server for tests, from Debian's binaries.

``running_postgres()`` makes a cluster in a temporary directory (owned by ``postgres``
when the tests run as root, since ``initdb`` refuses root), listens on a free TCP port on
127.0.0.1 and on a unix socket in that directory, trusts every local connection, and
removes everything on exit. Durability is switched off: it is a test server.

A missing PostgreSQL fails the tests (it does not skip them): ``apt-get install postgresql``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

__all__ = ["PostgresServer", "find_pg_bindir", "free_tcp_port", "running_postgres"]

PG_BINDIR_ENV = "PBXBRAIN_PG_BINDIR"
_INSTALL_HINT = (
    "PostgreSQL server binaries are needed for the PostgreSQL tests: "
    "apt-get install postgresql (or set $PBXBRAIN_PG_BINDIR to the directory of pg_ctl)"
)


def find_pg_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (or ``$PBXBRAIN_PG_BINDIR``)."""
    override = os.environ.get(PG_BINDIR_ENV)
    if override:
        candidates = [Path(override)]
    else:
        found = Path("/usr/lib/postgresql").glob("*/bin")

        def version(p: Path) -> tuple[int, ...]:
            return tuple(int(n) for n in re.findall(r"\d+", p.parent.name)) or (0,)

        candidates = sorted(found, key=version, reverse=True)
    for bindir in candidates:
        if (bindir / "pg_ctl").is_file() and (bindir / "initdb").is_file():
            return bindir
    pytest.fail(f"{_INSTALL_HINT}; none found in {candidates or '/usr/lib/postgresql/*/bin'}")


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """A running throwaway cluster; superuser ``postgres``, trust authentication."""

    bindir: Path
    root: Path
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"
    _as_postgres: list[str] = field(default_factory=list)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, database: str = "postgres") -> str:
        """An SQLAlchemy asyncpg URL of ``database`` on this server."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    async def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run statements one by one, outside any transaction, as the superuser."""
        engine = create_async_engine(
            self.url(database), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            async with engine.connect() as conn:
                for sql in statements:
                    await conn.execute(text(sql))
        finally:
            await engine.dispose()

    async def reset_database(self, database: str) -> None:
        """Empty ``database``: cut its other sessions, drop and recreate the public schema."""
        await self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{database}' AND pid <> pg_backend_pid()",
            "DROP SCHEMA IF EXISTS public CASCADE",
            "CREATE SCHEMA public",
            database=database,
        )

    def pg_ctl(self, *args: str) -> None:
        """Run ``pg_ctl`` on this cluster (as ``postgres`` when we are root)."""
        _run([*self._as_postgres, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args])

    def stop(self) -> None:
        """Stop the server (fast shutdown: running sessions are cut)."""
        self.pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        """(Re)start the server on the same port."""
        options = " ".join(
            [
                f"-p {self.port}",
                f"-c listen_addresses={self.host}",
                f"-c unix_socket_directories={self.socket_dir}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        self.pg_ctl("-w", "-t", "60", "-l", str(self.root / "server.log"), "-o", options, "start")


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL, yield it, stop it and delete its files."""
    bindir = find_pg_bindir()
    as_postgres: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="pbxbrain-pg-"))
    try:
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(f"{_INSTALL_HINT} (there is no 'postgres' user)")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            as_postgres = ["runuser", "-u", "postgres", "--"]
        server = PostgresServer(bindir, root, free_tcp_port(), _as_postgres=as_postgres)
        _run(
            [
                *as_postgres,
                str(bindir / "initdb"),
                "-D",
                str(server.datadir),
                "-U",
                server.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        server.start()
        try:
            yield server
        finally:
            with contextlib.suppress(RuntimeError):
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
