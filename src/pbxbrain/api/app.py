"""The HTTP API application: its route table and factory.

``ROUTES`` is the one list of endpoints. ``make_http_app`` registers each (behind the
token guard when it has a scope) and ``/v1/openapi.json`` is generated from the same list.
Only ``/v1/health`` and ``/v1/openapi.json`` answer without a token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pbxbrain import __version__
from pbxbrain.api.common import Handler, guarded
from pbxbrain.api.deps import DEPS, HEALTH, STATE, ApiDeps, ApiState, HealthProbe
from pbxbrain.api.errors import MAX_BODY_BYTES, error_middleware, security_headers
from pbxbrain.api.openapi import Header, Operation, Param, Reply, build_document, error_replies
from pbxbrain.api.routes_calls import create_call, get_call, list_calls
from pbxbrain.api.routes_crm import (
    close_task,
    get_task,
    import_contacts,
    list_failed_deliveries,
    list_tasks,
    retry_delivery,
)
from pbxbrain.api.routes_events import close_streams, stream_events
from pbxbrain.api.routes_recordings import MEDIA_TYPES, OCTET_STREAM, get_recording
from pbxbrain.api.schemas import (
    ID_PATTERN,
    CallDetail,
    CallList,
    CallsQuery,
    EventsQuery,
    Health,
    OriginateAccepted,
    OriginateBody,
)
from pbxbrain.api.schemas_crm import (
    DELIVERY_ID_PATTERN,
    CloseTaskBody,
    ContactsImport,
    ContactsImportQuery,
    DeliveriesQuery,
    DeliveryList,
    ImportReportOut,
    RetryAccepted,
    TaskList,
    TaskOut,
    TasksQuery,
)

__all__ = [
    "ROUTES",
    "ApiDeps",
    "Route",
    "health",
    "make_health_app",
    "make_http_app",
    "openapi_document",
]

log = logging.getLogger("pbxbrain.api")

OPENAPI = web.AppKey[dict[str, Any]]("openapi")


async def health(request: web.Request) -> web.Response:
    """200 when ARI, AMI and the database are all fine, else 503 with what is wrong."""
    checks = dict(await request.app[HEALTH]())
    ready = all(v == "ok" for v in checks.values())
    body = {
        "status": "ok" if ready else "unavailable",
        "version": __version__,
        "checks": checks,
    }
    return web.json_response(body, status=200 if ready else 503)


async def openapi_json(request: web.Request) -> web.Response:
    """This API's OpenAPI 3.1 document."""
    return web.json_response(request.app[OPENAPI])


@dataclass(frozen=True, slots=True)
class Route:
    """An endpoint: its documentation and its handler.

    ``rate_limited``: counts against the token's ``read_per_token`` limit (default: GETs).
    """

    op: Operation
    handler: Handler
    rate_limited: bool | None = None


_ID_SCHEMA = {"type": "string", "pattern": ID_PATTERN}
_AUDIO = {media: {"type": "string", "format": "binary"}
          for media in (*dict.fromkeys(MEDIA_TYPES.values()), OCTET_STREAM)}
_EVENTS_DOC = """\
A `text/event-stream` that stays open. Each event:

    id: <epoch>-<sequence>
    event: <type>
    data: <one JSON object>

Types: `call.ringing`, `call.answered`, `call.ended`, `screen_pop` (shapes in docs/api.md);
ignore types you do not know. A comment line `: keep-alive` comes after 15 s without
events. Reconnect with `Last-Event-ID` to get what you missed (while the server keeps it).
A client that reads too slowly is disconnected."""
_TASK_ID = Param("task_id", "path", "The task id.", {**_ID_SCHEMA, "examples": ["42"]})
_CSV_EXAMPLE = ("phone,name,owner,crm_ref\n"
                "+74951234567,Romashka LLC,ivanov,C-1042\n"
                "8 916 123-45-67,Ivan Petrov,,\n")
_NOT_BUILTIN = "The CRM is not the built-in one: contacts and tasks live there " \
               "(crm_not_builtin)."

ROUTES: tuple[Route, ...] = (
    Route(Operation(
        "GET", "/v1/health", "getHealth", "Health of the daemon",
        "200 when ARI, AMI and the database are fine; 503 (same shape) with what is wrong.",
        None, (Reply(200, "All components are fine.", Health),
               Reply(503, "Something is wrong; checks say what.", Health)),
        tags=("health",)), health),
    Route(Operation(
        "GET", "/v1/openapi.json", "getOpenApi", "This document", "The OpenAPI 3.1 document.",
        None, (Reply(200, "The document.", content={"application/json": {"type": "object"}}),),
        tags=("meta",)), openapi_json),
    Route(Operation(
        "POST", "/v1/calls", "createCall", "Click-to-call",
        "Rings the manager's phone; when the manager answers, dials the client's number "
        "with the department's caller ID, bridges and records. Answers 202 at once with the "
        "call id. Send an Idempotency-Key to make retries safe: the same key and body within "
        "24 h gets the same answer and starts no second call; the same key with another "
        "body is a 409.",
        "originate",
        (Reply(202, "The manager's phone is ringing.", OriginateAccepted,
               headers=(Header("Location", "The call's URL."),)),
         *error_replies(400, 401, 403, 409, 413, 415, 422, 429, 503,
                        text={409: "The manager already has a click-to-call in progress, "
                                   "the Idempotency-Key was used for another request, or "
                                   "the call was refused."})),
        body=OriginateBody,
        params=(Param("Idempotency-Key", "header", "Makes retries safe (1-128 of "
                      "A-Z a-z 0-9 _ . : -; a UUID is fine).",
                      {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"}),),
        tags=("calls",)), create_call),
    Route(Operation(
        "GET", "/v1/calls", "listCalls", "List calls",
        "Calls, newest first. Follow links.next for the next page until it is null; a page "
        "may hold fewer than `limit` calls when filtering by manager or line.",
        "read", (Reply(200, "A page of calls.", CallList),
                 *error_replies(401, 403, 422, 429)),
        query=CallsQuery, tags=("calls",)), list_calls),
    Route(Operation(
        "GET", "/v1/calls/{call_id}", "getCall", "One call",
        "The call with its timeline (journal, oldest first) and links to its recordings.",
        "read", (Reply(200, "The call.", CallDetail), *error_replies(401, 403, 404, 429)),
        params=(Param("call_id", "path", "The call id.",
                      {**_ID_SCHEMA, "examples": ["c0ffee00c0ffee00"]}),),
        tags=("calls",)), get_call),
    Route(Operation(
        "GET", "/v1/recordings/{recording_id}", "getRecording", "A recording's audio",
        "Streams the audio with its media type. Honours one byte range (Range: bytes=a-b, "
        "a- or -n): 206 with Content-Range; 416 when the range lies outside the file.",
        "recordings",
        (Reply(200, "The whole file.", content=_AUDIO,
               headers=(Header("Accept-Ranges", "Always bytes."),)),
         Reply(206, "One range of the file.", content=_AUDIO,
               headers=(Header("Content-Range", "bytes first-last/size.",
                               {"type": "string",
                                "pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"}),
                        Header("Accept-Ranges", "Always bytes."))),
         *error_replies(401, 403, 404, 416, 429)),
        params=(Param("recording_id", "path", "The recording id (from a call's recordings).",
                      {**_ID_SCHEMA, "examples": ["c0ffee00c0ffee00-bridge"]}),
                Param("Range", "header", "One byte range, e.g. bytes=0-1023.",
                      {"type": "string"}),
                Param("If-Range", "header", "Apply Range only if the file still has this "
                      "ETag or Last-Modified.", {"type": "string"})),
        tags=("recordings",)), get_recording),
    Route(Operation(
        "GET", "/v1/events", "streamEvents", "Call events (server-sent events)",
        _EVENTS_DOC, "read",
        (Reply(200, "The event stream.", content={"text/event-stream": {"type": "string"}}),
         *error_replies(401, 403, 422, 429, 503,
                        text={429: "Too many requests, or too many open streams for this "
                                   "token."})),
        query=EventsQuery,
        params=(Param("Last-Event-ID", "header", "The id of the last event received.",
                      {"type": "string"}),),
        tags=("events",)), stream_events),
    Route(Operation(
        "POST", "/v1/contacts", "importContacts", "Import contacts (built-in CRM)",
        "Creates contacts for new numbers and updates known ones with the values given. The "
        "body is JSON (a list of contacts) or CSV text (Content-Type: text/csv; a header "
        "row naming phone and any of name, owner, crm_ref; comma, semicolon or tab "
        "separated; UTF-8 unless the charset says otherwise), at most 2 MiB. Records "
        "refused (a bad number, an unknown owner, a number given twice, ...) are listed in "
        "errors; the others are written, in one transaction. The answer is 200 with the "
        "report even when every record was refused. JSON of the wrong shape, or a CSV "
        "without a usable header, is a 422 and nothing is imported. dry_run=true only "
        "checks and counts.",
        "contacts",
        (Reply(200, "The import report.", ImportReportOut),
         *error_replies(400, 401, 403, 409, 413, 415, 422, 429, 503,
                        text={400: "The body is not valid JSON, or the CSV not valid text in "
                                   "its charset.",
                              409: _NOT_BUILTIN,
                              413: "The body is larger than 2 MiB.",
                              415: "The body is neither application/json nor text/csv.",
                              422: "The JSON is not a list of contacts, or the CSV has no "
                                   "usable header; field names what is at fault."})),
        query=ContactsImportQuery, body=ContactsImport,
        body_content={"text/csv": {"type": "string", "examples": [_CSV_EXAMPLE]}},
        tags=("contacts",)), import_contacts, rate_limited=True),
    Route(Operation(
        "GET", "/v1/tasks", "listTasks", "List missed-call tasks (built-in CRM)",
        "Tasks, newest first. Follow links.next for the next page until it is null.",
        "read", (Reply(200, "A page of tasks.", TaskList),
                 *error_replies(401, 403, 409, 422, 429, 503, text={409: _NOT_BUILTIN})),
        query=TasksQuery, tags=("tasks",)), list_tasks),
    Route(Operation(
        "GET", "/v1/tasks/{task_id}", "getTask", "One missed-call task (built-in CRM)",
        "The task.", "read",
        (Reply(200, "The task.", TaskOut),
         *error_replies(401, 403, 404, 409, 429, 503, text={409: _NOT_BUILTIN})),
        params=(_TASK_ID,), tags=("tasks",)), get_task),
    Route(Operation(
        "POST", "/v1/tasks/{task_id}/close", "closeTask", "Close a task by hand (built-in CRM)",
        "Marks the task done, by the manager given in the optional body (else by the API "
        "token's name), with no call-back delay. Closing a task that is already done "
        "changes nothing and answers the task as it is.",
        "contacts",
        (Reply(200, "The task, now done.", TaskOut),
         *error_replies(400, 401, 403, 404, 409, 413, 415, 422, 429, 503,
                        text={409: _NOT_BUILTIN})),
        body=CloseTaskBody, body_required=False, params=(_TASK_ID,),
        tags=("tasks",)), close_task, rate_limited=True),
    Route(Operation(
        "GET", "/v1/deliveries/failed", "listFailedDeliveries", "Failed deliveries to the CRM",
        "Outbox messages (missed calls, call-backs, finished calls) that failed at least "
        "once and are not delivered, newest first: retrying (retried on their own, with "
        "backoff) or failed (refused by the CRM; retried only by hand). Follow links.next "
        "until it is null.",
        "read", (Reply(200, "A page of failed deliveries.", DeliveryList),
                 *error_replies(401, 403, 409, 422, 429, 503)),
        query=DeliveriesQuery, tags=("deliveries",)), list_failed_deliveries),
    Route(Operation(
        "POST", "/v1/deliveries/{delivery_id}/retry", "retryDelivery", "Retry a delivery now",
        "Makes an undelivered message due now (also one the CRM refused) and wakes the "
        "delivery worker. 404 when there is no such undelivered message.",
        "admin",
        (Reply(202, "The delivery is queued.", RetryAccepted),
         *error_replies(401, 403, 404, 409, 429, 503)),
        params=(Param("delivery_id", "path", "The delivery id (from the failed list).",
                      {"type": "string", "pattern": DELIVERY_ID_PATTERN,
                       "examples": ["12"]}),),
        tags=("deliveries",)), retry_delivery, rate_limited=True),
)

_DESCRIPTION = """\
The HTTP API of pbxbrain, for CRMs: click-to-call, calls and their timelines, recordings,
live call events; the built-in CRM's contacts and tasks; failed deliveries to the CRM.
Every endpoint except /v1/health and this document needs `Authorization: Bearer <token>`.
Every error is `{"error": {"code", "message", "field"?}}`."""


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of ``ROUTES``."""
    return build_document([route.op for route in ROUTES], version=__version__,
                          description=_DESCRIPTION)


def _base_app(probe: HealthProbe) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware])
    app.on_response_prepare.append(security_headers)
    app[HEALTH] = probe
    return app


def make_http_app(deps: ApiDeps) -> web.Application:
    """Build the whole HTTP API on ``deps``."""
    app = _base_app(deps.health)
    app[DEPS] = deps
    app[STATE] = ApiState.build(deps)
    app[OPENAPI] = openapi_document()
    for route in ROUTES:
        op = route.op
        handler = route.handler
        if op.scope is not None:
            limited = route.rate_limited if route.rate_limited is not None \
                else op.method == "GET"
            handler = guarded(handler, op.scope, read_limited=limited)
        app.router.add_route(op.method, op.path, handler, name=op.operation_id)
    # /v1/health keeps answering HEAD, as it always did.
    app.router.add_route("HEAD", "/v1/health", health)
    app.on_shutdown.append(close_streams)
    if not len(app[STATE].tokens):
        log.warning("no API tokens configured (http.tokens): every endpoint but /v1/health "
                    "answers 401")
    return app


def make_health_app(probe: HealthProbe) -> web.Application:
    """An application with only ``/v1/health`` (for a daemon without the full API)."""
    app = _base_app(probe)
    app.router.add_get("/v1/health", health)
    return app

