"""The HTTP API over the real SqlCallStore (SQLite and PostgreSQL): paging, filters at the
edges of time, a call's detail, and recordings found by id (``get_recording``); and over the
real BuiltinCrm and SqlOutbox: contact imports, tasks, failed deliveries and their retry."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pbxbrain.adapters.crm_builtin import BuiltinCrm
from pbxbrain.adapters.crm_store import SqlOutbox
from pbxbrain.adapters.db import SqlCallStore, create_engine
from pbxbrain.adapters.outbox import missed_call_message
from pbxbrain.adapters.recordings import RecordingDirectory
from pbxbrain.api.deps import ApiDeps
from pbxbrain.domain.model import (
    CallOutcome,
    EventKind,
    InboundCall,
    JournalEntry,
    MissedCall,
    RecordingInfo,
)
from pbxbrain.ports import ContactBook, OutboxAdmin, RecordingIndex
from tests.support.api_fakes import CRM_TOKEN, bearer, make_deps, serve

T0 = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)


CRM = bearer(CRM_TOKEN)


def test_given_sql_store_then_it_is_a_recording_index(tmp_path: Path) -> None:
    def accepts(_index: RecordingIndex) -> None: ...

    accepts(SqlCallStore.from_url(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"))


def test_given_the_builtin_crm_and_the_outbox_then_they_are_the_api_ports() -> None:
    engine = create_engine("sqlite+aiosqlite:///:memory:")

    def accepts(_book: ContactBook, _outbox: OutboxAdmin) -> None: ...

    accepts(BuiltinCrm(engine), SqlOutbox(engine))


async def fill(store: SqlCallStore, count: int) -> None:
    for n in range(count):
        at = T0 + timedelta(minutes=n)
        await store.open_call(InboundCall(
            call_id=f"call{n:04d}", channel_id=f"chan-{n}", caller="+79161234567",
            caller_raw="79161234567", dialed="+74951234567", at=at), line="+74951234567",
            source="website")
        await store.mark_answered(f"call{n:04d}", at + timedelta(seconds=3),
                                  "ivanov" if n % 2 else "petrov")
        await store.close_call(f"call{n:04d}", CallOutcome.ANSWERED, at + timedelta(minutes=1))


async def test_given_a_recording_then_get_recording_finds_it_by_id(
        store: SqlCallStore) -> None:
    await fill(store, 1)
    rec = RecordingInfo(recording_id="call0000-bridge", call_id="call0000",
                        name="call0000-bridge", path="2027/03/01/call0000-bridge.wav",
                        format="wav", started_at=T0, duration_s=1.5, size_bytes=12044)
    await store.add_recording(rec)

    assert await store.get_recording("call0000-bridge") == rec
    assert await store.get_recording("nope") is None


async def test_given_the_sql_store_then_the_api_pages_filters_and_details(
        store: SqlCallStore, tmp_path: Path) -> None:
    await fill(store, 7)
    await store.append(JournalEntry("call0003", T0 + timedelta(minutes=3, seconds=1),
                                    EventKind.RINGING, {"target": "ivanov"}))
    (tmp_path / "rec" / "2027").mkdir(parents=True)
    (tmp_path / "rec" / "2027" / "r3.wav").write_bytes(b"RIFF" + bytes(60))
    await store.add_recording(RecordingInfo(
        recording_id="r3", call_id="call0003", name="r3", path="2027/r3.wav", format="wav",
        started_at=T0 + timedelta(minutes=3)))
    deps = dataclasses.replace(make_deps(tmp_path).deps, store=store, recordings=store,
                               recording_files=RecordingDirectory(tmp_path / "rec"))

    async with serve(deps) as client:
        async def get(url: str) -> Any:
            resp = await client.get(url, headers=bearer(CRM_TOKEN))
            assert resp.status == 200, await resp.text()
            return await resp.json()

        ids: list[str] = []
        url: str | None = "/v1/calls?limit=3&manager=ivanov"
        while url is not None:
            page = await get(url)
            ids += [c["call_id"] for c in page["calls"]]
            url = page["links"]["next"]
        early = await get("/v1/calls?until=0001-01-01T00:00:04%2B03:00")
        late = await get("/v1/calls?since=9999-12-31T23:59:59-23:59")
        window = await get("/v1/calls?since=2027-03-01T12:02:00%2B03:00"
                           "&until=2027-03-01T09:04:00Z&number=89161234567")
        detail = await get("/v1/calls/call0003")
        audio = await client.get("/v1/recordings/r3",
                                 headers={**bearer(CRM_TOKEN), "Range": "bytes=0-3"})

        assert ids == ["call0005", "call0003", "call0001"]
        assert early["calls"] == []
        assert late["calls"] == []
        assert [c["call_id"] for c in window["calls"]] == ["call0003", "call0002"]
        # The journal keeps insertion order: ringing was appended last here.
        assert [e["kind"] for e in detail["timeline"]] == ["entered", "ended", "ringing"]
        assert detail["answered_by"] == "ivanov"
        assert detail["recordings"][0]["links"]["audio"] == "/v1/recordings/r3"
        assert audio.status == 206
        assert await audio.read() == b"RIFF"


# --------------------------------------------------------------------------- the built-in CRM


@pytest.fixture
async def crm_deps(store: SqlCallStore, store_url: str,
                   tmp_path: Path) -> AsyncIterator[tuple[ApiDeps, BuiltinCrm, SqlOutbox]]:
    """The API over the real BuiltinCrm and SqlOutbox (the daemon's wiring)."""
    engine = create_engine(store_url)
    harness = make_deps(tmp_path)
    config = harness.deps.config
    crm = BuiltinCrm(engine, staff=config.staff.keys(),
                     default_region=config.numbers.default_region)
    outbox = SqlOutbox(engine, clock=lambda: T0 + timedelta(hours=2))  # retry_now's "now"
    yield (dataclasses.replace(harness.deps, store=store, recordings=store, contacts=crm,
                               outbox=outbox), crm, outbox)
    await engine.dispose()


async def test_given_the_builtin_crm_then_json_and_csv_imports_write_contacts(
        crm_deps: tuple[ApiDeps, BuiltinCrm, SqlOutbox]) -> None:
    deps, crm, _ = crm_deps
    body = [{"phone": "+74951234567", "name": "Romashka", "owner": "ivanov", "crm_ref": "C-1"},
            {"phone": "8 916 123-45-67", "name": "Ivan"},
            {"phone": "12"},
            {"phone": "+79160000001", "owner": "nobody"},
            {"phone": "+7 495 123-45-67"},
            {"phone": "+79160000002", "name": "bad\u0000name"},
            {"phone": "+79160000003", "name": "\ud800"}]
    # Excel for Mac: \r line ends; semicolons; Cyrillic in windows-1251.
    csv_text = "phone;name;owner\r+74951234567;Ромашка;petrov\r+79160000009;;\r"

    async with serve(deps) as client:
        dry = await client.post("/v1/contacts?dry_run=true", json=body, headers=CRM)
        assert await crm.find_contact("+74951234567") is None
        first = await client.post("/v1/contacts", json=body, headers=CRM)
        second = await client.post("/v1/contacts", data=csv_text.encode("cp1251"),
                                   headers={**CRM,
                                            "Content-Type": "text/csv; charset=windows-1251"})
        shape = await client.post("/v1/contacts", data=b"email\nx@y\n",
                                  headers={**CRM, "Content-Type": "text/csv"})

        for resp in (dry, first, second):
            assert resp.status == 200, await resp.text()
        dry_report, report, csv_report = await dry.json(), await first.json(), await second.json()
        assert (dry_report["created"], dry_report["dry_run"]) == (2, True)
        assert (report["total"], report["created"], report["updated"]) == (7, 2, 0)
        assert [(e["row"], e["field"]) for e in report["errors"]] == [
            (3, "phone"), (4, "owner"), (5, "phone"), (6, "name"), (7, "name")]
        assert "already in row 1" in report["errors"][2]["message"]
        assert (csv_report["created"], csv_report["updated"], csv_report["errors"]) == (1, 1, [])
        assert shape.status == 422
        assert (await shape.json())["error"]["field"] == "header"
    romashka = await crm.find_contact("+74951234567")
    assert romashka is not None
    assert (romashka.name, romashka.owner, romashka.crm_ref) == ("Ромашка", "petrov", "C-1")
    ivan = await crm.find_contact("+79161234567")
    assert ivan is not None
    assert (ivan.name, ivan.source) == ("Ivan", "import")
    assert await crm.find_contact("+79160000002") is None


async def test_given_the_builtin_crm_then_tasks_are_listed_paged_and_closed(
        crm_deps: tuple[ApiDeps, BuiltinCrm, SqlOutbox]) -> None:
    deps, crm, _ = crm_deps
    for n, (phone, who) in enumerate([("+79161234567", "ivanov"), ("+79161234568", "petrov"),
                                      ("+79161234569", "ivanov")]):
        await crm.missed_call(MissedCall(
            call_id=f"m{n}", phone=phone, outcome=CallOutcome.MISSED,
            at=T0 + timedelta(minutes=n), due_at=T0 + timedelta(minutes=n + 15),
            responsible=who), key=f"missed:m{n}")

    async with serve(deps) as client:
        async def call(method: str, url: str, status: int = 200, **kw: Any) -> Any:
            resp = await client.request(method, url, headers=CRM, **kw)
            assert resp.status == status, await resp.text()
            return await resp.json()

        ids: list[str] = []
        url: str | None = "/v1/tasks?limit=2"
        while url is not None:
            page = await call("GET", url)
            ids += [t["task_id"] for t in page["tasks"]]
            url = page["links"]["next"]
        mine = await call("GET", "/v1/tasks?responsible=101&status=open")
        by_phone = await call("GET", "/v1/tasks?phone=8%20916%20123-45-68")
        closed = await call("POST", f"/v1/tasks/{ids[-1]}/close", json={"by": "102"})
        again = await call("POST", f"/v1/tasks/{ids[-1]}/close")
        one = await call("GET", f"/v1/tasks/{ids[-1]}")
        done = await call("GET", "/v1/tasks?status=done")
        unknown = await call("POST", "/v1/tasks/999999/close", 404)
        not_a_key = await call("GET", "/v1/tasks/abc", 404)

        assert len(ids) == 3
        assert [int(i) for i in ids] == sorted((int(i) for i in ids), reverse=True)
        assert [t["phone"] for t in mine["tasks"]] == ["+79161234569", "+79161234567"]
        assert [t["responsible"] for t in by_phone["tasks"]] == ["petrov"]
        assert (closed["status"], closed["closed_by"], closed["callback_delay_s"]) == (
            "done", "petrov", None)
        assert closed["links"]["last_call"] == "/v1/calls/m0"
        assert again == closed == one
        assert [t["task_id"] for t in done["tasks"]] == [ids[-1]]
        assert unknown["error"]["code"] == not_a_key["error"]["code"] == "not_found"


async def test_given_the_real_outbox_then_failures_are_listed_and_retried(
        crm_deps: tuple[ApiDeps, BuiltinCrm, SqlOutbox], store: SqlCallStore) -> None:
    deps, _, outbox = crm_deps
    for n in range(4):
        at = T0 + timedelta(minutes=n)
        await store.open_call(InboundCall(call_id=f"o{n}", channel_id=f"ch{n}",
                                          caller="+79161234567", caller_raw="79161234567",
                                          dialed="+74951234567", at=at))
        await store.close_call(f"o{n}", CallOutcome.MISSED, at, outbox=[missed_call_message(
            MissedCall(call_id=f"o{n}", phone="+79161234567", outcome=CallOutcome.MISSED,
                       at=at, due_at=at + timedelta(minutes=15), responsible="ivanov"))])
    now = T0 + timedelta(hours=1)
    a, b, c, _ = await outbox.claim_deliveries("n", now, lease_s=7200)
    await outbox.delivered([a.id], now)
    await outbox.delivery_failed(b.id, "CRM said 503", now + timedelta(days=1))
    await outbox.delivery_rejected(c.id, "CRM said 400: bad phone", now)

    async with serve(deps) as client:
        first = await client.get("/v1/deliveries/failed?limit=1", headers=CRM)
        page = await first.json()
        second = await (await client.get(page["links"]["next"], headers=CRM)).json()
        retried = await client.post(f"/v1/deliveries/{c.id}/retry", headers=CRM)
        delivered = await client.post(f"/v1/deliveries/{a.id}/retry", headers=CRM)
        after = await (await client.get("/v1/deliveries/failed", headers=CRM)).json()

        assert [(d["key"], d["status"], d["attempts"]) for d in page["deliveries"]] == [
            ("missed:o2", "failed", 1)]
        assert page["deliveries"][0]["last_error"] == "CRM said 400: bad phone"
        assert [(d["key"], d["status"]) for d in second["deliveries"]] == [
            ("missed:o1", "retrying")]
        assert second["links"]["next"] is None
        assert retried.status == 202
        assert delivered.status == 404
        assert [d["status"] for d in after["deliveries"]] == ["retrying", "retrying"]
    due = await outbox.claim_deliveries("n", T0 + timedelta(hours=2))
    assert [d.key for d in due] == ["missed:o2"]  # o1 waits for its backoff, o3 is leased


async def test_given_a_big_file_then_checking_it_lets_the_calls_go_on(
        crm_deps: tuple[ApiDeps, BuiltinCrm, SqlOutbox]) -> None:
    _, crm, _ = crm_deps
    ticks = 0

    async def ticker() -> None:  # stands for the call path, sharing the event loop
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    # Invalid records and a dry run: no database round trip yields on its own.
    report = await crm.import_contacts([{"phone": "x"}] * 5000, dry_run=True)
    during = ticks - before
    task.cancel()

    assert len(report.errors) == 5000
    assert during >= 5000 // 256
