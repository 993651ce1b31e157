"""``/v1/calls``: click-to-call (POST), the list of calls and one call with its timeline.

``POST /v1/calls`` checks, in this order, before anything reaches the ``ClickToCall``
port: token and scope (guard) → body (415/413/400/422) → Idempotency-Key (replay or 409)
→ per-token rate limit (429) → manager exists and has a phone (422) → number allowed
(422, ``domain.dialing``) → manager has no click-to-call in progress (409) → per-manager
rate limit (429). Only then is ``ClickToCall.start`` called.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from datetime import UTC, datetime

from aiohttp import web
from yarl import URL

from pbxbrain.api.common import CLIENT, json_answer, parse_query, read_json, retry_after
from pbxbrain.api.deps import DEPS, STATE
from pbxbrain.api.errors import ApiError
from pbxbrain.api.idempotency import StoredAnswer
from pbxbrain.api.schemas import (
    ID_PATTERN,
    NUMBER_PATTERN,
    CallLinks,
    CallList,
    CallListLinks,
    CallsQuery,
    OriginateAccepted,
    OriginateBody,
    call_detail,
    call_out,
    call_path,
)
from pbxbrain.config import Config
from pbxbrain.domain.dialing import DialRefused, validate_dial_number
from pbxbrain.domain.model import CallSummary, OriginateRequest
from pbxbrain.domain.phone import to_e164
from pbxbrain.ports import ClickToCallRefused, ClickToCallUnavailable

__all__ = ["create_call", "get_call", "list_calls", "resolve_manager"]

log = logging.getLogger("pbxbrain.api")

_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_ID = re.compile(ID_PATTERN)
_NUMBER = re.compile(NUMBER_PATTERN)
_SCAN_BATCH = 200
_SCAN_LIMIT = 2000  # rows looked at for one page when filtering by manager or line


def resolve_manager(config: Config, ref: str) -> str | None:
    """The staff id of ``ref`` (a staff id or a manager's short number), or None."""
    if ref in config.staff:
        return ref
    for staff_id, staff in config.staff.items():
        if staff.short == ref:
            return staff_id
    return None


def _fingerprint(body: OriginateBody) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _limited(what: str, rate: int, wait: float) -> ApiError:
    return ApiError(429, f"too many click-to-call requests for this {what} ({rate} a "
                         f"minute); retry in {max(1, math.ceil(wait))} s",
                    code="rate_limited", headers=retry_after(wait))


async def create_call(request: web.Request) -> web.StreamResponse:
    """Click-to-call: ring the manager, then the client."""
    state, client = request.app[STATE], request[CLIENT]
    body = await read_json(request, OriginateBody)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(422, "Idempotency-Key must be 1 to 128 letters, digits, '_', '.', ':' "
                            "or '-' (a UUID is fine)", field="Idempotency-Key",
                       code="validation_error")
    if key is not None:
        stored = state.idempotency.begin(client.name, key, _fingerprint(body))
        if stored is not None:
            return web.json_response(dict(stored.body), status=stored.status,
                                     headers={**stored.headers, "Idempotent-Replayed": "true"})
    try:
        answer = await _originate(request, body, key)
    except BaseException:
        if key is not None:
            state.idempotency.abandon(client.name, key)
        raise
    if key is not None:
        state.idempotency.finish(client.name, key, answer)
    return web.json_response(dict(answer.body), status=answer.status,
                             headers=dict(answer.headers))


async def _originate(request: web.Request, body: OriginateBody, key: str | None) -> StoredAnswer:
    deps, state, client = request.app[DEPS], request.app[STATE], request[CLIENT]
    config = deps.config
    limits = config.http.rate_limits
    wait = state.originate_per_token.acquire(client.name)
    if wait is not None:
        raise _limited("token", limits.originate_per_token, wait)
    staff_id = resolve_manager(config, body.manager)
    if staff_id is None:
        raise ApiError(422, f"no manager '{body.manager}': give a staff id or a manager's "
                            f"short number", code="unknown_manager", field="manager")
    if config.staff[staff_id].phone is None:
        raise ApiError(422, f"manager '{staff_id}' has no phone to ring (staff.{staff_id}."
                            f"phone is not set)", code="manager_has_no_phone", field="manager")
    try:
        number = validate_dial_number(body.number, config.numbers.default_region,
                                      config.numbers.dial_allowed)
    except DialRefused as exc:
        raise ApiError(422, f"number refused: {exc.reason}", code="number_refused",
                       field="number") from None
    ctc = deps.click_to_call
    in_progress = ctc.active_for(staff_id) + state.originating[staff_id]
    if in_progress >= limits.originate_concurrent_per_manager:
        raise ApiError(409, f"manager '{staff_id}' already has a click-to-call in progress; "
                            f"retry when it ends", code="manager_busy", field="manager")
    wait = state.originate_per_manager.acquire(staff_id)
    if wait is not None:
        raise _limited("manager", limits.originate_per_manager, wait)
    crm = body.crm.model_dump(exclude_none=True) if body.crm is not None else {}
    originate = OriginateRequest(staff_id=staff_id, number=number, crm_ids=crm,
                                 idempotency_key=key, requested_by=client.name)
    state.originating[staff_id] += 1
    try:
        call_id = await ctc.start(originate)
    except ClickToCallUnavailable as exc:
        log.warning("click-to-call %s -> %s unavailable: %s", staff_id, number, exc)
        raise ApiError(503, "click-to-call is unavailable right now (the PBX cannot be "
                            "reached); retry later", code="unavailable",
                       headers={"Retry-After": "5"}) from None
    except ClickToCallRefused as exc:
        raise ApiError(409, f"click-to-call refused: {exc}", code="refused") from None
    finally:
        state.originating[staff_id] -= 1
        if state.originating[staff_id] <= 0:
            del state.originating[staff_id]
    if not _ID.fullmatch(call_id):
        raise RuntimeError(f"ClickToCall.start returned an unusable call id {call_id!r}")
    log.info("click-to-call %s: %s -> %s by %s", call_id, staff_id, number, client.name)
    accepted = OriginateAccepted(call_id=call_id, status="ringing_manager",
                                 links=CallLinks(self=call_path(call_id)))
    return StoredAnswer(202, accepted.model_dump(mode="json"), {"Location": call_path(call_id)})


def _utc(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC; a moment whose UTC form falls outside what datetime can hold (year
    1 with a positive offset, year 9999 with a negative one) is clamped to the nearest end,
    which selects the same calls."""
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


def _number_filter(config: Config, value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if not _NUMBER.fullmatch(value):
        raise ApiError(422, f"query parameter {field} may hold only digits, '+', spaces, '(', "
                            f"')', '-' and '.' (at most 20)", field=field,
                       code="validation_error")
    # E.164 when it parses; else as written, without formatting (short numbers, old DIDs).
    return to_e164(value, config.numbers.default_region or "ZZ") or re.sub(r"[ ()\-.]", "",
                                                                         value)


def _next_link(query: CallsQuery, cursor: str) -> str:
    params = {name: str(value) for name, value in
              query.model_dump(mode="json", exclude_none=True, exclude={"cursor"}).items()}
    params["cursor"] = cursor
    return str(URL.build(path="/v1/calls", query=params))


async def list_calls(request: web.Request) -> web.StreamResponse:
    """Calls, newest first, filtered, one page at a time."""
    deps = request.app[DEPS]
    config = deps.config
    query = parse_query(request, CallsQuery)
    since, until = _utc(query.since), _utc(query.until)
    # A manager no longer configured still has calls: an unknown id is taken as it is.
    manager = None if query.manager is None else (
        resolve_manager(config, query.manager) or query.manager)
    number = _number_filter(config, query.number, "number")
    line = _number_filter(config, query.line, "line")
    filtered = manager is not None or line is not None

    def wanted(call: CallSummary) -> bool:
        return (manager is None or call.answered_by == manager) and (
            line is None or call.line == line)

    found: list[CallSummary] = []
    position, scanned, exhausted = query.cursor, 0, False
    batch = _SCAN_BATCH if filtered else query.limit + 1
    while len(found) <= query.limit and scanned < _SCAN_LIMIT:
        rows = await deps.store.list_calls(since=since, until=until, number=number,
                                           outcome=query.outcome, limit=batch,
                                           before_id=position)
        for row in rows:
            scanned += 1
            position = row.call_id
            if wanted(row):
                found.append(row)
                if len(found) > query.limit:
                    break
        if len(rows) < batch:
            exhausted = True
            break
    next_cursor: str | None
    if len(found) > query.limit:
        found = found[:query.limit]
        next_cursor = found[-1].call_id
    elif exhausted or position is None:
        next_cursor = None
    else:
        next_cursor = position  # looked far enough: a short page, the next goes on
    links = CallListLinks(next=_next_link(query, next_cursor) if next_cursor else None)
    return json_answer(CallList(calls=[call_out(call) for call in found], links=links))


async def get_call(request: web.Request) -> web.StreamResponse:
    """One call with its timeline and recordings."""
    deps = request.app[DEPS]
    call_id = request.match_info["call_id"]
    if not _ID.fullmatch(call_id):
        raise ApiError(404, "no such call (call ids are letters, digits, '_', '.', ':', '-')",
                       code="not_found")
    call = await deps.store.get_call(call_id)
    if call is None:
        raise ApiError(404, f"no call {call_id}", code="not_found")
    journal = await deps.store.journal(call.call_id)
    recordings = await deps.store.recordings(call.call_id)
    return json_answer(call_detail(call, journal, recordings))
