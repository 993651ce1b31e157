"""Fetching a MixMonitor recording only once Asterisk has closed it.

A MixMonitor file has no "finished" event: Asterisk's recording thread closes it a moment
after the channel's end, and a WAV header's sizes are written at that close.
"""

from __future__ import annotations

import asyncio
import errno
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from pbxbrain.adapters.ari import AriNotFound
from pbxbrain.adapters.recordings import (
    RecordingDirectory,
    SavedRecording,
    usable_spool,
    wav_closed,
)
from pbxbrain.adapters.stasis import CallSession, StasisApp, StasisSettings
from pbxbrain.domain.model import Direction, InboundCall


def wav(samples: int, *, closed: bool = True) -> bytes:
    """A 16-bit mono 8 kHz WAV file; ``closed=False``: the sizes still 0, as Asterisk
    leaves them until it closes the file."""
    data = b"\x01\x00" * samples
    riff = 36 + len(data) if closed else 0
    size = len(data) if closed else 0
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
            + b"data" + struct.pack("<I", size) + data)


def test_a_closed_wav_counts_all_its_bytes() -> None:
    assert wav_closed(wav(800))
    assert wav_closed(wav(0))


@pytest.mark.parametrize("data", [wav(800, closed=False), wav(800)[:-2], b"", b"RIFF",
                                  b"OggS" + wav(800)[4:]])
def test_an_unfinished_or_foreign_file_is_not_a_closed_wav(data: bytes) -> None:
    assert not wav_closed(data)


class FakeAri:
    """Answers each fetch of the stored recording with the next of ``answers``."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers: Iterator[bytes | None] = iter(answers)
        self.fetches = 0

    async def stored_recording_file(self, name: str) -> bytes:
        self.fetches += 1
        answer = next(self.answers)
        if answer is None:
            raise AriNotFound("GET", f"/recordings/stored/{name}/file", 404,
                              "Recording not found")
        return answer


async def fetch(session: CallSession, fmt: str = "wav") -> tuple[bytes, bool]:
    async with session._fetched("c1-talk", fmt, wait_closed=True) as got:
        # the slot is held while the bytes are kept, and only then
        assert session.app.recording_fetches.locked()
        return got


def session(ari: FakeAri, settle_s: float = 5.0) -> CallSession:
    settings = StasisSettings(node="n1", default_region="RU", recording_settle_s=settle_s)
    app = cast(StasisApp, SimpleNamespace(ari=ari, settings=settings,
                                          recording_fetches=asyncio.Semaphore(1)))
    call = InboundCall(call_id="c1", channel_id="ch1", caller="+79161234567",
                       caller_raw="+79161234567", dialed="+74951234567",
                       at=datetime(2026, 11, 25, tzinfo=UTC), direction=Direction.INBOUND,
                       node="n1")
    return CallSession(app, call)


async def test_an_unfinished_wav_is_fetched_again_until_asterisk_closed_it() -> None:
    ari = FakeAri([wav(800, closed=False), wav(1600, closed=False), wav(1600)])
    assert await fetch(session(ari)) == (wav(1600), True)
    assert ari.fetches == 3


async def test_a_file_not_there_yet_is_fetched_again() -> None:
    ari = FakeAri([None, wav(800)])
    assert await fetch(session(ari)) == (wav(800), True)


async def test_a_file_never_closed_is_kept_as_it_is_after_the_settle_time() -> None:
    ari = FakeAri([wav(800, closed=False)] * 10)
    assert await fetch(session(ari, settle_s=0.1)) == (wav(800, closed=False), False)
    assert 1 < ari.fetches < 10


async def test_a_file_never_there_raises_not_found_after_the_settle_time() -> None:
    ari = FakeAri([None] * 10)
    with pytest.raises(AriNotFound):
        await fetch(session(ari, settle_s=0.1))


async def test_formats_without_a_header_are_taken_at_once() -> None:
    ari = FakeAri([b"\xff" * 160])
    assert await fetch(session(ari), "ulaw") == (b"\xff" * 160, True)


async def test_an_ari_recording_is_fetched_once() -> None:
    ari = FakeAri([None, wav(800)])
    with pytest.raises(AriNotFound):
        async with session(ari)._fetched("c1-talk", "wav", wait_closed=False):
            pass
    assert ari.fetches == 1


# -- Asterisk's spool on this host (recordings.local_dir): moved, not fetched ------------


def local_session(spool: Path, store: Path, settle_s: float = 5.0) -> CallSession:
    settings = StasisSettings(node="n1", default_region="RU", recording_settle_s=settle_s,
                              local_recording_dir=spool)
    app = cast(StasisApp, SimpleNamespace(ari=FakeAri([]), settings=settings,
                                          recordings=RecordingDirectory(store)))
    return CallSession(app, session(FakeAri([])).call)


async def move(session: CallSession, spool: Path) -> tuple[SavedRecording, bool]:
    """What ``_keep_recording`` does with a MixMonitor file beside Asterisk."""
    source = spool / "c1-talk.wav"
    closed = await session._closed_here(source, "wav")
    saved = await session.app.recordings.adopt(source, "c1-talk", "wav",
                                               datetime(2026, 11, 25, tzinfo=UTC))
    return saved, closed


async def test_a_closed_local_file_is_moved_into_the_store(tmp_path: Path) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    (spool / "c1-talk.wav").write_bytes(wav(16000))

    saved, closed = await move(local_session(spool, store), spool)

    assert closed
    assert saved == SavedRecording("2026/11/25/c1-talk.wav", len(wav(16000)), 2.0)
    assert (store / saved.relative_path).read_bytes() == wav(16000)
    assert not (spool / "c1-talk.wav").exists()


async def test_a_local_file_is_moved_once_asterisk_closed_it(tmp_path: Path) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    source = spool / "c1-talk.wav"
    source.write_bytes(wav(8000, closed=False))

    async def asterisk_closes_it() -> None:
        await asyncio.sleep(0.06)  # after the first look at it
        source.write_bytes(wav(16000))

    closing = asyncio.create_task(asterisk_closes_it())
    saved, closed = await move(local_session(spool, store), spool)
    await closing

    assert closed
    assert saved.duration_s == 2.0
    assert wav_closed((store / saved.relative_path).read_bytes())


async def test_a_local_file_never_closed_is_moved_with_its_header_repaired(
    tmp_path: Path,
) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    (spool / "c1-talk.wav").write_bytes(wav(8000, closed=False))

    saved, closed = await move(local_session(spool, store, settle_s=0.1), spool)

    assert not closed
    assert saved.duration_s == 1.0
    assert (store / saved.relative_path).read_bytes() == wav(8000)


async def test_a_local_file_never_there_raises_after_the_settle_time(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await move(local_session(tmp_path, tmp_path / "store", settle_s=0.1), tmp_path)


async def test_a_local_file_on_another_file_system_is_copied_then_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    source = spool / "c1-talk.wav"
    source.write_bytes(wav(800))
    rename = Path.replace

    def across_devices(self: Path, target: Path) -> Path:
        if self == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return rename(self, target)

    monkeypatch.setattr(Path, "replace", across_devices)
    saved, _ = await move(local_session(spool, store), spool)

    assert (store / saved.relative_path).read_bytes() == wav(800)
    assert not source.exists()
    assert not list(store.rglob("*.part"))


async def test_a_local_file_never_closed_is_copied_not_edited_in_place(tmp_path: Path) -> None:
    # Asterisk may still hold it open: its header is repaired in pbxbrain's copy only.
    spool, store = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    source = spool / "c1-talk.wav"
    source.write_bytes(wav(8000, closed=False))
    inode = source.stat().st_ino

    saved, _ = await move(local_session(spool, store, settle_s=0.1), spool)

    target = store / saved.relative_path
    assert target.read_bytes() == wav(8000)
    assert target.stat().st_ino != inode
    assert not source.exists()


async def test_a_closed_local_file_is_renamed_not_copied(tmp_path: Path) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    source = spool / "c1-talk.wav"
    source.write_bytes(wav(800))
    inode = source.stat().st_ino

    saved, _ = await move(local_session(spool, store), spool)

    assert (store / saved.relative_path).stat().st_ino == inode


async def test_a_copy_whose_source_cannot_be_removed_is_kept_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    source = spool / "c1-talk.wav"
    source.write_bytes(wav(8000, closed=False))
    unlink = Path.unlink

    def refused(self: Path, missing_ok: bool = False) -> None:
        if self == source:
            raise PermissionError(errno.EACCES, "Permission denied")
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    saved, _ = await move(local_session(spool, store, settle_s=0.1), spool)

    assert (store / saved.relative_path).read_bytes() == wav(8000)
    assert "could not be removed from Asterisk's spool" in caplog.text


def test_a_local_dir_pbxbrain_cannot_use_falls_back_to_fetching(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    assert usable_spool(None) is None
    assert usable_spool(tmp_path) == tmp_path
    assert usable_spool(tmp_path / "missing") is None
    assert "recordings.local_dir" in caplog.text
    assert "fetched through ARI" in caplog.text
