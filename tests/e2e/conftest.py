"""Fixtures for end-to-end tests: the real Asterisk sandbox, SIPp, a real pbxbrain process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import pytest

from pbxbrain.adapters.crm_builtin import BuiltinCrm
from pbxbrain.adapters.db import SqlCallStore, create_engine
from pbxbrain.domain.model import (
    CallSummary,
    Contact,
    EventKind,
    JournalEntry,
    RecordingInfo,
    Task,
)
from tests.support.asterisk import REPO, Sandbox, asterisk_ready, sandbox, wait_for
from tests.support.daemon import Daemon, free_port

pytestmark = pytest.mark.asterisk

T = TypeVar("T")


@pytest.fixture(scope="session")
def asterisk() -> Iterator[Sandbox]:
    """The sandbox Asterisk, started once per test session (built on first use)."""
    proc = sandbox("start", check=False)
    assert proc.returncode == 0, f"sandbox did not start:\n{proc.stdout}\n{proc.stderr}"
    box = Sandbox(Path(sandbox("root").stdout.strip()))
    box.install_scenarios()
    yield box
    sandbox("stop", check=False)


@pytest.fixture
def live_asterisk(asterisk: Sandbox) -> Iterator[Sandbox]:
    """The sandbox, running (restarted if a previous test killed it); idle after the test."""
    if not asterisk_ready():
        sandbox("start")
    asterisk.wait_idle()
    yield asterisk
    if asterisk_ready():
        asterisk.wait_idle()


@contextlib.contextmanager
def running_daemon(tmp_path: Path, config: str, *, env: Mapping[str, str] | None = None,
                   ready: Collection[str] | None = None) -> Iterator[Daemon]:
    """pbxbrain running ``tests/e2e/<config>``, with its own SQLite database, recordings
    directory and HTTP port; stopped with SIGTERM afterwards (it must exit 0).

    ``env`` overrides the environment; ``ready``: the health checks to wait for (all)."""
    port = free_port()
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'pbxbrain.db'}"
    d = Daemon(
        config=REPO / "tests" / "e2e" / config,
        database_url=db_url,
        port=port,
        recordings=tmp_path / "recordings",
        log_path=tmp_path / "pbxbrain.log",
        env={
            "PBXBRAIN_DATABASE": db_url,
            "PBXBRAIN_HTTP_LISTEN": f"127.0.0.1:{port}",
            "PBXBRAIN_RECORDINGS_DIR": str(tmp_path / "recordings"),
            "PBXBRAIN_ASTERISK_SPOOL": str(asterisk_spool()),
            "PBXBRAIN_ARI_PASSWORD": "pbxbrain-ari-secret",
            "PBXBRAIN_AMI_SECRET": "pbxbrain-ami-secret",
            **(env or {}),
        },
    )
    d.start()
    try:
        d.wait_ready(only=ready)
        yield d
    finally:
        code = d.stop()
        print(d.log_tail(200))
    assert code == 0, f"pbxbrain exited {code} on SIGTERM"


@pytest.fixture
def daemon(tmp_path: Path, live_asterisk: Sandbox) -> Iterator[Daemon]:
    """pbxbrain running tests/e2e/pbxbrain.yaml."""
    with running_daemon(tmp_path, "pbxbrain.yaml") as d:
        yield d


class JournalReader:
    """Reads a daemon's database the way the API will: through SqlCallStore."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _run(self, query: Callable[[SqlCallStore], Awaitable[T]]) -> T:
        async def go() -> T:
            store = SqlCallStore.from_url(self.url)
            try:
                return await query(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def calls(self, number: str | None = None) -> list[CallSummary]:
        return self._run(lambda s: s.list_calls(number=number))

    def journal(self, call_id: str) -> list[JournalEntry]:
        return self._run(lambda s: s.journal(call_id))

    def recordings(self, call_id: str) -> list[RecordingInfo]:
        return self._run(lambda s: s.recordings(call_id))

    def manager_of(self, phone: str) -> str | None:
        return self._run(lambda s: s.manager_of(phone))

    def _crm(self, query: Callable[[BuiltinCrm], Awaitable[T]]) -> T:
        async def go() -> T:
            engine = create_engine(self.url)
            try:
                return await query(BuiltinCrm(engine, default_region="RU"))
            finally:
                await engine.dispose()

        return asyncio.run(go())

    def contact(self, phone: str) -> Contact | None:
        return self._crm(lambda crm: crm.find_contact(phone))

    def tasks(self, phone: str) -> list[Task]:
        return self._crm(lambda crm: crm.list_tasks(phone=phone))

    def import_contacts(self, rows: list[dict[str, str]]) -> None:
        report = self._crm(lambda crm: crm.import_contacts(rows))
        assert not report.errors, report

    def wait_task(self, phone: str, misses: int = 1, timeout_s: float = 15.0) -> Task:
        """The number's task once the outbox delivered ``misses`` misses to it."""
        def delivered() -> Task | None:
            tasks = [t for t in self.tasks(phone) if t.misses >= misses]
            return tasks[0] if tasks else None

        return wait_for(f"a missed-call task for {phone}", delivered, timeout_s)

    def wait_closed_call(self, number: str, timeout_s: float = 15.0) -> CallSummary:
        """The newest call from ``number`` once it has an outcome."""
        def closed() -> CallSummary | None:
            calls = [c for c in self.calls(number) if c.outcome is not None]
            return calls[0] if calls else None

        return wait_for(f"a closed call from {number} in the journal", closed, timeout_s)


def call_id_once(journal: JournalReader, number: str, kind: EventKind) -> str:
    """The id of ``number``'s newest call once its journal has an entry of ``kind``."""
    def seen() -> str | None:
        calls = journal.calls(number)
        if calls and any(e.kind is kind for e in journal.journal(calls[0].call_id)):
            return calls[0].call_id
        return None

    return wait_for(f"{kind.value} in the journal of {number}'s call", seen)


def asterisk_spool() -> Path:
    """Asterisk's recording spool, as this host sees it (inside the sandbox's chroot)."""
    return Path(sandbox("root").stdout.strip()) / "var/spool/asterisk/recording"


def assert_recorded(daemon: Daemon, journal: JournalReader, call_id: str, low_s: float,
                    high_s: float, *, via: str = "mixmonitor", taken: str = "moved") -> None:
    """The call has one recording, made ``via`` MixMonitor or the ARI bridge recording and
    ``taken`` from Asterisk's spool (``moved`` on this host, or ``fetched`` through ARI),
    no longer in that spool, on disk as the database says, of real audio lasting
    between ``low_s`` and ``high_s`` seconds (the talk time, give or take signalling: the
    caller's talk starts when he is answered, the recording once both are bridged, which
    on a loaded machine can be most of a second later)."""
    (rec,) = journal.recordings(call_id)
    (started,) = [e.data for e in journal.journal(call_id)
                  if e.kind is EventKind.RECORDING_STARTED]
    assert started["via"] == via, started
    (finished,) = [e.data for e in journal.journal(call_id)
                   if e.kind is EventKind.RECORDING_FINISHED]
    assert finished["taken"] == taken, finished
    assert asterisk_spool().is_dir()
    assert not list(asterisk_spool().glob(f"{rec.name}.*")), "left in Asterisk's spool"
    path = daemon.recordings / rec.path
    assert path.is_file(), rec
    assert rec.size_bytes == path.stat().st_size, rec
    assert rec.duration_s is not None, rec
    assert low_s <= rec.duration_s <= high_s, rec


@pytest.fixture
def journal(daemon: Daemon) -> JournalReader:
    return JournalReader(daemon.database_url)
