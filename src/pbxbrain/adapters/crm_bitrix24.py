"""Bitrix24 through an inbound webhook (``crm: {kind: bitrix24, webhook_url: …}``).

Every REST method is a POST of JSON to ``<webhook_url><method>``; the answer is
``{"result": …}`` or ``{"error": "CODE", "error_description": "…"}`` (HTTP 400, 401, 403,
404, 429, 503, …). docs/crm.md lists what is sent; the mapping from pbxbrain's values to
Bitrix24's fields is in one place, the "mapping" section below.

What a missed call becomes:

1. ``telephony.externalCall.searchCrmEntities`` finds the client by number (a CONTACT is
   preferred to a COMPANY, then a LEAD);
2. ``telephony.externalcall.register`` (TYPE 2 inbound, USER_ID of the responsible
   manager, ``CRM_CREATE=1`` so that a new number becomes a lead or contact,
   ``EXTERNAL_CALL_ID`` = pbxbrain's call id) then ``telephony.externalcall.finish``
   (``STATUS_CODE`` 304 missed, ``DURATION`` 0): the call in Bitrix24's statistics and
   the CRM activity. Bitrix24 documents these two as working "only in the context of an
   application": when the portal refuses them to the webhook (``WRONG_AUTH_TYPE``), they
   are skipped from then on (logged once) and a new number becomes a contact through
   ``crm.contact.add`` instead;
3. the open pbxbrain task of that client (``tasks.task.list`` by ``UF_CRM_TASK`` and the
   tag) gets a comment and, when this deadline is earlier, the new ``DEADLINE``; without
   one, ``tasks.task.add`` (TITLE, RESPONSIBLE_ID, DEADLINE, UF_CRM_TASK, TAGS).

``called_back`` completes the client's open pbxbrain tasks (``tasks.task.complete``, with a
comment saying who called back and when); ``log_call`` registers and finishes an answered
call (status 200, its duration and recording URL).

Errors: 5xx, 429 and the codes ``QUERY_LIMIT_EXCEEDED``, ``OPERATION_TIME_LIMIT``,
``INTERNAL_SERVER_ERROR`` mean "later" (``CrmUnavailable``, retried with backoff), and so
do authorisation and permission errors (401/403, a missing method or scope): the webhook
is wrong for every message alike, so messages keep waiting (health says why) until ops
fix the URL or its permissions. Any other refusal (HTTP 400 ``ERROR_CORE`` …) is about
this message: ``CrmRejected``. Bitrix24 has no idempotency keys: a message delivered
twice registers the call once within 30 minutes (same ``EXTERNAL_CALL_ID``) and finds
the task it made, so a repeat costs at most one extra comment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from pbxbrain.domain.model import CallOutcome, CallSummary, Contact, Direction, MissedCall
from pbxbrain.ports import CrmRejected, CrmUnavailable

__all__ = ["Bitrix24Crm", "Bitrix24Rejected", "Bitrix24Unavailable"]

log = logging.getLogger(__name__)

_TRANSIENT_CODES: Final = frozenset({
    "QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT", "INTERNAL_SERVER_ERROR",
    "ERROR_UNEXPECTED_ANSWER", "OVERLOAD_LIMIT",
})
_SETUP_CODES: Final = frozenset({
    "NO_AUTH_FOUND", "INVALID_CREDENTIALS", "INVALID_REQUEST", "insufficient_scope",
    "ACCESS_DENIED", "expired_token", "invalid_token", "user_access_error",
    "ERROR_METHOD_NOT_FOUND", "PORTAL_DELETED", "WRONG_AUTH_TYPE",
})
_WRONG_AUTH_TYPE: Final = "WRONG_AUTH_TYPE"
_COMPLETED: Final = 5  # tasks' REAL_STATUS "completed"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Bitrix24Unavailable(CrmUnavailable):
    """Bitrix24 cannot take the request now (or the webhook is set up wrong); ``code`` is
    Bitrix24's error code ("" for transport errors)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class Bitrix24Rejected(CrmRejected):
    """Bitrix24 refused this request for good; ``code`` is its error code."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- mapping
# pbxbrain's values -> Bitrix24's fields. Everything Bitrix24 receives is built here.

ENTITY_PREFIX: Final = {"CONTACT": "C", "COMPANY": "CO", "LEAD": "L", "DEAL": "D"}
_PREFERENCE: Final = ("CONTACT", "COMPANY", "LEAD")
TYPE_OUTBOUND: Final = 1
TYPE_INBOUND: Final = 2
STATUS_MISSED: Final = "304"
STATUS_ANSWERED: Final = "200"

_OUTCOME_TEXT: Final = {
    CallOutcome.MISSED: "nobody answered",
    CallOutcome.ABANDONED: "the caller hung up before an answer",
    CallOutcome.AFTER_HOURS: "after hours",
    CallOutcome.VOICEMAIL: "the caller left a voicemail",
}


@dataclass(frozen=True, slots=True)
class _Entity:
    """A CRM object found or created for a number."""

    type: str  # CONTACT | COMPANY | LEAD | DEAL
    id: int
    name: str = ""
    assigned_by: str | None = None

    @property
    def binding(self) -> str:
        """The object as ``UF_CRM_TASK`` names it: ``C_7``, ``L_4``, ``CO_5``, ``D_10``."""
        return f"{ENTITY_PREFIX.get(self.type, self.type)}_{self.id}"


def register_params(
    phone: str,
    user_id: str,
    call_id: str,
    started_at: datetime,
    *,
    incoming: bool = True,
    entity: _Entity | None = None,
) -> dict[str, Any]:
    """``telephony.externalcall.register``: the call, found or created in the CRM."""
    params: dict[str, Any] = {
        "USER_ID": int(user_id) if user_id.isdigit() else user_id,
        "PHONE_NUMBER": phone,
        "TYPE": TYPE_INBOUND if incoming else TYPE_OUTBOUND,
        "CALL_START_DATE": started_at.isoformat(),
        "CRM_CREATE": 1,
        "SHOW": 0,
        "EXTERNAL_CALL_ID": call_id,
    }
    if entity is not None and entity.type in _PREFERENCE:
        params["CRM_ENTITY_TYPE"] = entity.type
        params["CRM_ENTITY_ID"] = entity.id
    return params


def finish_params(
    bitrix_call_id: str,
    user_id: str,
    *,
    duration_s: int,
    status_code: str,
    record_url: str | None = None,
) -> dict[str, Any]:
    """``telephony.externalcall.finish``: how the call ended."""
    params: dict[str, Any] = {
        "CALL_ID": bitrix_call_id,
        "USER_ID": int(user_id) if user_id.isdigit() else user_id,
        "DURATION": duration_s,
        "STATUS_CODE": status_code,
    }
    if record_url:
        params["RECORD_URL"] = record_url
    return params


def contact_fields(phone: str, user_id: str, source: str | None) -> dict[str, Any]:
    """``crm.contact.add`` (when telephony registration is not allowed to the webhook)."""
    fields: dict[str, Any] = {
        "NAME": phone,
        "PHONE": [{"VALUE": phone, "VALUE_TYPE": "WORK"}],
        "ASSIGNED_BY_ID": int(user_id) if user_id.isdigit() else user_id,
        "SOURCE_ID": "CALL",
        "OPENED": "Y",
    }
    if source:
        fields["SOURCE_DESCRIPTION"] = f"pbxbrain line source: {source}"
    return fields


def task_fields(missed: MissedCall, user_id: str, entity: _Entity, tag: str) -> dict[str, Any]:
    """``tasks.task.add``: call the client back."""
    return {
        "TITLE": f"Call back {missed.phone} (missed call)",
        "DESCRIPTION": describe_miss(missed),
        "RESPONSIBLE_ID": int(user_id) if user_id.isdigit() else user_id,
        "DEADLINE": missed.due_at.isoformat(),
        "UF_CRM_TASK": [entity.binding],
        "TAGS": [tag],
    }


def describe_miss(missed: MissedCall) -> str:
    """The task's description (and the comment of a repeated miss)."""
    lines = [
        f"Missed call from {missed.phone} at {missed.at.isoformat()}: "
        f"{_OUTCOME_TEXT.get(missed.outcome, missed.outcome.value)}.",
        f"Call back before {missed.due_at.isoformat()}.",
    ]
    if missed.line:
        lines.append(f"Line: {missed.line}" + (f" ({missed.source})" if missed.source else ""))
    if missed.recording:
        lines.append(f"Voicemail recording: {missed.recording}")
    lines.append(f"pbxbrain call id: {missed.call_id}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the adapter


class Bitrix24Crm:
    """``Crm`` on Bitrix24's REST API through an inbound webhook; see the module docstring.

    ``crm_ids`` maps staff ids to Bitrix24 user ids (``staff.<id>.crm_id``); a manager
    without one, or no responsible at all, falls back to the contact's responsible user,
    then to the webhook's own user (the ``<user>`` of ``/rest/<user>/<code>/``).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        webhook_url: str,
        *,
        crm_ids: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        task_tag: str = "pbxbrain",
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._session = session
        self._base = webhook_url if webhook_url.endswith("/") else webhook_url + "/"
        parts = urlsplit(self._base)
        self._where = f"{parts.scheme}://{parts.netloc}"  # never the path: it is the token
        segments = [s for s in parts.path.split("/") if s]
        self._webhook_user = segments[1] if len(segments) >= 3 and segments[0] == "rest" else "1"
        self._crm_ids = dict(crm_ids or {})
        self._staff_of = {crm: staff for staff, crm in self._crm_ids.items()}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._tag = task_tag
        self._clock = clock
        self.telephony = True  # False once the portal refused telephony to this webhook

    # ----------------------------------------------------------------- REST

    async def call(self, method: str, params: Mapping[str, Any]) -> Any:
        """Call one REST method; its ``result``, or Bitrix24Unavailable/Bitrix24Rejected."""
        try:
            async with self._session.post(
                self._base + method,
                json=dict(params),
                headers={"Accept": "application/json"},
                timeout=self._timeout,
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError as exc:
            raise Bitrix24Unavailable(f"Bitrix24 {self._where}: {method} did not answer "
                                      f"within {self._timeout.total:g} s") from exc
        except aiohttp.ClientError as exc:
            raise Bitrix24Unavailable(f"Bitrix24 {self._where} unreachable ({method}): "
                                      f"{exc}") from exc
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and ("error" in body or "error_description" in body):
            raise _error(method, status, str(body.get("error") or ""),
                         str(body.get("error_description") or ""), self._where)
        if status >= 300 or not isinstance(body, dict) or "result" not in body:
            if 400 <= status < 500 and status not in (401, 403, 404, 408, 429):
                raise Bitrix24Rejected(f"Bitrix24 {self._where}: {method} answered HTTP "
                                       f"{status}")
            raise Bitrix24Unavailable(f"Bitrix24 {self._where}: {method} answered HTTP "
                                      f"{status} without the expected JSON result")
        return body["result"]

    # ----------------------------------------------------------------- helpers

    def _user_for(self, staff_id: str | None, entity: _Entity | None = None) -> str:
        if staff_id is not None and staff_id in self._crm_ids:
            return self._crm_ids[staff_id]
        if entity is not None and entity.assigned_by:
            return entity.assigned_by
        return self._webhook_user

    async def _search(self, phone: str) -> _Entity | None:
        result = await self.call("telephony.externalCall.searchCrmEntities",
                                 {"PHONE_NUMBER": phone})
        if not isinstance(result, list):
            raise Bitrix24Unavailable(f"Bitrix24 {self._where}: searchCrmEntities answered "
                                      f"{type(result).__name__}, expected a list")
        found: list[_Entity] = []
        for item in result:
            if not isinstance(item, dict):
                continue
            kind, ident = item.get("CRM_ENTITY_TYPE"), item.get("CRM_ENTITY_ID")
            if not isinstance(kind, str) or not str(ident).isdigit():
                continue
            assigned = item.get("ASSIGNED_BY_ID")
            found.append(_Entity(kind, int(str(ident)), str(item.get("NAME") or ""),
                                 str(assigned) if assigned not in (None, "", 0) else None))
        for kind in _PREFERENCE:
            for entity in found:
                if entity.type == kind:
                    return entity
        return found[0] if found else None

    async def _register(self, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Register a call; None when the portal does not allow telephony to the webhook."""
        if not self.telephony:
            return None
        try:
            result = await self.call("telephony.externalcall.register", params)
        except (Bitrix24Unavailable, Bitrix24Rejected) as exc:
            if exc.code != _WRONG_AUTH_TYPE:
                raise
            self.telephony = False
            log.warning("Bitrix24: the portal refuses telephony.externalcall.* to this "
                        "webhook (%s); calls are not registered in Bitrix24's statistics, "
                        "missed calls still become contacts and tasks", exc)
            return None
        if not isinstance(result, dict) or not result.get("CALL_ID"):
            raise Bitrix24Unavailable(f"Bitrix24 {self._where}: register answered no CALL_ID")
        return result

    @staticmethod
    def _registered_entity(result: Mapping[str, Any]) -> _Entity | None:
        kind, ident = result.get("CRM_ENTITY_TYPE"), result.get("CRM_ENTITY_ID")
        if isinstance(kind, str) and str(ident).isdigit():
            return _Entity(kind, int(str(ident)))
        created = result.get("CRM_CREATED_ENTITIES")
        if isinstance(created, list):
            for item in created:
                if isinstance(item, dict) and str(item.get("ENTITY_ID")).isdigit():
                    return _Entity(str(item.get("ENTITY_TYPE")), int(str(item["ENTITY_ID"])))
        return None

    async def _open_tasks(self, entity: _Entity) -> list[Mapping[str, Any]]:
        result = await self.call("tasks.task.list", {
            "filter": {"UF_CRM_TASK": entity.binding, "TAG": self._tag,
                       "!REAL_STATUS": _COMPLETED},
            "select": ["ID", "DEADLINE", "RESPONSIBLE_ID"],
        })
        tasks = result.get("tasks") if isinstance(result, dict) else None
        if not isinstance(tasks, list):
            raise Bitrix24Unavailable(f"Bitrix24 {self._where}: tasks.task.list answered no "
                                      f"task list")
        return [t for t in tasks if isinstance(t, dict) and str(t.get("id", "")).isdigit()]

    # ----------------------------------------------------------------- the Crm port

    async def find_contact(self, phone: str) -> Contact | None:
        """The client found by number, its responsible user mapped to a staff id."""
        entity = await self._search(phone)
        if entity is None:
            return None
        owner = self._staff_of.get(entity.assigned_by) if entity.assigned_by else None
        return Contact(phone=phone, name=entity.name, owner=owner, crm_ref=entity.binding)

    async def missed_call(self, missed: MissedCall, key: str) -> None:
        """Register the missed call, make sure the client exists, and task the manager."""
        entity = await self._search(missed.phone)
        user = self._user_for(missed.responsible, entity)
        registered = await self._register(
            register_params(missed.phone, user, missed.call_id, missed.at, entity=entity))
        if registered is not None:
            await self.call("telephony.externalcall.finish", finish_params(
                str(registered["CALL_ID"]), user, duration_s=0, status_code=STATUS_MISSED))
            entity = entity or self._registered_entity(registered)
        if entity is None:
            created = await self.call("crm.contact.add", {
                "fields": contact_fields(missed.phone, user, missed.source)})
            if not str(created).isdigit():
                raise Bitrix24Unavailable(f"Bitrix24 {self._where}: crm.contact.add answered "
                                          f"no contact id")
            entity = _Entity("CONTACT", int(str(created)))
        open_tasks = await self._open_tasks(entity)
        if not open_tasks:
            await self.call("tasks.task.add",
                            {"fields": task_fields(missed, user, entity, self._tag)})
            return
        task = open_tasks[0]
        task_id = int(str(task["id"]))
        await self.call("task.commentitem.add", {
            "TASKID": task_id,
            "FIELDS": {"POST_MESSAGE": "Missed again.\n" + describe_miss(missed)},
        })
        if _earlier(missed.due_at, task.get("deadline")):
            await self.call("tasks.task.update", {
                "taskId": task_id, "fields": {"DEADLINE": missed.due_at.isoformat()}})

    async def called_back(
        self, phone: str, call_id: str, by: str | None, at: datetime, key: str
    ) -> None:
        """Complete the client's open pbxbrain tasks, saying who called back and when."""
        entity = await self._search(phone)
        if entity is None:
            return
        for task in await self._open_tasks(entity):
            task_id = int(str(task["id"]))
            await self.call("task.commentitem.add", {
                "TASKID": task_id,
                "FIELDS": {"POST_MESSAGE": f"Called back by {by or 'a manager'} at "
                                           f"{at.isoformat()} (pbxbrain call id {call_id})."},
            })
            await self.call("tasks.task.complete", {"taskId": task_id})

    async def log_call(self, call: CallSummary, recording_url: str | None, key: str) -> None:
        """Register and finish an answered call (duration, recording); others are skipped
        (a missed call is ``missed_call``'s)."""
        if call.answered_at is None or call.ended_at is None or not call.answered_by:
            return
        incoming = call.direction is not Direction.OUTBOUND
        client = call.caller if incoming else call.dialed
        user = self._user_for(call.answered_by)
        registered = await self._register(
            register_params(client, user, call.call_id, call.started_at, incoming=incoming))
        if registered is None:
            return
        duration = max(0, round((call.ended_at - call.answered_at).total_seconds()))
        await self.call("telephony.externalcall.finish", finish_params(
            str(registered["CALL_ID"]), user, duration_s=duration,
            status_code=STATUS_ANSWERED, record_url=recording_url))

    async def screen_pop(self, event: Mapping[str, object]) -> None:
        """Nothing: Bitrix24's call card needs an application context (SHOW=1 of
        ``register``), which an inbound webhook does not have."""


def _error(method: str, status: int, code: str, description: str, where: str) -> CrmUnavailable:
    message = f"Bitrix24 {where}: {method}: {code or 'HTTP ' + str(status)}" + (
        f": {description}" if description else "")
    if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
        return Bitrix24Unavailable(message + " (retrying later)", code)
    if status in (401, 403, 404) or code in _SETUP_CODES:
        return Bitrix24Unavailable(message + " (check the webhook URL and its permissions)",
                                   code)
    return Bitrix24Rejected(message, code)


def _earlier(due: datetime, deadline: object) -> bool:
    """Is ``due`` earlier than a task's ``deadline`` (ISO 8601 text; none: yes)?"""
    if not isinstance(deadline, str) or not deadline:
        return True
    try:
        current = datetime.fromisoformat(deadline)
    except ValueError:
        return False
    if current.tzinfo is None:
        return False
    return due < current

