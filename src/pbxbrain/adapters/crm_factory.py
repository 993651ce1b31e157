"""Which CRM adapter the config asks for, and the cached, deadline-bound lookup of the call path.

``make_crm(config, engine, session)`` builds the one ``Crm`` of ``crm: {kind: …}``.

``CachedLookup`` is what the router asks for a caller's contact and owner. A caller must
never wait on a slow or dead CRM, so:

* a lookup waits at most ``deadline_s`` (0.3 s by default); after that, or when the CRM
  fails, the answer is ``LookupResult(answered=False)``: "the CRM did not answer", and the
  router routes without the owner (``Facts(crm_ok=False)``);
* a lookup that ran out of time goes on in the background (bounded by the adapter's own
  timeout) and fills the cache, so the next call from the number has its answer;
* answers are cached: a found contact for ``ttl_s``, "no such contact" for
  ``negative_ttl_s``; failures are not cached. ``invalidate(phone)`` forgets a number
  (the outbox worker calls it once a missed call made or changed the contact);
* concurrent lookups of one number share one request;
* numbers that are not E.164 (anonymous, internal) are never looked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from pbxbrain.adapters.crm_bitrix24 import Bitrix24Crm
from pbxbrain.adapters.crm_builtin import BuiltinCrm
from pbxbrain.adapters.crm_webhook import WebhookCrm
from pbxbrain.config import Bitrix24Crm as Bitrix24Settings
from pbxbrain.config import BuiltinCrm as BuiltinSettings
from pbxbrain.config import Config
from pbxbrain.config import WebhookCrm as WebhookSettings
from pbxbrain.domain.model import Contact
from pbxbrain.ports import Crm, CrmUnavailable, LookupResult

__all__ = ["CachedLookup", "LookupResult", "crm_ids", "make_crm"]

log = logging.getLogger(__name__)


def crm_ids(config: Config) -> dict[str, str]:
    """staff id -> the manager's user id in the CRM (``crm_id``, default the staff id)."""
    return {sid: staff.crm_id or sid for sid, staff in config.staff.items()}


def make_crm(config: Config, engine: AsyncEngine, session: aiohttp.ClientSession) -> Crm:
    """The ``Crm`` of ``config.crm``: built-in (on ``engine``), webhook or Bitrix24 (on
    ``session``, which the caller owns and closes)."""
    settings = config.crm
    if isinstance(settings, WebhookSettings):
        return WebhookCrm(
            session,
            settings.url,
            settings.secret.get_secret_value(),
            lookup_url=settings.lookup_url,
            crm_ids=crm_ids(config),
        )
    if isinstance(settings, Bitrix24Settings):
        return Bitrix24Crm(
            session, settings.webhook_url.get_secret_value(), crm_ids=crm_ids(config))
    assert isinstance(settings, BuiltinSettings)
    return BuiltinCrm(
        engine, staff=config.staff.keys(), default_region=config.numbers.default_region)




@dataclass(slots=True)
class _Entry:
    contact: Contact | None
    expires: float


class CachedLookup:
    """``find_contact`` for the call path: deadline, caching, shared requests (module
    docstring). ``clock`` is monotonic seconds."""

    def __init__(
        self,
        crm: Crm,
        *,
        ttl_s: float = 300.0,
        negative_ttl_s: float = 60.0,
        deadline_s: float = 0.3,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._crm = crm
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._deadline = deadline_s
        self._max = max_entries
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[Contact | None]] = {}
        self.hits = 0
        self.misses = 0
        self.unanswered = 0

    async def lookup(self, phone: str) -> LookupResult:
        """The contact of ``phone`` within the deadline; never raises."""
        if not phone.startswith("+"):
            return LookupResult(None, answered=True, cached=True)
        entry = self._cache.get(phone)
        if entry is not None and entry.expires > self._clock():
            self.hits += 1
            return LookupResult(entry.contact, answered=True, cached=True)
        self.misses += 1
        task = self._inflight.get(phone)
        if task is None:
            task = asyncio.create_task(self._crm.find_contact(phone), name=f"crm-lookup-{phone}")
            self._inflight[phone] = task
            task.add_done_callback(lambda done: self._finished(phone, done))
        try:
            contact = await asyncio.wait_for(asyncio.shield(task), self._deadline)
        except TimeoutError:
            self.unanswered += 1
            log.info("CRM lookup of %s: no answer within %g s; routing without the owner",
                     phone, self._deadline)
            return LookupResult(None, answered=False)
        except CrmUnavailable as exc:
            self.unanswered += 1
            log.warning("CRM lookup of %s failed: %s; routing without the owner", phone, exc)
            return LookupResult(None, answered=False)
        except Exception:
            self.unanswered += 1
            log.exception("CRM lookup of %s crashed; routing without the owner", phone)
            return LookupResult(None, answered=False)
        return LookupResult(contact, answered=True)

    def _finished(self, phone: str, task: asyncio.Task[Contact | None]) -> None:
        fresh = self._inflight.get(phone) is task
        if fresh:
            del self._inflight[phone]
        if task.cancelled() or task.exception() is not None:
            return  # not cached: the next call asks again
        if fresh:
            contact = task.result()
            ttl = self._ttl if contact is not None else self._negative_ttl
            self._cache[phone] = _Entry(contact, self._clock() + ttl)
            self._trim()

    def _trim(self) -> None:
        if len(self._cache) <= self._max:
            return
        now = self._clock()
        for phone in [p for p, e in self._cache.items() if e.expires <= now]:
            del self._cache[phone]
        while len(self._cache) > self._max:
            del self._cache[next(iter(self._cache))]

    def invalidate(self, phone: str) -> None:
        """Forget what is known of ``phone`` (a lookup in flight is not cached either)."""
        self._cache.pop(phone, None)
        self._inflight.pop(phone, None)

    def clear(self) -> None:
        """Forget everything."""
        self._cache.clear()
        self._inflight.clear()

    async def close(self) -> None:
        """Cancel the lookups still running in the background."""
        tasks = list(self._inflight.values())
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
