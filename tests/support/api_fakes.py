"""Hand-written fakes of the ports the HTTP API uses, and a config for API tests.

``FakeStore`` holds a few calls (newest first like the real store, paging by ``before_id``);
``FakeClickToCall`` records what it was asked (the "no channel is created in Asterisk"
check of a refused request is "``requests`` is empty"); ``FakeClock`` is the monotonic
clock of the rate limits, moved by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import textwrap
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pbxbrain.adapters.recordings import RecordingDirectory
from pbxbrain.api.app import ApiDeps, make_http_app
from pbxbrain.api.events import EventBus
from pbxbrain.config import Config, parse_config
from pbxbrain.domain.model import (
    CallOutcome,
    CallSummary,
    Direction,
    EventKind,
    InboundCall,
    JournalEntry,
    OriginateRequest,
    OutboxMessage,
    PendingDelivery,
    RecordingInfo,
)
from pbxbrain.ports import ClickToCallRefused, ClickToCallUnavailable

CRM_TOKEN = "crm-0123456789abcdef"  # originate, read, recordings
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
            - {{name: crm, sha256: "{sha(CRM_TOKEN)}", scopes: [originate, read, recordings]}}
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

    async def open_call(self, call: InboundCall, *, line: str | None = None,
                        source: str | None = None) -> None:
        raise NotImplementedError

    async def append(self, entry: JournalEntry) -> None:
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

    async def due_deliveries(self, now: datetime, limit: int = 50) -> list[PendingDelivery]:
        return []

    async def delivered(self, delivery_id: int, at: datetime) -> None:
        raise NotImplementedError

    async def delivery_failed(self, delivery_id: int, error: str, retry_at: datetime) -> None:
        raise NotImplementedError

    async def advance_cursor(self, group: str, size: int) -> int:
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


def make_deps(tmp: Path, config: Config | None = None, *, heartbeat_s: float = 15.0,
              health: Mapping[str, str] | None = None) -> Harness:
    """ApiDeps on fakes, seeded."""
    store, ctc, clock, bus = FakeStore(), FakeClickToCall(), FakeClock(), EventBus()
    recordings_dir = tmp / "recordings"
    recordings_dir.mkdir(parents=True, exist_ok=True)
    seed(store, recordings_dir)
    checks = dict(health or {"ari": "ok", "ami": "ok", "database": "ok", "journal": "ok"})

    async def probe() -> Mapping[str, str]:
        return checks

    deps = ApiDeps(config=config or api_config(), health=probe, store=store, recordings=store,
                   recording_files=RecordingDirectory(recordings_dir), click_to_call=ctc,
                   events=bus, clock=clock, heartbeat_s=heartbeat_s)
    return Harness(deps, store, ctc, clock, bus, recordings_dir)


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
    "FakeStore",
    "Harness",
    "api_config",
    "bearer",
    "make_call",
    "make_deps",
    "seed",
    "serve",
    "sha",
]
