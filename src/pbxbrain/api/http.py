"""The HTTP API (aiohttp). For now: ``GET /v1/health``.

Later endpoints (click-to-call, calls, recordings, events) hang off the same factory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from pbxbrain import __version__

#: ``component -> "ok" | what is wrong``; ``ready`` says whether calls can be taken.
HealthProbe = Callable[[], Awaitable[Mapping[str, str]]]

HEALTH = web.AppKey[HealthProbe]("health")


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


def make_http_app(probe: HealthProbe) -> web.Application:
    """Build the aiohttp application."""
    app = web.Application(client_max_size=64 * 1024)
    app[HEALTH] = probe
    app.router.add_get("/v1/health", health)
    return app
