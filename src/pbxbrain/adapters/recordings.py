"""pbxbrain's recordings store: a directory, one file per recording, dated folders.

Files are fetched from Asterisk through ARI's stored-recordings API, so this works when
Asterisk runs on another host; once the copy is safely written (temp file + rename), the
file is deleted from Asterisk's spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import wave
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SavedRecording:
    """Where a recording went and what it holds."""

    relative_path: str
    size_bytes: int
    duration_s: float | None


def wav_closed(data: bytes) -> bool:
    """True when a WAV file's RIFF header counts all its bytes: Asterisk writes the sizes
    when it closes the file, so an unfinished recording says 0."""
    return (len(data) >= 44 and data[:4] == b"RIFF"
            and int.from_bytes(data[4:8], "little") == len(data) - 8)


def repair_wav_header(data: bytes) -> bytes:
    """Fix the RIFF and data sizes of a canonical 44-byte-header WAV when they are wrong.

    Asterisk writes both sizes as 0 while it records and fills them in when it closes the
    file; a recording fetched right after the caller hung up can still carry the zeros
    (RecordingFinished is published before the file is closed).
    """
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE" or (
            data[36:40] != b"data"):
        return data
    riff_size = len(data) - 8
    data_size = len(data) - 44
    if wav_closed(data) and int.from_bytes(data[40:44], "little") == data_size:
        return data
    return (data[:4] + riff_size.to_bytes(4, "little") + data[8:40]
            + data_size.to_bytes(4, "little") + data[44:])


def wav_duration(data: bytes) -> float | None:
    """Length in seconds of a WAV file's audio, or None if it is not a readable WAV."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate = w.getframerate()
            return w.getnframes() / rate if rate else None
    except (wave.Error, EOFError):
        return None


class RecordingDirectory:
    """Recordings under ``root/YYYY/MM/DD/<name>.<format>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, relative_path: str) -> Path:
        """Absolute path of a stored recording."""
        return self.root / relative_path

    async def save(self, name: str, fmt: str, data: bytes, at: datetime) -> SavedRecording:
        """Write ``data`` durably; returns the relative path, size and audio length."""
        relative = f"{at:%Y/%m/%d}/{name}.{fmt}"
        target = self.root / relative
        if fmt == "wav":
            data = repair_wav_header(data)
        await asyncio.to_thread(_write_atomically, target, data)
        duration = wav_duration(data) if fmt.startswith("wav") else None
        return SavedRecording(relative, len(data), duration)


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
