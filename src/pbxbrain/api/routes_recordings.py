"""``GET /v1/recordings/{recording_id}``: a recording's audio, streamed, with byte ranges.

The id is checked against a strict pattern and looked up in the database; the file is the
one the database row names, resolved (symlinks too) and served only when it lies under the
recordings directory, so no request can name a file of its own choosing.

Ranges (RFC 9110): one range per request, ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``,
answered 206 with ``Content-Range``; a range past the end is 416 with
``Content-Range: bytes */size``; a malformed or multi-range header, or an ``If-Range`` that
does not match the file, is ignored and the whole file is sent (200), as the RFC allows.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from pbxbrain.api.deps import DEPS
from pbxbrain.api.errors import ApiError
from pbxbrain.api.schemas import ID_PATTERN

__all__ = ["MEDIA_TYPES", "RangeNotSatisfiable", "byte_range", "get_recording"]

log = logging.getLogger("pbxbrain.api")

_ID = re.compile(ID_PATTERN)
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]{0,18})\s*-\s*([0-9]{0,18})\s*")
_CHUNK = 64 * 1024

#: Media type of each recording format (``recordings.format``).
MEDIA_TYPES = {
    "wav": "audio/wav",
    "wav49": "audio/wav",
    "gsm": "audio/x-gsm",
    "ulaw": "audio/basic",
    "alaw": "audio/x-alaw-basic",
    "sln": "audio/L16",
    "g722": "audio/G722",
}
_CONTENT_TYPES = {**MEDIA_TYPES, "sln": "audio/L16; rate=8000"}
OCTET_STREAM = "application/octet-stream"


class RangeNotSatisfiable(Exception):
    """The requested range lies outside the file."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` byte positions a ``Range`` header asks for, or None
    for the whole file (no header, or one to ignore). Raises RangeNotSatisfiable."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # suffix: the last n bytes
        length = int(last_text)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - length), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # invalid: ignored
    if first >= size:
        raise RangeNotSatisfiable
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)


def _open_under(root: Path, candidate: Path) -> tuple[BinaryIO, os.stat_result] | None:
    """Open ``candidate`` if it is a regular file under ``root`` (symlinks resolved)."""
    try:
        resolved = candidate.resolve()
        if not resolved.is_relative_to(root.resolve()):
            log.warning("recording file %s lies outside the recordings directory %s; "
                        "refused", resolved, root)
            return None
        if not resolved.is_file():
            return None
        f = resolved.open("rb")
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return None
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        f.close()
        return None
    return f, st


async def get_recording(request: web.Request) -> web.StreamResponse:
    """Stream a recording's audio (whole, or one byte range)."""
    deps = request.app[DEPS]
    recording_id = request.match_info["recording_id"]
    if not _ID.fullmatch(recording_id):
        raise ApiError(404, "no such recording (recording ids are letters, digits, '_', '.', "
                            "':', '-')", code="not_found")
    rec = await deps.recordings.get_recording(recording_id)
    if rec is None:
        raise ApiError(404, f"no recording {recording_id}", code="not_found")
    files = deps.recording_files
    opened = await asyncio.to_thread(_open_under, files.root, files.path_of(rec.path))
    if opened is None:
        raise ApiError(404, f"the file of recording {recording_id} is gone (removed after "
                            f"recordings.keep_days, or never stored)", code="not_found")
    f, st = opened
    try:
        return await _send(request, f, st, recording_id, rec.format)
    finally:
        f.close()


async def _send(request: web.Request, f: BinaryIO, st: os.stat_result, recording_id: str,
                fmt: str) -> web.StreamResponse:
    size = st.st_size
    etag = f'"{size:x}-{st.st_mtime_ns:x}"'
    last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
    wanted = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() not in (etag, last_modified):
        wanted = None
    try:
        span = byte_range(wanted, size)
    except RangeNotSatisfiable:
        raise ApiError(416, f"the range {wanted} lies outside the recording ({size} bytes)",
                       code="range_not_satisfiable",
                       headers={"Content-Range": f"bytes */{size}",
                                "Accept-Ranges": "bytes"}) from None
    first, last = span if span is not None else (0, size - 1)
    response = web.StreamResponse(status=206 if span is not None else 200)
    response.headers["Content-Type"] = _CONTENT_TYPES.get(fmt, OCTET_STREAM)
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["ETag"] = etag
    response.headers["Last-Modified"] = last_modified
    ext = fmt if re.fullmatch(r"[a-z0-9]{1,8}", fmt) else "bin"
    response.headers["Content-Disposition"] = f'inline; filename="{recording_id}.{ext}"'
    if span is not None:
        response.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    length = max(0, last - first + 1)
    response.content_length = length
    await response.prepare(request)
    try:
        await asyncio.to_thread(f.seek, first)
        remaining = length
        while remaining > 0:
            chunk = await asyncio.to_thread(f.read, min(_CHUNK, remaining))
            if not chunk:
                log.error("recording %s shrank while being sent", recording_id)
                break
            await response.write(chunk)
            remaining -= len(chunk)
        await response.write_eof()
    except ConnectionError:
        log.debug("client went away while recording %s was being sent", recording_id)
    return response
