"""What every handler shares: the scope guard, reading JSON bodies and query strings into
models, and turning pydantic's errors into one 422 that names the field."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from pbxbrain.api.auth import Client
from pbxbrain.api.deps import STATE
from pbxbrain.api.errors import MAX_BODY_BYTES, ApiError
from pbxbrain.config import Scope

__all__ = ["CLIENT", "guarded", "json_answer", "parse_query", "read_json", "retry_after"]

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CLIENT = web.RequestKey[Client]("client")


def retry_after(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header for a wait of ``seconds`` (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def guarded(handler: Handler, scope: Scope, *, read_limited: bool) -> Handler:
    """``handler`` behind the token check for ``scope`` (and the per-token read limit)."""

    async def guard(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        client = state.tokens.authenticate(request, scope)
        if read_limited:
            wait = state.read_limit.acquire(client.name)
            if wait is not None:
                raise ApiError(429, f"too many requests for this token "
                                    f"({state.read_limit.rate} a minute); retry in "
                                    f"{max(1, math.ceil(wait))} s",
                               code="rate_limited", headers=retry_after(wait))
        request[CLIENT] = client
        return await handler(request)

    guard.__name__ = handler.__name__
    guard.__doc__ = handler.__doc__
    return guard


def json_answer(model: BaseModel, *, status: int = 200,
                headers: Mapping[str, str] | None = None) -> web.Response:
    """A model as a JSON response."""
    return web.json_response(model.model_dump(mode="json"), status=status, headers=headers)


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "datetime_parsing": "must be an ISO 8601 date and time, like 2027-01-01T09:00:00+03:00",
    "datetime_type": "must be an ISO 8601 date and time, like 2027-01-01T09:00:00+03:00",
    "datetime_from_date_parsing": "must be an ISO 8601 date and time, like "
                                  "2027-01-01T09:00:00+03:00",
    "timezone_aware": "needs a UTC offset (Z or +03:00)",
    "enum": "must be one of the listed values",
}


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        return f"has characters that are not allowed here (expected {ctx.get('pattern')})"
    if kind == "string_too_long":
        return f"is too long (at most {ctx.get('max_length')} characters)"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"must be {'at least' if kind == 'greater_than_equal' else 'at most'} " \
               f"{ctx.get('ge', ctx.get('le'))}"
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])
    if kind == "enum":
        return f"must be one of: {ctx.get('expected')}"
    msg = _MESSAGES.get(kind)
    return msg if msg is not None else error["msg"][:1].lower() + error["msg"][1:]


def validation_error(exc: ValidationError, *, prefix: str = "") -> ApiError:
    """One 422 naming the first field at fault."""
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in first["loc"]]
    field = ".".join(loc) if loc else None
    what = f"{prefix}{field}" if field else "the request body"
    return ApiError(422, f"{what} {_message(first)}", code="validation_error", field=field)


async def read_json(request: web.Request, model: type[M]) -> M:
    """The request body, as JSON, validated into ``model``.

    415 when it is not declared as JSON, 413 over 16 KiB, 400 when it is not JSON, 422
    when it does not fit the model.
    """
    if request.content_type != "application/json":
        raise ApiError(415, "send the body as JSON with Content-Type: application/json",
                       code="unsupported_media_type")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes",
                       code="payload_too_large")
    raw = await request.read()  # aiohttp raises 413 past client_max_size
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes",
                       code="payload_too_large")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON",
                       code="malformed_json") from None
    if not isinstance(data, dict):
        raise ApiError(422, "the request body must be a JSON object", code="validation_error")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    """The query string validated into ``model`` (422 for unknown or repeated parameters)."""
    values: dict[str, str] = {}
    for key, value in request.query.items():
        if key in values:
            raise ApiError(422, f"query parameter {key} is given twice", field=key,
                           code="validation_error")
        values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise validation_error(exc, prefix="query parameter ") from None
