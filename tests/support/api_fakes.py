"""Hand-written fakes of the ports the HTTP API uses, and a config for API tests.

``FakeStore`` holds a few calls (newest first like the real store, paging by ``before_id``);
``FakeClickToCall`` records what it was asked (the "no channel is created in Asterisk"
check of a refused request is "``requests`` is empty"); ``FakeClock`` is the monotonic
clock of the rate limits, moved by hand. ``FakeContactBook`` is the built-in CRM's contacts
and tasks in memory, ``FakeOutbox`` the failed deliveries.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import re
import textwrap
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pbxbrain.adapters.recordings import RecordingDirectory
from pbxbrain.api.app import ApiDeps, make_http_app
from pbxbrain.api.events import EventBus
from pbxbrain.config import Config, parse_config
from pbxbrain.domain.model import (
    CallOutcome,
    CallSummary,
    DeliveryFailure,
    Direction,
    EventKind,
    ImportReport,
    ImportRowError,
    InboundCall,
    JournalEntry,
    OriginateRequest,
    OutboxMessage,
    RecordingInfo,
    Task,
    TaskStatus,
)
from pbxbrain.ports import ClickToCallRefused, ClickToCallUnavailable

CRM_TOKEN = "crm-0123456789abcdef"  # originate, read, recordings, contacts, admin
READER_TOKEN = "reader-0123456789abcdef"  # read
WEBSITE_TOKEN = "website-0123456789abcdef"  # callback
TOKENS = {"crm": CRM_TOKEN, "reader": READER_TOKEN, "website": WEBSITE_TOKEN}


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def api_config(extra_http: str = "", dial_allowed: str = '["+7"]',
               region: str = "RU") -> Config:
    """A config with three tokens, four managers (one without a desk phone)."""
    text = textwrap.dedent(f"""\
        asterisk:
          ari: {{user: pbxbrain, password: secret}}
          ami: {{user: pbxbrain, secret: secret}}
          trunk: pstn
        http:
          tokens:
            - {{name: crm, sha256: "{sha(CRM_TOKEN)}",
               scopes: [originate, read, recordings, contacts, admin]}}
            - {{name: reader, sha256: "{sha(READER_TOKEN)}", scopes: [read]}}
            - {{name: website, sha256: "{sha(WEBSITE_TOKEN)}", scopes: [callback]}}
        """) + textwrap.indent(textwrap.dedent(extra_http), "  ") + textwrap.dedent(f"""\
        numbers: {{default_region: {region}, dial_allowed: {dial_allowed}}}
        staff:
          ivanov:  {{name: Ivan Ivanov, short: "101", phone: PJSIP/101}}
          petrov:  {{name: Petr Petrov, short: "102", phone: PJSIP/102}}
          sidorov: {{name: Sid Sidorov, short: "103", phone: PJSIP/103}}
          mobile:  {{name: Only Mobile, short: "109", mobile: "+79161234567"}}
        departments:
          sales: {{members: [ivanov, petrov, sidorov, mobile], caller_id: "+74951234567"}}
        """)
    return parse_config(text, env={})


class FakeClock:
    """Monotonic seconds, moved by ``advance``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


T0 = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)


def make_call(n: int, *, answered_by: str | None = "ivanov", line: str | None = "+74951234567",
              caller: str = "+79161234567", outcome: CallOutcome | None = CallOutcome.ANSWERED,
              ) -> CallSummary:
    """Call number ``n``: started ``n`` minutes after T0."""
    started = T0 + timedelta(minutes=n)
    return CallSummary(
        call_id=f"call{n:04d}", direction=Direction.INBOUND, channel_id=f"chan-{n}",
        caller=caller, caller_raw=caller.lstrip("+"), dialed=line or "200", started_at=started,
        answered_at=started + timedelta(seconds=5) if answered_by else None,
        ended_at=started + timedelta(seconds=65) if outcome else None, outcome=outcome,
        answered_by=answered_by, line=line, source="website" if line else None)


@dataclass
class FakeStore:
    """A CallStore holding ``calls``, their journals and recordings; writes are refused."""

    calls: list[CallSummary] = field(default_factory=list)
    journals: dict[str, list[JournalEntry]] = field(default_factory=dict)
    recs: dict[str, RecordingInfo] = field(default_factory=dict)
    list_requests: list[dict[str, object]] = field(default_factory=list)

    async def ping(self) -> None:
        return None

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        yield

    async def open_call(self, call: InboundCall, *, line: str | None = None,
                        source: str | None = None) -> None:
        raise NotImplementedError

    async def append(self, entry: JournalEntry) -> None:
        raise NotImplementedError

    async def append_many(self, entries: Sequence[JournalEntry]) -> None:
        raise NotImplementedError

    async def mark_answered(self, call_id: str, at: datetime, by: str | None) -> None:
        raise NotImplementedError

    async def close_call(self, call_id: str, outcome: CallOutcome, ended_at: datetime, *,
                         outbox: Sequence[OutboxMessage] = (),
                         data: dict[str, object] | None = None) -> None:
        raise NotImplementedError

    async def get_call(self, call_id: str) -> CallSummary | None:
        return next((c for c in self.calls if c.call_id == call_id), None)

    async def journal(self, call_id: str) -> list[JournalEntry]:
        return list(self.journals.get(call_id, []))

    async def list_calls(self, *, since: datetime | None = None, until: datetime | None = None,
                         number: str | None = None, outcome: CallOutcome | None = None,
                         limit: int = 100, before_id: str | None = None) -> list[CallSummary]:
        self.list_requests.append({"since": since, "until": until, "number": number,
                                   "outcome": outcome, "limit": limit, "before_id": before_id})
        rows = sorted(self.calls, key=lambda c: (c.started_at, c.call_id), reverse=True)
        if before_id is not None:
            cursor = next((c for c in rows if c.call_id == before_id), None)
            if cursor is None:
                return []
            rows = [c for c in rows
                    if (c.started_at, c.call_id) < (cursor.started_at, cursor.call_id)]
        rows = [c for c in rows
                if (since is None or c.started_at >= since)
                and (until is None or c.started_at < until)
                and (number is None or number in (c.caller, c.dialed))
                and (outcome is None or c.outcome == outcome)]
        return rows[:max(0, limit)]

    async def open_calls(self) -> list[CallSummary]:
        return [c for c in self.calls if c.outcome is None]

    async def add_recording(self, rec: RecordingInfo) -> None:
        self.recs[rec.recording_id] = rec

    async def finish_recording(self, recording_id: str, duration_s: float | None,
                               size_bytes: int | None) -> None:
        raise NotImplementedError

    async def recordings(self, call_id: str) -> list[RecordingInfo]:
        return [r for r in self.recs.values() if r.call_id == call_id]

    async def get_recording(self, recording_id: str) -> RecordingInfo | None:
        return self.recs.get(recording_id)

    async def advance_cursor(self, group: str, size: int) -> int:
        raise NotImplementedError

    async def manager_of(self, phone: str) -> str | None:
        raise NotImplementedError

    async def remember_manager(self, phone: str, staff_id: str, call_id: str,
                               at: datetime) -> None:
        raise NotImplementedError


@dataclass
class FakeClickToCall:
    """Records every start; ``busy`` says how many calls each manager has in progress."""

    requests: list[OriginateRequest] = field(default_factory=list)
    busy: dict[str, int] = field(default_factory=dict)
    fail: Exception | None = None
    keep_active: bool = False  # a started call stays in progress (active_for counts it)

    async def start(self, request: OriginateRequest) -> str:
        if self.fail is not None:
            raise self.fail
        self.requests.append(request)
        if self.keep_active:
            self.busy[request.staff_id] = self.busy.get(request.staff_id, 0) + 1
        return f"ctc{len(self.requests):04d}"

    def active_for(self, staff_id: str) -> int:
        return self.busy.get(staff_id, 0)


class FakeContactBook:
    """The built-in CRM's contacts and tasks in memory.

    Imports check a little of what the real one checks (a phone is ``+`` and 7-15 digits,
    an owner is a staff id, a CSV header names a phone column) and count a known phone as
    updated. ``imports`` records what each import got; ``fail`` is raised by every method.
    Task ids are numbers, listed newest (highest) first.
    """

    def __init__(self, staff: Collection[str]) -> None:
        self.staff = frozenset(staff)
        self.contacts: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, Task] = {}
        self.imports: list[tuple[str | list[dict[str, Any]], bool]] = []
        self.closed: list[tuple[str, str]] = []
        self.fail: Exception | None = None

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def import_contacts(self, rows: str | Sequence[Mapping[str, Any]], *,
                              dry_run: bool = False) -> ImportReport:
        self._check()
        self.imports.append((rows if isinstance(rows, str) else [dict(r) for r in rows],
                             dry_run))
        if isinstance(rows, str):
            try:
                reader = csv.reader(io.StringIO(rows.strip(), newline=""))
                header = next(reader, [])
                records = [dict(zip(header, cells, strict=False)) for cells in reader]
            except csv.Error as exc:
                header, records = [], []
                problem = f"not CSV: {exc}"
            else:
                problem = "no phone column"
            if "phone" not in header:
                return ImportReport(total=0, dry_run=dry_run, errors=(
                    ImportRowError(0, "header", problem),))
        else:
            records = [dict(r) for r in rows]
        errors: list[ImportRowError] = []
        created = updated = 0
        for number, record in enumerate(records, start=1):
            phone, owner = record.get("phone", ""), record.get("owner") or None
            if not re.fullmatch(r"\+[0-9]{7,15}", phone):
                errors.append(ImportRowError(number, "phone", f"'{phone}' is not a valid "
                                                              f"phone number"))
                continue
            if owner is not None and owner not in self.staff:
                errors.append(ImportRowError(number, "owner", f"unknown manager '{owner}'"))
                continue
            if phone in self.contacts:
                updated += 1
            else:
                created += 1
            if not dry_run:
                self.contacts.setdefault(phone, {}).update(
                    {k: v for k, v in record.items() if v})
        return ImportReport(total=len(records), created=created, updated=updated,
                            errors=tuple(errors), dry_run=dry_run)

    async def list_tasks(self, *, status: TaskStatus | None = None,
                         responsible: str | None = None, phone: str | None = None,
                         limit: int = 100, before: str | None = None) -> list[Task]:
        self._check()
        if before is not None and not before.isdigit():
            return []
        rows = sorted(self.tasks.values(), key=lambda t: int(t.task_id), reverse=True)
        return [t for t in rows
                if (status is None or t.status == status)
                and (responsible is None or t.responsible == responsible)
                and (phone is None or t.phone == phone)
                and (before is None or int(t.task_id) < int(before))][:max(0, limit)]

    async def get_task(self, task_id: str) -> Task | None:
        self._check()
        return self.tasks.get(task_id)

    async def close_task(self, task_id: str, by: str) -> Task | None:
        self._check()
        task = self.tasks.get(task_id)
        if task is None:
            return None
        self.closed.append((task_id, by))
        if task.status == TaskStatus.OPEN:
            task = self.tasks[task_id] = dataclasses.replace(
                task, status=TaskStatus.DONE, closed_at=T0 + timedelta(hours=1), closed_by=by)
        return task


class FakeOutbox:
    """Failed deliveries by id; ``retry_now`` knows only them (``retried`` lists it)."""

    def __init__(self) -> None:
        self.rows: dict[int, DeliveryFailure] = {}
        self.retried: list[int] = []
        self.requests: list[tuple[int, int | None]] = []
        self.fail: Exception | None = None

    async def failed_deliveries(self, limit: int = 100, *,
                                before_id: int | None = None) -> list[DeliveryFailure]:
        if self.fail is not None:
            raise self.fail
        self.requests.append((limit, before_id))
        rows = sorted(self.rows.values(), key=lambda r: r.id, reverse=True)
        return [r for r in rows if before_id is None or r.id < before_id][:max(0, limit)]

    async def retry_now(self, delivery_id: int) -> bool:
        if self.fail is not None:
            raise self.fail
        if delivery_id not in self.rows:
            return False
        self.retried.append(delivery_id)
        return True


def make_task(n: int, *, status: TaskStatus = TaskStatus.OPEN, responsible: str = "ivanov",
              phone: str = "+79161234567") -> Task:
    """Task number ``n``, created ``n`` minutes after T0."""
    created = T0 + timedelta(minutes=n)
    done = status == TaskStatus.DONE
    return Task(task_id=str(n), phone=phone, responsible=responsible,
                due_at=created + timedelta(minutes=15), status=status, created_at=created,
                misses=n, last_call_id=f"call{n:04d}",
                closed_at=created + timedelta(minutes=5) if done else None,
                closed_by=responsible if done else None,
                callback_delay_s=300.0 if done else None)


def make_failure(n: int, *, failed: bool = False) -> DeliveryFailure:
    """Delivery ``n``: a missed call's message that failed ``n`` times."""
    created = T0 + timedelta(minutes=n)
    return DeliveryFailure(id=n, key=f"missed:call{n:04d}", kind="missed_call",
                           call_id=f"call{n:04d}", attempts=n,
                           last_error="CRM said 400" if failed else "CRM said 503",
                           created_at=created, next_attempt_at=created + timedelta(minutes=10),
                           failed_at=created + timedelta(minutes=1) if failed else None)


def seed_crm(book: FakeContactBook, outbox: FakeOutbox) -> None:
    """Tasks 1-5 (4 and 5 done; 2 and 5 petrov's; 3 of another phone) and task 42 (the
    document's example); deliveries 1-4 (2 failed for good) and 12 (the example)."""
    for n in range(1, 6):
        book.tasks[str(n)] = make_task(
            n, status=TaskStatus.DONE if n >= 4 else TaskStatus.OPEN,
            responsible="petrov" if n in (2, 5) else "ivanov",
            phone="+74959876543" if n == 3 else "+79161234567")
    book.tasks["42"] = make_task(42)
    for n in (1, 2, 3, 4, 12):
        outbox.rows[n] = make_failure(n, failed=n == 2)


WAV_BYTES = bytes(range(256)) * 4  # 1024 bytes of known content


def seed(store: FakeStore, recordings_dir: Path) -> None:
    """Five calls (call0001..call0005), a journal and a recording (rec-1, 1024 bytes) for
    call0003, and the examples of the OpenAPI document (c0ffee00c0ffee00)."""
    store.calls.extend([
        make_call(1), make_call(2, answered_by="petrov"),
        make_call(3), make_call(4, answered_by=None, outcome=CallOutcome.MISSED),
        make_call(5, line="+74959876543", answered_by="petrov"),
    ])
    store.calls.append(dataclasses.replace(make_call(6), call_id="c0ffee00c0ffee00"))
    store.journals["call0003"] = [
        JournalEntry("call0003", T0 + timedelta(minutes=3), EventKind.ENTERED,
                     {"dialed": "+74951234567"}),
        JournalEntry("call0003", T0 + timedelta(minutes=3, seconds=5), EventKind.ANSWERED,
                     {"by": "ivanov"}),
    ]
    day = recordings_dir / "2027" / "03" / "01"
    day.mkdir(parents=True, exist_ok=True)
    (day / "rec-1.wav").write_bytes(WAV_BYTES)
    (day / "empty.wav").write_bytes(b"")
    (day / "c0ffee00c0ffee00-bridge.wav").write_bytes(WAV_BYTES)
    for rec_id, call_id, path in (("rec-1", "call0003", "2027/03/01/rec-1.wav"),
                                  ("empty", "call0003", "2027/03/01/empty.wav"),
                                  ("gone", "call0003", "2027/03/01/gone.wav"),
                                  ("c0ffee00c0ffee00-bridge", "c0ffee00c0ffee00",
                                   "2027/03/01/c0ffee00c0ffee00-bridge.wav")):
        store.recs[rec_id] = RecordingInfo(
            recording_id=rec_id, call_id=call_id, name=rec_id, path=path, format="wav",
            started_at=T0 + timedelta(minutes=3), duration_s=0.064, size_bytes=1024)


@dataclass
class Harness:
    """Everything an API test needs to look at after a request."""

    deps: ApiDeps
    store: FakeStore
    ctc: FakeClickToCall
    clock: FakeClock
    bus: EventBus
    recordings_dir: Path
    book: FakeContactBook | None = None
    outbox: FakeOutbox | None = None
    notified: list[str] = field(default_factory=list)  # on_contacts_changed, on_delivery_retry


def make_deps(tmp: Path, config: Config | None = None, *, heartbeat_s: float = 15.0,
              health: Mapping[str, str] | None = None, builtin_crm: bool = True) -> Harness:
    """ApiDeps on fakes, seeded; ``builtin_crm`` False: no contact book (another CRM)."""
    store, ctc, clock, bus = FakeStore(), FakeClickToCall(), FakeClock(), EventBus()
    recordings_dir = tmp / "recordings"
    recordings_dir.mkdir(parents=True, exist_ok=True)
    seed(store, recordings_dir)
    checks = dict(health or {"ari": "ok", "ami": "ok", "database": "ok", "journal": "ok"})

    async def probe() -> Mapping[str, str]:
        return checks

    config = config or api_config()
    book, outbox = FakeContactBook(config.staff), FakeOutbox()
    seed_crm(book, outbox)
    notified: list[str] = []
    deps = ApiDeps(config=config, health=probe, store=store, recordings=store,
                   recording_files=RecordingDirectory(recordings_dir), click_to_call=ctc,
                   events=bus, clock=clock, heartbeat_s=heartbeat_s,
                   contacts=book if builtin_crm else None, outbox=outbox,
                   on_contacts_changed=lambda: notified.append("contacts"),
                   on_delivery_retry=lambda: notified.append("retry"))
    return Harness(deps, store, ctc, clock, bus, recordings_dir,
                   book if builtin_crm else None, outbox, notified)


Client = TestClient[web.Request, web.Application]


@contextlib.asynccontextmanager
async def serve(deps: ApiDeps) -> AsyncIterator[Client]:
    """The API on ``deps`` behind aiohttp's test server."""
    async with TestClient(TestServer(make_http_app(deps))) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of ``token``."""
    return {"Authorization": f"Bearer {token}"}


__all__ = [
    "CRM_TOKEN",
    "READER_TOKEN",
    "T0",
    "TOKENS",
    "WAV_BYTES",
    "WEBSITE_TOKEN",
    "ClickToCallRefused",
    "ClickToCallUnavailable",
    "Client",
    "FakeClickToCall",
    "FakeClock",
    "FakeContactBook",
    "FakeOutbox",
    "FakeStore",
    "Harness",
    "api_config",
    "bearer",
    "make_call",
    "make_deps",
    "make_failure",
    "make_task",
    "seed",
    "serve",
    "sha",
]
