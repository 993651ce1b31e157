"""Rate limits: token buckets keyed by token name or staff id, on an injected clock.

A bucket holds ``rate`` requests and refills evenly, ``rate`` per ``period_s``: a client may
burst to ``rate`` at once, then goes at the steady pace. ``acquire`` never waits: it says
"go" (None) or how many seconds until the next request would be let through, which the API
sends as ``Retry-After``. Keys come from the configuration (token names, staff ids), never
from raw request text, so the table stays small; full buckets are dropped anyway once it
grows past ``max_keys``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``rate`` requests per ``period_s`` per key."""

    def __init__(self, rate: int, period_s: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        if rate < 1 or period_s <= 0:
            raise ValueError("rate must be >= 1 and period_s > 0")
        self.rate = rate
        self.period_s = period_s
        self._per_second = rate / period_s
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str) -> float | None:
        """Take one request for ``key``: None when allowed, else seconds to wait."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.rate), now)
        else:
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(float(self.rate), bucket.tokens + elapsed * self._per_second)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self._per_second

    def _prune(self, now: float) -> None:
        full = [key for key, bucket in self._buckets.items()
                if bucket.tokens + (now - bucket.at) * self._per_second >= self.rate]
        for key in full:
            del self._buckets[key]
