"""schemathesis against the HTTP API served on 127.0.0.1 with fake ports.

The document is the one the server publishes (``openapi_document()``, the same dict
``/v1/openapi.json`` returns). Every operation gets a bounded number of generated requests,
valid and invalid; each answer must not be a 5xx and must fit the document (status,
headers, content type, body schema). ``/v1/events`` is left out: its answer is a stream
that never ends by itself (``tests/unit/test_api_events.py`` covers it).

A schema-valid click-to-call or task closing may still be refused for business reasons the
schema cannot say (an unknown manager, a number outside numbers.dial_allowed), a
schema-valid Range may lie past the end of a recording, and a CSV contact import is "a
string" to the schema but needs a header naming its columns: so 422 (click-to-call, closing
a task, CSV import) and 416 (recordings) are accepted answers to positive data. The
contact book, tasks and failed deliveries are the fakes of ``tests.support.api_fakes``.
Authorization is not generated: the test sends a valid token, and schemathesis' own
ignored_auth check sends requests without one.

The built-in CRM's and the outbox's operations run a second time against the real
``BuiltinCrm`` and ``SqlOutbox`` on a SQLite file, so that no generated import, task or
delivery request makes the database adapters fail (a NUL, a lone surrogate, odd CSV).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from schemathesis import Case, CheckFunction, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from pbxbrain.adapters.crm_builtin import BuiltinCrm
from pbxbrain.adapters.crm_store import SqlOutbox
from pbxbrain.adapters.db import SqlCallStore, create_engine
from pbxbrain.adapters.migrate import migrate
from pbxbrain.adapters.outbox import missed_call_message
from pbxbrain.api.app import make_http_app, openapi_document
from pbxbrain.domain.model import CallOutcome, InboundCall, MissedCall
from tests.support.api_fakes import CRM_TOKEN, api_config, make_deps

MAX_EXAMPLES = 200  # per operation; about 20 s in all (and 6 s on the real built-in CRM)

schema = schemathesis.openapi.from_dict(openapi_document()).exclude(path="/v1/events")
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True,
                                modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                with_security_parameters=False)
_accepted = schema.config.checks.positive_data_acceptance
_accepted.expected_statuses = [*_accepted.expected_statuses, "416"]

crm_schema = schemathesis.openapi.from_dict(openapi_document()).include(
    tag_regex="^(contacts|tasks|deliveries)$")
crm_schema.config.generation.update(max_examples=100, deterministic=True,
                                    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    with_security_parameters=False)

LIMITS = ("rate_limits: {originate_per_token: 10000, originate_per_manager: 1000, "
          "originate_concurrent_per_manager: 100, read_per_token: 100000}\n")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API on fakes, served by a real aiohttp server in a thread of its own."""
    tmp: Path = tmp_path_factory.mktemp("api")
    harness = make_deps(tmp, api_config(LIMITS), heartbeat_s=1.0)

    async def build() -> web.Application:
        return make_http_app(harness.deps)

    yield from _serve_in_thread(build)


@pytest.fixture(scope="module")
def builtin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API on the real BuiltinCrm and SqlOutbox (SQLite), with tasks and failures."""
    tmp: Path = tmp_path_factory.mktemp("api-builtin")
    harness = make_deps(tmp, api_config(LIMITS), heartbeat_s=1.0)
    url = f"sqlite+aiosqlite:///{tmp / 'pbxbrain.db'}"

    async def build() -> web.Application:
        await migrate(url)
        engine = create_engine(url)
        config = harness.deps.config
        crm = BuiltinCrm(engine, staff=config.staff.keys(),
                         default_region=config.numbers.default_region)
        outbox = SqlOutbox(engine)
        store = SqlCallStore(engine)
        t0 = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
        for n in range(1, 5):
            at = t0 + timedelta(minutes=n)
            missed = MissedCall(call_id=f"c{n}", phone=f"+7916123456{n}",
                                outcome=CallOutcome.MISSED, at=at,
                                due_at=at + timedelta(minutes=15), responsible="ivanov")
            await store.open_call(InboundCall(f"c{n}", f"ch{n}", missed.phone, missed.phone,
                                              "+74951234567", at))
            await store.close_call(f"c{n}", CallOutcome.MISSED, at,
                                   outbox=[missed_call_message(missed)])
            await crm.missed_call(missed, f"missed:c{n}")
        for n, row in enumerate(await outbox.claim_deliveries("n", t0 + timedelta(hours=1))):
            if n % 2:
                await outbox.delivery_failed(row.id, "CRM said 503", t0 + timedelta(days=1))
            else:
                await outbox.delivery_rejected(row.id, "CRM said 400", t0)
        deps = dataclasses.replace(harness.deps, store=store, recordings=store, contacts=crm,
                                   outbox=outbox)
        app = make_http_app(deps)

        async def dispose(_app: web.Application) -> None:
            await engine.dispose()

        app.on_cleanup.append(dispose)
        return app

    yield from _serve_in_thread(build)


def _serve_in_thread(build: Callable[[], Awaitable[web.Application]]) -> Iterator[str]:
    """Serve the application ``build`` makes on 127.0.0.1, from an event loop in a thread."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(loop.run_until_complete(build()), access_log=None)
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
    path = case.operation.path
    if case.operation.method.upper() == "POST" and path in ("/v1/calls",
                                                            "/v1/tasks/{task_id}/close"):
        excluded.append(positive_data_acceptance)
    if path == "/v1/contacts" and case.media_type == "text/csv":
        excluded.append(positive_data_acceptance)
    response = case.call_and_validate(base_url=base_url, headers=headers,
                                      excluded_checks=excluded)
    assert response.status_code < 500


@crm_schema.parametrize()
def test_given_generated_requests_to_the_real_builtin_crm_then_no_5xx(
        case: Case[Any], builtin_url: str) -> None:
    excluded: list[CheckFunction] = []
    if case.operation.path == "/v1/tasks/{task_id}/close" or case.media_type == "text/csv":
        excluded.append(positive_data_acceptance)
    response = case.call_and_validate(base_url=builtin_url,
                                      headers={"Authorization": f"Bearer {CRM_TOKEN}"},
                                      excluded_checks=excluded)
    assert response.status_code < 500
