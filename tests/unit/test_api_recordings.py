"""``GET /v1/recordings/{id}``: media types, byte ranges, and no way out of the directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pbxbrain.api.routes_recordings import RangeNotSatisfiable, byte_range
from pbxbrain.domain.model import RecordingInfo
from tests.support.api_fakes import (
    CRM_TOKEN,
    WAV_BYTES,
    Client,
    Harness,
    bearer,
    make_deps,
    serve,
)

CRM = bearer(CRM_TOKEN)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return make_deps(tmp_path)


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[Client]:
    async with serve(harness.deps) as c:
        yield c


def add_recording(harness: Harness, rec_id: str, path: str, fmt: str = "wav") -> None:
    harness.store.recs[rec_id] = RecordingInfo(
        recording_id=rec_id, call_id="call0003", name=rec_id, path=path, format=fmt,
        started_at=datetime(2027, 3, 1, tzinfo=UTC))


async def test_given_a_recording_then_the_whole_file_with_its_media_type(
        client: Client) -> None:
    resp = await client.get("/v1/recordings/rec-1", headers=CRM)

    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/wav"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Content-Length"] == "1024"
    assert resp.headers["Content-Disposition"] == 'inline; filename="rec-1.wav"'
    assert "Content-Range" not in resp.headers
    assert await resp.read() == WAV_BYTES


@pytest.mark.parametrize(
    ("fmt", "media"),
    [("wav", "audio/wav"), ("gsm", "audio/x-gsm"), ("ulaw", "audio/basic"),
     ("alaw", "audio/x-alaw-basic"), ("sln", "audio/L16; rate=8000"), ("g722", "audio/G722"),
     ("mystery", "application/octet-stream")],
)
async def test_given_a_format_then_its_media_type(client: Client, harness: Harness, fmt: str,
                                                  media: str) -> None:
    (harness.recordings_dir / f"x.{fmt}").write_bytes(b"abc")
    add_recording(harness, "x", f"x.{fmt}", fmt)

    resp = await client.get("/v1/recordings/x", headers=CRM)

    assert resp.status == 200
    assert resp.headers["Content-Type"] == media


@pytest.mark.parametrize(
    ("range_", "first", "last"),
    [
        ("bytes=0-99", 0, 99),  # the first bytes
        ("bytes=0-0", 0, 0),
        ("bytes=-100", 924, 1023),  # suffix: the last 100
        ("bytes=-5000", 0, 1023),  # suffix longer than the file: all of it
        ("bytes=1000-", 1000, 1023),  # open-ended
        ("bytes=1000-99999", 1000, 1023),  # past the end: cut at the end
        ("bytes=1023-1023", 1023, 1023),
        (" bytes = 10 - 19 ", 10, 19),
    ],
)
async def test_given_a_range_then_206_with_those_bytes(client: Client, range_: str, first: int,
                                                       last: int) -> None:
    resp = await client.get("/v1/recordings/rec-1", headers={**CRM, "Range": range_})

    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/1024"
    assert resp.headers["Content-Length"] == str(last - first + 1)
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == WAV_BYTES[first:last + 1]


@pytest.mark.parametrize("range_", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
async def test_given_an_unsatisfiable_range_then_416_with_the_size(client: Client,
                                                                   range_: str) -> None:
    resp = await client.get("/v1/recordings/rec-1", headers={**CRM, "Range": range_})

    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */1024"
    body = await resp.json()
    assert body["error"]["code"] == "range_not_satisfiable"


@pytest.mark.parametrize("range_", ["bytes=5-1", "bytes=0-1,5-6", "items=0-1", "bytes=",
                                    "bytes=-", "bytes=abc", "bytes=\u0661-\u0662",
                                    "bytes=" + "9" * 40 + "-"])
async def test_given_a_range_to_ignore_then_the_whole_file(client: Client,
                                                           range_: str) -> None:
    resp = await client.get("/v1/recordings/rec-1",
                            headers={**CRM, "Range": range_.encode().decode("latin-1")})

    assert resp.status == 200
    assert await resp.read() == WAV_BYTES


async def test_given_an_empty_file_then_200_empty_and_any_range_416(client: Client) -> None:
    whole = await client.get("/v1/recordings/empty", headers=CRM)
    ranged = await client.get("/v1/recordings/empty", headers={**CRM, "Range": "bytes=0-"})

    assert (whole.status, await whole.read()) == (200, b"")
    assert ranged.status == 416
    assert ranged.headers["Content-Range"] == "bytes */0"


async def test_given_if_range_then_the_range_applies_only_to_the_same_file(
        client: Client) -> None:
    first = await client.get("/v1/recordings/rec-1", headers=CRM)
    etag = first.headers["ETag"]

    same = await client.get("/v1/recordings/rec-1",
                            headers={**CRM, "Range": "bytes=0-9", "If-Range": etag})
    changed = await client.get("/v1/recordings/rec-1",
                               headers={**CRM, "Range": "bytes=0-9", "If-Range": '"other"'})

    assert same.status == 206
    assert changed.status == 200
    assert await changed.read() == WAV_BYTES


# --- no way out of the recordings directory ---------------------------------------------------


@pytest.mark.parametrize("rec_id", ["..", "...", "..%2F..%2Fetc%2Fpasswd", "%2e%2e",
                                    "rec-1%2F..%2F..%2Fx", "%00", ".hidden", "a" * 65,
                                    "rec-1%0A", "nope"])
async def test_given_a_bad_or_unknown_id_then_404(client: Client, rec_id: str) -> None:
    resp = await client.get(f"/v1/recordings/{rec_id}", headers=CRM)

    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_given_a_traversal_path_then_the_url_never_reaches_the_handler(
        client: Client) -> None:
    resp = await client.get("/v1/recordings/../../etc/passwd", headers=CRM)

    assert resp.status == 404
    assert resp.content_type == "application/json"


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/passwd",
                                  "2027/../../outside.wav"])
async def test_given_a_stored_path_outside_the_directory_then_404(
        client: Client, harness: Harness, path: str, tmp_path: Path) -> None:
    (tmp_path / "outside.wav").write_bytes(b"secret")
    add_recording(harness, "evil", path)

    resp = await client.get("/v1/recordings/evil", headers=CRM)

    assert resp.status == 404
    assert b"secret" not in await resp.read()


async def test_given_a_symlink_out_of_the_directory_then_404(
        client: Client, harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "outside.wav").write_bytes(b"secret")
    (harness.recordings_dir / "link.wav").symlink_to(tmp_path / "outside.wav")
    add_recording(harness, "link", "link.wav")

    resp = await client.get("/v1/recordings/link", headers=CRM)

    assert resp.status == 404


async def test_given_a_directory_or_a_missing_file_then_404(client: Client,
                                                           harness: Harness) -> None:
    add_recording(harness, "dir", "2027")

    assert (await client.get("/v1/recordings/dir", headers=CRM)).status == 404
    assert (await client.get("/v1/recordings/gone", headers=CRM)).status == 404


# --- the range parser alone -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 4)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=8-", 10, (8, 9)),
        ("bytes=4-2", 10, None),
        ("bytes=0-1,3-4", 10, None),
    ],
)
def test_given_a_range_header_then_the_span(header: str | None, size: int,
                                           expected: tuple[int, int] | None) -> None:
    assert byte_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10),
                                              ("bytes=-1", 0), ("bytes=0-0", 0)])
def test_given_a_range_outside_then_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, size)
