"""Fetching a MixMonitor recording only once Asterisk has closed it.

A MixMonitor file has no "finished" event: Asterisk's recording thread closes it a moment
after the channel's end, and a WAV header's sizes are written at that close.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import pytest

from pbxbrain.adapters.ari import AriNotFound
from pbxbrain.adapters.recordings import wav_closed
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
