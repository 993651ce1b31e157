"""Errors of the HTTP API: one JSON shape for every 4xx and 5xx, and the middleware that
guarantees it.

Every error answer is ``{"error": {"code": "...", "message": "...", "field": "..."}}``
(``field`` only when one field of the request is at fault). Handlers raise ``ApiError``;
aiohttp's own ``HTTPException``s (unknown route, wrong method, body too large) and any
unexpected exception are turned into the same shape by ``error_middleware``, so no HTML
page and no stack trace ever reaches a client. Unexpected exceptions are logged here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["ApiError", "error_middleware", "error_response", "security_headers"]

log = logging.getLogger("pbxbrain.api")

MAX_BODY_BYTES = 16 * 1024

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _default_code(status: int) -> str:
    return _CODES.get(status) or _phrase(status).lower().replace(" ", "_").replace("-", "_")


def error_response(status: int, code: str, message: str, *, field: str | None = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """The JSON error answer."""
    error: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status, headers=headers)


class ApiError(Exception):
    """An answer other than success, raised by handlers and turned into JSON here."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 field: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _default_code(status)
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """This error as a JSON response."""
        return error_response(self.status, self.code, self.message, field=self.field,
                              headers=self.headers)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    status = exc.status
    headers: dict[str, str] = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        headers["Allow"] = ", ".join(allowed)
        message = (f"{request.method} is not allowed on {request.path}; allowed: "
                   f"{', '.join(allowed)}")
    elif status == 404:
        message = f"no such endpoint: {request.path} (the API is described at /v1/openapi.json)"
    elif status == 413:
        message = f"the request body is larger than {MAX_BODY_BYTES} bytes"
    else:
        message = _phrase(status)
    for name in ("WWW-Authenticate", "Retry-After"):
        if name in exc.headers:
            headers[name] = exc.headers[name]
    return error_response(status, _default_code(status), message, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape; never leak a trace."""
    try:
        response = await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return error_response(500, "internal_error",
                              "internal error; it was logged on the server")
    if (response.status >= 400 and not response.prepared
            and response.content_type != "application/json"):
        return error_response(response.status, _default_code(response.status),
                              _phrase(response.status))
    return response


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: headers every answer carries."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("Content-Security-Policy", "default-src 'none'")
    response.headers["Server"] = "pbxbrain"  # not aiohttp's version string
