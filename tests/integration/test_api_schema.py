"""schemathesis against the HTTP API served on 127.0.0.1 with fake ports.

The document is the one the server publishes (``openapi_document()``, the same dict
``/v1/openapi.json`` returns). Every operation gets a bounded number of generated requests,
valid and invalid; each answer must not be a 5xx and must fit the document (status,
headers, content type, body schema). ``/v1/events`` is left out: its answer is a stream
that never ends by itself (``tests/unit/test_api_events.py`` covers it).

A schema-valid click-to-call may still be refused for business reasons the schema cannot
say (an unknown manager, a number outside numbers.dial_allowed), and a schema-valid Range
may lie past the end of a recording: so 422 (click-to-call) and 416 (recordings) are
accepted answers to positive data. Authorization is not generated: the test sends a valid
token, and schemathesis' own ignored_auth check sends requests without one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from schemathesis import Case, CheckFunction, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from pbxbrain.api.app import make_http_app, openapi_document
from tests.support.api_fakes import CRM_TOKEN, api_config, make_deps

MAX_EXAMPLES = 200  # per operation; about 10 s in all

schema = schemathesis.openapi.from_dict(openapi_document()).exclude(path="/v1/events")
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True,
                                modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                with_security_parameters=False)
_accepted = schema.config.checks.positive_data_acceptance
_accepted.expected_statuses = [*_accepted.expected_statuses, "416"]

LIMITS = ("rate_limits: {originate_per_token: 10000, originate_per_manager: 1000, "
          "originate_concurrent_per_manager: 100, read_per_token: 100000}\n")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API on fakes, served by a real aiohttp server in a thread of its own."""
    tmp: Path = tmp_path_factory.mktemp("api")
    harness = make_deps(tmp, api_config(LIMITS), heartbeat_s=1.0)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_http_app(harness.deps), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, name="api-under-test", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@schema.parametrize()
def test_given_generated_requests_then_no_5xx_and_every_answer_fits_the_document(
        case: Case[Any], base_url: str) -> None:
    headers = {"Authorization": f"Bearer {CRM_TOKEN}"}
    excluded: list[CheckFunction] = []
    if case.operation.method.upper() == "POST" and case.operation.path == "/v1/calls":
        excluded.append(positive_data_acceptance)
    response = case.call_and_validate(base_url=base_url, headers=headers,
                                      excluded_checks=excluded)
    assert response.status_code < 500
