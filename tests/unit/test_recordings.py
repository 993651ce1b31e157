"""The recordings directory: atomic files, WAV headers repaired, audio length measured."""

from __future__ import annotations

import asyncio
import io
import wave
from datetime import UTC, datetime
from pathlib import Path

from pbxbrain.adapters.recordings import RecordingDirectory, repair_wav_header, wav_duration


def _wav(seconds: float, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * int(seconds * rate))
    return buf.getvalue()


def test_given_a_wav_then_its_audio_length() -> None:
    assert wav_duration(_wav(2.5)) == 2.5
    assert wav_duration(b"not a wav") is None


def test_given_asterisks_unfinished_header_then_it_is_repaired() -> None:
    good = _wav(1.0)
    unfinished = good[:4] + b"\0\0\0\0" + good[8:40] + b"\0\0\0\0" + good[44:]
    assert wav_duration(unfinished) is None
    assert repair_wav_header(unfinished) == good
    assert repair_wav_header(good) is good


def test_given_a_recording_then_it_is_stored_under_its_date(tmp_path: Path) -> None:
    store = RecordingDirectory(tmp_path)
    saved = asyncio.run(store.save("c1-talk", "wav", _wav(1.5),
                                   datetime(2026, 11, 25, 10, 0, tzinfo=UTC)))
    assert saved.relative_path == "2026/11/25/c1-talk.wav"
    assert saved.duration_s == 1.5
    assert store.path_of(saved.relative_path).stat().st_size == saved.size_bytes
    assert not list(tmp_path.rglob("*.part"))
