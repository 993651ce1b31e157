"""The built-in CRM's endpoints (``/v1/contacts``, ``/v1/tasks``) and the outbox's
(``/v1/deliveries``).

Contacts and tasks exist only when the CRM is the built-in one (``ApiDeps.contacts``);
with another CRM they live there, and these endpoints answer 409 ``crm_not_builtin``.

``POST /v1/contacts`` takes JSON (a list of contacts) or CSV text, up to 2 MiB (the other
endpoints keep 16 KiB). JSON of the wrong shape (not a list, a field of the wrong type, an
unknown field) is a 422 and nothing is imported; a CSV without a usable header likewise.
Otherwise the answer is 200 with the report, even when every record was refused: each
refused record is listed with its number, field and reason, and the others are written.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from yarl import URL

from pbxbrain.api.common import CLIENT, json_answer, parse_query, read_json, validation_error
from pbxbrain.api.deps import DEPS
from pbxbrain.api.errors import ApiError
from pbxbrain.api.routes_calls import resolve_manager
from pbxbrain.api.schemas import ID_PATTERN
from pbxbrain.api.schemas_crm import (
    DELIVERY_ID_PATTERN,
    CloseTaskBody,
    ContactsImport,
    ContactsImportQuery,
    DeliveriesQuery,
    DeliveryList,
    PageLinks,
    RetryAccepted,
    RetryLinks,
    TaskList,
    TasksQuery,
    delivery_out,
    import_report_out,
    task_out,
)
from pbxbrain.config import Config
from pbxbrain.domain.phone import to_e164
from pbxbrain.ports import ContactBook, OutboxAdmin, StoreUnavailable

__all__ = [
    "CONTACTS_MAX_BODY_BYTES",
    "close_task",
    "get_task",
    "import_contacts",
    "list_failed_deliveries",
    "list_tasks",
    "retry_delivery",
]

log = logging.getLogger("pbxbrain.api")

CONTACTS_MAX_BODY_BYTES = 2 * 1024 * 1024
CONTACTS_MEDIA_TYPES = ("application/json", "text/csv")
FAILED_PATH = "/v1/deliveries/failed"

_ID = re.compile(ID_PATTERN)
_DELIVERY_ID = re.compile(DELIVERY_ID_PATTERN)
_MAX_MESSAGE = 500  # characters of an adapter's message put into a 422


def _book(request: web.Request) -> ContactBook:
    deps = request.app[DEPS]
    if deps.contacts is None:
        raise ApiError(409, f"contacts and tasks live in the configured CRM (crm.kind: "
                            f"{deps.config.crm.kind}), not in pbxbrain: import and manage them "
                            f"there", code="crm_not_builtin")
    return deps.contacts


def _outbox(request: web.Request) -> OutboxAdmin:
    outbox = request.app[DEPS].outbox
    if outbox is None:
        raise ApiError(409, "this pbxbrain has no outbox to show", code="not_available")
    return outbox


@contextlib.contextmanager
def _database(what: str) -> Iterator[None]:
    """StoreUnavailable as a 503 the client may retry."""
    try:
        yield
    except StoreUnavailable as exc:
        log.warning("%s: the database is unavailable: %s", what, exc)
        raise ApiError(503, "the database is unavailable right now; retry later",
                       code="unavailable", headers={"Retry-After": "5"}) from None


def _next_link(path: str, query: BaseModel, cursor: str) -> str:
    params = {name: str(value) for name, value in
              query.model_dump(mode="json", exclude_none=True, exclude={"cursor"}).items()}
    params["cursor"] = cursor
    return str(URL.build(path=path, query=params))


# --- contacts -------------------------------------------------------------------------------


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, up to ``limit`` bytes (the application's own limit is 16 KiB)."""
    too_large = ApiError(413, f"the request body is larger than {limit} bytes "
                              f"({limit // (1024 * 1024)} MiB); split the file",
                         code="payload_too_large")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _json_contacts(raw: bytes) -> list[dict[str, Any]]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON",
                       code="malformed_json") from None
    if not isinstance(data, list):
        raise ApiError(422, "the request body must be a JSON list of contacts, like "
                            '[{"phone": "+74951234567", "name": "...", "owner": "ivanov"}]',
                       code="validation_error")
    try:
        contacts = ContactsImport.model_validate(data)
    except ValidationError as exc:
        error = validation_error(exc)
        index = (error.field or "").split(".")[0]
        record = f"record {int(index) + 1}: " if index.isdigit() else ""
        raise ApiError(422, f"{record}{error.message}; nothing was imported",
                       code="validation_error", field=error.field) from None
    return [contact.model_dump(exclude_none=True) for contact in contacts.root]


def _csv_text(raw: bytes, charset: str | None) -> str:
    encoding = charset or "utf-8"
    try:
        name = codecs.lookup(encoding).name
        return raw.decode(name)
    except LookupError:
        raise ApiError(415, f"charset {encoding[:40]!r} is not a text encoding pbxbrain "
                            f"knows; send the CSV as UTF-8", code="unsupported_media_type",
                       field="Content-Type") from None
    except ValueError as exc:  # UnicodeDecodeError, and the like
        raise ApiError(400, f"the CSV is not valid {encoding[:40]} text ({exc}); send it as "
                            f"UTF-8 or name its charset (text/csv; charset=windows-1251)",
                       code="malformed_csv") from None


def _csv_contacts(raw: bytes, charset: str | None) -> str:
    text = _csv_text(raw, charset)
    # The contact book reads text that looks like JSON as JSON; a CSV header never does.
    if text.lstrip("\ufeff").strip().startswith(("[", "{")):
        raise ApiError(422, "the file cannot be imported: a CSV starts with its header "
                            "(phone,name,owner,crm_ref); send JSON as application/json; "
                            "nothing was imported", code="invalid_file", field="header")
    return text


async def import_contacts(request: web.Request) -> web.StreamResponse:
    """Create or update contacts of the built-in CRM from JSON or CSV."""
    deps, client = request.app[DEPS], request[CLIENT]
    book = _book(request)
    query = parse_query(request, ContactsImportQuery)
    media = request.content_type
    if media not in CONTACTS_MEDIA_TYPES:
        raise ApiError(415, "send the contacts as JSON (Content-Type: application/json) or CSV "
                            "(Content-Type: text/csv)", code="unsupported_media_type")
    raw = await _read_body(request, CONTACTS_MAX_BODY_BYTES)
    rows: str | Sequence[Mapping[str, Any]] = (
        _json_contacts(raw) if media == "application/json" else _csv_contacts(raw, request.charset))
    with _database("contact import"):
        report = await book.import_contacts(rows, dry_run=query.dry_run)
    whole = next((e for e in report.errors if e.row == 0), None)
    if whole is not None:
        message = whole.message[:_MAX_MESSAGE]
        raise ApiError(422, f"the file cannot be imported: {message}; nothing was imported",
                       code="invalid_file", field=whole.field or None)
    log.info("contact import by %s (%s%s): %d records, %d created, %d updated, %d refused",
             client.name, media, ", dry run" if query.dry_run else "", report.total,
             report.created, report.updated, len(report.errors))
    if not query.dry_run and (report.created or report.updated) and \
            deps.on_contacts_changed is not None:
        deps.on_contacts_changed()
    return json_answer(import_report_out(report))


# --- tasks ----------------------------------------------------------------------------------


def _phone(config: Config, value: str | None) -> str | None:
    if value is None:
        return None
    # E.164 when it parses; else as written, without formatting (as tasks store them).
    return to_e164(value, config.numbers.default_region or "ZZ") or re.sub(r"[ ()\-.]", "",
                                                                         value)


async def list_tasks(request: web.Request) -> web.StreamResponse:
    """Missed-call tasks, newest first, filtered, one page at a time."""
    config = request.app[DEPS].config
    book = _book(request)
    query = parse_query(request, TasksQuery)
    responsible = None if query.responsible is None else (
        resolve_manager(config, query.responsible) or query.responsible)
    with _database("task list"):
        tasks = await book.list_tasks(status=query.status, responsible=responsible,
                                      phone=_phone(config, query.phone),
                                      limit=query.limit + 1, before=query.cursor)
    more = len(tasks) > query.limit
    tasks = tasks[:query.limit]
    next_link = _next_link("/v1/tasks", query, tasks[-1].task_id) if more else None
    return json_answer(TaskList(tasks=[task_out(task) for task in tasks],
                                links=PageLinks(next=next_link)))


def _task_id(request: web.Request) -> str:
    task_id = request.match_info["task_id"]
    if not _ID.fullmatch(task_id):
        raise ApiError(404, "no such task (task ids are letters, digits, '_', '.', ':', '-')",
                       code="not_found")
    return task_id


async def get_task(request: web.Request) -> web.StreamResponse:
    """One task."""
    book = _book(request)
    task_id = _task_id(request)
    with _database("task"):
        task = await book.get_task(task_id)
    if task is None:
        raise ApiError(404, f"no task {task_id}", code="not_found")
    return json_answer(task_out(task))


async def close_task(request: web.Request) -> web.StreamResponse:
    """Close a task by hand (a closed task stays as it was)."""
    config, client = request.app[DEPS].config, request[CLIENT]
    book = _book(request)
    task_id = _task_id(request)
    by = client.name
    if request.body_exists:
        body = await read_json(request, CloseTaskBody)
        if body.by is not None:
            staff_id = resolve_manager(config, body.by)
            if staff_id is None:
                raise ApiError(422, f"no manager '{body.by}': give a staff id or a manager's "
                                    f"short number", code="unknown_manager", field="by")
            by = staff_id
    with _database("closing a task"):
        task = await book.close_task(task_id, by)
    if task is None:
        raise ApiError(404, f"no task {task_id}", code="not_found")
    log.info("task %s (%s) closed by hand: by %s, token %s", task_id, task.phone, by,
             client.name)
    return json_answer(task_out(task))


# --- deliveries -----------------------------------------------------------------------------


async def list_failed_deliveries(request: web.Request) -> web.StreamResponse:
    """Outbox messages that failed at least once and are not delivered, newest first."""
    outbox = _outbox(request)
    query = parse_query(request, DeliveriesQuery)
    before = int(query.cursor) if query.cursor is not None else None
    with _database("failed deliveries"):
        rows = await outbox.failed_deliveries(query.limit + 1, before_id=before)
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    next_link = _next_link(FAILED_PATH, query, str(rows[-1].id)) if more else None
    return json_answer(DeliveryList(deliveries=[delivery_out(row) for row in rows],
                                    links=PageLinks(next=next_link)))


async def retry_delivery(request: web.Request) -> web.StreamResponse:
    """Make a failed (or failing) delivery due now and wake the delivery worker."""
    deps, client = request.app[DEPS], request[CLIENT]
    outbox = _outbox(request)
    raw_id = request.match_info["delivery_id"]
    if not _DELIVERY_ID.fullmatch(raw_id):
        raise ApiError(404, "no such delivery (delivery ids are numbers)", code="not_found")
    delivery_id = int(raw_id)
    with _database("retrying a delivery"):
        queued = await outbox.retry_now(delivery_id)
    if not queued:
        raise ApiError(404, f"no undelivered delivery {delivery_id} (unknown, or delivered "
                            f"already)", code="not_found")
    log.info("outbox: delivery %d retried by hand (token %s)", delivery_id, client.name)
    if deps.on_delivery_retry is not None:
        deps.on_delivery_retry()
    return json_answer(RetryAccepted(delivery_id=delivery_id, status="queued",
                                     links=RetryLinks(failed=FAILED_PATH)), status=202)
