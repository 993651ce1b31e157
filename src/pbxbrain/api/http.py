"""Compatibility entry point: ``make_http_app(probe)`` serves only ``GET /v1/health``.

The whole API is ``pbxbrain.api.app.make_http_app(ApiDeps(...))``; this module stays for
callers that have only a health probe.
"""

from __future__ import annotations

from aiohttp import web

from pbxbrain.api.app import health, make_health_app
from pbxbrain.api.deps import HEALTH, HealthProbe

__all__ = ["HEALTH", "HealthProbe", "health", "make_http_app"]


def make_http_app(probe: HealthProbe) -> web.Application:
    """An application with only ``/v1/health`` (see ``pbxbrain.api.app`` for the API)."""
    return make_health_app(probe)
