"""Idempotency keys of ``POST /v1/calls``: a repeated request starts no second call.

Keys are scoped to the API token. A request with a key is fingerprinted (the sha256 of its
validated body in canonical JSON). For ``ttl_s`` (24 h) after a success:

- the same key with the same fingerprint gets the stored answer again (same status and
  body, plus ``Idempotent-Replayed: true``), and nothing else happens;
- the same key with another fingerprint is a 409: a key names one request.

Only successes are kept: after a 4xx or 5xx the client may retry with the same key. While
the first request with a key is still being handled, a second one is a 409 too (retry it
a moment later). The table is bounded (``max_entries``; the oldest go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pbxbrain.api.errors import ApiError

__all__ = ["IdempotencyCache", "StoredAnswer"]


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """What was answered the first time."""

    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str]


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    at: float
    answer: StoredAnswer | None  # None while the first request is in progress


class IdempotencyCache:
    """Answers by (token name, key), kept ``ttl_s`` seconds."""

    def __init__(self, *, ttl_s: float = 24 * 3600.0, max_entries: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def begin(self, client: str, key: str, fingerprint: str) -> StoredAnswer | None:
        """The stored answer to replay, or None after reserving the key for this request.

        Raises a 409 ApiError when the key was used for another request or is in progress.
        """
        now = self._clock()
        self._expire(now)
        entry = self._entries.get((client, key))
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise ApiError(409, "this Idempotency-Key was already used for a different "
                                    "request; use a new key for a new call",
                               code="idempotency_conflict", field="Idempotency-Key")
            if entry.answer is None:
                raise ApiError(409, "a request with this Idempotency-Key is still in "
                                    "progress; retry in a moment",
                               code="idempotency_in_progress", field="Idempotency-Key",
                               headers={"Retry-After": "1"})
            return entry.answer
        while len(self._entries) >= self._max:
            self._entries.popitem(last=False)
        self._entries[(client, key)] = _Entry(fingerprint, now, None)
        return None

    def finish(self, client: str, key: str, answer: StoredAnswer) -> None:
        """Keep the answer of a request that succeeded."""
        entry = self._entries.get((client, key))
        if entry is not None:
            entry.answer = answer

    def abandon(self, client: str, key: str) -> None:
        """Forget a reserved key whose request failed (the client may retry with it)."""
        entry = self._entries.get((client, key))
        if entry is not None and entry.answer is None:
            del self._entries[(client, key)]

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries:
            first = next(iter(self._entries.values()))
            if now - first.at < self._ttl:
                break
            self._entries.popitem(last=False)
