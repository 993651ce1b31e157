"""A CRM reached by signed webhooks (``crm: {kind: webhook}``); the format is in docs/crm.md.

Events are POSTed as JSON to ``url``:

    {"event": "missed_call", "key": "missed:<call id>", "sent_at": "<ISO 8601>",
     "data": {...}}

with the headers

* ``X-Pbxbrain-Timestamp``: Unix seconds when the request was signed;
* ``X-Pbxbrain-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`` over
  the exact body bytes (``verify_signature`` checks it, for receivers written in Python);
* ``Idempotency-Key``: the outbox key; the same key may come twice (after a retry or a
  restart) and must be applied once.

The answer: 2xx is delivered; 408, 429 and 5xx, timeouts and connection errors are
``CrmUnavailable`` (retried with backoff); any other 4xx is ``CrmRejected`` (this message
is refused for good: the outbox marks it failed, ops can retry it by hand).

Owner lookups (``find_contact``) GET ``lookup_url?phone=<E.164>``, signed the same way over
the raw query string; the answer is ``{"phone", "name", "owner", "crm_ref"}`` (404: no such
contact). ``owner`` is the manager's user id in the CRM, mapped to a staff id through
``staff.<id>.crm_id`` (a staff id itself is accepted too).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from pbxbrain.domain.model import CallSummary, Contact, MissedCall
from pbxbrain.ports import CrmRejected, CrmUnavailable

__all__ = ["WebhookCrm", "sign", "verify_signature"]

log = logging.getLogger(__name__)

TIMESTAMP_HEADER: Final = "X-Pbxbrain-Timestamp"
SIGNATURE_HEADER: Final = "X-Pbxbrain-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
_RETRYABLE_4XX: Final = frozenset({408, 429})
_ERROR_BODY_CHARS: Final = 300


def _utcnow() -> datetime:
    return datetime.now(UTC)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Pbxbrain-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of
    ``timestamp + "." + body`` keyed with ``secret``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: datetime | None = None,
    tolerance_s: float = 300.0,
) -> bool:
    """Is ``signature`` right for ``timestamp`` and ``body``, and the timestamp fresh?

    For receivers: check it before trusting a request (constant-time comparison); the
    timestamp window stops replays of old requests.
    """
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    current = (now or _utcnow()).timestamp()
    if abs(current - stamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class _LookupAnswer(BaseModel):
    """The lookup answer; unknown keys are ignored, numbers accepted where text is due."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    phone: str
    name: str | None = None
    owner: str | None = None
    crm_ref: str | None = None


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class WebhookCrm:
    """``Crm`` over signed JSON webhooks; see the module docstring.

    ``crm_ids`` maps staff ids to the CRM's user ids (``staff.<id>.crm_id``); events carry
    both. ``timeout_s`` bounds each event request, ``lookup_timeout_s`` each lookup (the
    call path bounds lookups further, see ``crm_factory.CachedLookup``).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        secret: str,
        *,
        lookup_url: str | None = None,
        crm_ids: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        lookup_timeout_s: float = 5.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._session = session
        self._url = url
        self._secret = secret
        self._lookup_url = lookup_url
        self._crm_ids = dict(crm_ids or {})
        self._staff_of = {crm: staff for staff, crm in self._crm_ids.items()}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._lookup_timeout = aiohttp.ClientTimeout(total=lookup_timeout_s)
        self._clock = clock
        self._unknown_owners: set[str] = set()

    # ----------------------------------------------------------------- plumbing

    def _signed_headers(self, body: bytes) -> dict[str, str]:
        timestamp = str(int(self._clock().timestamp()))
        return {
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }

    @staticmethod
    def _where(url: str) -> str:
        """The URL without its query (which may hold a token), for messages and logs."""
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    async def _post(self, event: str, key: str, data: Mapping[str, Any]) -> None:
        envelope = {
            "event": event,
            "key": key,
            "sent_at": self._clock().isoformat(),
            "data": data,
        }
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"),
                          default=_json_default).encode()
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: key,
            **self._signed_headers(body),
        }
        where = self._where(self._url)
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                detail = (await resp.text(errors="replace"))[:_ERROR_BODY_CHARS].strip()
                status = resp.status
        except TimeoutError as exc:
            raise CrmUnavailable(
                f"webhook {where} did not answer {event} within "
                f"{self._timeout.total:g} s") from exc
        except aiohttp.ClientError as exc:
            raise CrmUnavailable(f"webhook {where} unreachable for {event}: {exc}") from exc
        message = f"webhook {where} answered {event} with HTTP {status}" + (
            f": {detail}" if detail else "")
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise CrmRejected(message)
        raise CrmUnavailable(message)

    # ----------------------------------------------------------------- the Crm port

    async def find_contact(self, phone: str) -> Contact | None:
        """GET ``lookup_url?phone=…``: the contact, None (404, or no lookup_url), or
        CrmUnavailable (error, timeout, an answer that is not the documented JSON)."""
        if self._lookup_url is None:
            return None
        query = urlencode({"phone": phone})
        separator = "&" if urlsplit(self._lookup_url).query else "?"
        url = f"{self._lookup_url}{separator}{query}"
        where = self._where(self._lookup_url)
        try:
            async with self._session.get(
                url,
                headers={"Accept": "application/json", **self._signed_headers(query.encode())},
                timeout=self._lookup_timeout,
            ) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    detail = (await resp.text(errors="replace"))[:_ERROR_BODY_CHARS].strip()
                    raise CrmUnavailable(f"lookup {where} answered HTTP {resp.status}"
                                         + (f": {detail}" if detail else ""))
                raw = await resp.read()
        except TimeoutError as exc:
            raise CrmUnavailable(f"lookup {where} did not answer within "
                                 f"{self._lookup_timeout.total:g} s") from exc
        except aiohttp.ClientError as exc:
            raise CrmUnavailable(f"lookup {where} unreachable: {exc}") from exc
        try:
            parsed = json.loads(raw)
            if parsed is None:
                return None
            answer = _LookupAnswer.model_validate(parsed)
        except (ValueError, ValidationError) as exc:
            reason = (
                "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                          for e in exc.errors())
                if isinstance(exc, ValidationError)
                else "not JSON"
            )
            raise CrmUnavailable(
                f"lookup {where} answered something else than "
                f'{{"phone", "name", "owner", "crm_ref"}}: {reason}') from exc
        return Contact(
            phone=phone,
            name=answer.name or "",
            owner=self._staff_id(answer.owner),
            crm_ref=answer.crm_ref,
        )

    def _staff_id(self, owner: str | None) -> str | None:
        if not owner:
            return None
        if owner in self._staff_of:
            return self._staff_of[owner]
        if owner in self._crm_ids:
            return owner
        if owner not in self._unknown_owners:
            self._unknown_owners.add(owner)
            log.warning("webhook CRM: owner %r is no manager of pbxbrain (no staff has this "
                        "crm_id); calls of its contacts are routed without an owner", owner)
        return None

    async def missed_call(self, missed: MissedCall, key: str) -> None:
        """POST a ``missed_call`` event."""
        await self._post("missed_call", key, {
            "call_id": missed.call_id,
            "phone": missed.phone,
            "outcome": missed.outcome.value,
            "at": _iso(missed.at),
            "due_at": _iso(missed.due_at),
            "responsible": missed.responsible,
            "responsible_crm_id": self._crm_id(missed.responsible),
            "line": missed.line,
            "source": missed.source,
            "recording": missed.recording,
        })

    def _crm_id(self, staff_id: str | None) -> str | None:
        if staff_id is None:
            return None
        return self._crm_ids.get(staff_id, staff_id)

    async def called_back(
        self, phone: str, call_id: str, by: str | None, at: datetime, key: str
    ) -> None:
        """POST a ``called_back`` event."""
        await self._post("called_back", key, {
            "phone": phone,
            "call_id": call_id,
            "by": by,
            "by_crm_id": self._crm_id(by),
            "at": _iso(at),
        })

    async def log_call(self, call: CallSummary, recording_url: str | None, key: str) -> None:
        """POST a ``call_finished`` event."""
        await self._post("call_finished", key, {
            "call_id": call.call_id,
            "direction": call.direction.value,
            "caller": call.caller,
            "dialed": call.dialed,
            "started_at": _iso(call.started_at),
            "answered_at": _iso(call.answered_at),
            "ended_at": _iso(call.ended_at),
            "outcome": call.outcome.value if call.outcome is not None else None,
            "answered_by": call.answered_by,
            "answered_by_crm_id": self._crm_id(call.answered_by),
            "line": call.line,
            "source": call.source,
            "recording_url": recording_url,
        })

    async def screen_pop(self, event: Mapping[str, object]) -> None:
        """POST a ``screen_pop`` event; best effort: failures are logged, never raised."""
        key = f"screen_pop:{event.get('call_id', '')}:{event.get('staff_id', '')}"
        try:
            await self._post("screen_pop", key, dict(event))
        except CrmUnavailable as exc:
            log.warning("webhook CRM: screen pop not delivered: %s", exc)
