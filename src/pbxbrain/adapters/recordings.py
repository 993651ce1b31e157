"""pbxbrain's recordings store: a directory, one file per recording, dated folders.

Files are fetched from Asterisk through ARI's stored-recordings API, so this works when
Asterisk runs on another host; once the copy is safely written (temp file + rename), the
file is deleted from Asterisk's spool. When pbxbrain sees that spool on its own host
(``recordings.local_dir``), MixMonitor's files are moved instead (``adopt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import wave
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SavedRecording:
    """Where a recording went and what it holds."""

    relative_path: str
    size_bytes: int
    duration_s: float | None


def wav_closed(data: bytes) -> bool:
    """True when a WAV file's RIFF header counts all its bytes: Asterisk writes the sizes
    when it closes the file, so an unfinished recording says 0."""
    return len(data) >= 44 and _riff_counts(data[:8], len(data))


def _riff_counts(head: bytes, size: int) -> bool:
    """A RIFF header (its first 8 bytes) whose size counts all ``size`` bytes of the file."""
    return (len(head) == 8 and head[:4] == b"RIFF"
            and int.from_bytes(head[4:8], "little") == size - 8)


def repair_wav_header(data: bytes) -> bytes:
    """Fix the RIFF and data sizes of a canonical 44-byte-header WAV when they are wrong.

    Asterisk writes both sizes as 0 while it records and fills them in when it closes the
    file; a recording fetched right after the caller hung up can still carry the zeros
    (RecordingFinished is published before the file is closed).
    """
    header = _repaired_header(data[:44], len(data))
    return data if header is None else header + data[44:]


def _repaired_header(head: bytes, size: int) -> bytes | None:
    """The 44-byte header of a canonical WAV of ``size`` bytes with its sizes set right,
    or None when it is right already or is not such a header."""
    if len(head) < 44 or head[:4] != b"RIFF" or head[8:12] != b"WAVE" or (
            head[36:40] != b"data"):
        return None
    riff_size, data_size = size - 8, size - 44
    if (int.from_bytes(head[4:8], "little") == riff_size
            and int.from_bytes(head[40:44], "little") == data_size):
        return None
    return (head[:4] + riff_size.to_bytes(4, "little") + head[8:40]
            + data_size.to_bytes(4, "little"))


def wav_file_closed(path: Path) -> bool:
    """``wav_closed`` of a file on disk, reading only its header (FileNotFoundError when
    Asterisk has not created it)."""
    with path.open("rb") as f:
        return _riff_counts(f.read(8), os.fstat(f.fileno()).st_size)


def wav_duration(data: bytes | Path) -> float | None:
    """Length in seconds of a WAV's audio (its bytes, or a file), or None if it is not a
    readable WAV."""
    try:
        with wave.open(str(data) if isinstance(data, Path) else io.BytesIO(data)) as w:
            rate = w.getframerate()
            return w.getnframes() / rate if rate else None
    except (wave.Error, EOFError):
        return None


def usable_spool(path: Path | None) -> Path | None:
    """``recordings.local_dir`` when pbxbrain can read and rename files in it, else None
    (recordings are then fetched through ARI, and the reason is logged once)."""
    if path is None:
        return None
    if path.is_dir() and os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return path
    why = "it is not a directory" if not path.is_dir() else "pbxbrain may not write to it"
    log.error("recordings.local_dir %s cannot be used (%s); recordings are fetched through "
              "ARI until it is fixed and pbxbrain restarted", path, why)
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

    async def adopt(self, source: Path, name: str, fmt: str, at: datetime) -> SavedRecording:
        """Take a recording file from Asterisk's spool on this host: a rename on the same
        file system, else a durable copy; the source is gone afterwards (a failure to
        remove it is logged, the copy kept). A WAV Asterisk never closed is copied with
        its header repaired, never edited in place (Asterisk may still write to it)."""
        relative = f"{at:%Y/%m/%d}/{name}.{fmt}"
        size, duration = await asyncio.to_thread(_move, source, self.root / relative, fmt)
        return SavedRecording(relative, size, duration)


def _move(source: Path, target: Path, fmt: str) -> tuple[int, float | None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Read-only: Asterisk makes its files 0644; renaming needs only the spool's write bit.
    with source.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = _repaired_header(f.read(44), size) if fmt == "wav" else None
        if header is None:
            os.fsync(f.fileno())
            try:
                source.replace(target)
                copied = False
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                copied = True
        else:
            copied = True
        if copied:
            skip = 0 if header is None else 44  # the repaired header replaces the old one
            f.seek(skip)
            _copy_durably(f, header or b"", size - skip, target)
    _fsync_dir(target.parent)  # the new name is durable before the old one goes
    if copied:
        try:
            source.unlink()
        except OSError as exc:
            log.warning("recording %s kept, but could not be removed from Asterisk's "
                        "spool (%s); remove it by hand", source, exc)
    return target.stat().st_size, wav_duration(target) if fmt.startswith("wav") else None


def _copy_durably(source: BinaryIO, head: bytes, length: int, target: Path) -> None:
    """Write ``head`` then ``length`` bytes of ``source`` to ``target`` atomically."""
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        with tmp.open("wb") as out:
            out.write(head)
            while length > 0:
                chunk = source.read(min(length, 1 << 20))
                if not chunk:
                    break
                out.write(chunk)
                length -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    _copy_durably(io.BytesIO(data), b"", len(data), target)
    _fsync_dir(target.parent)
