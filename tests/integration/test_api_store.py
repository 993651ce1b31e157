"""The HTTP API over the real SqlCallStore (SQLite and PostgreSQL): paging, filters at the
edges of time, a call's detail, and recordings found by id (``get_recording``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pbxbrain.adapters.db import SqlCallStore
from pbxbrain.adapters.recordings import RecordingDirectory
from pbxbrain.domain.model import CallOutcome, EventKind, InboundCall, JournalEntry, RecordingInfo
from pbxbrain.ports import RecordingIndex
from tests.support.api_fakes import CRM_TOKEN, bearer, make_deps, serve

T0 = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)


def test_given_sql_store_then_it_is_a_recording_index(tmp_path: Path) -> None:
    def accepts(_index: RecordingIndex) -> None: ...

    accepts(SqlCallStore.from_url(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"))


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
