"""The application as a whole: /v1/health as it always was, the route table, the document."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pbxbrain import __version__
from pbxbrain.api.app import ROUTES, make_http_app, openapi_document
from pbxbrain.api.http import make_http_app as make_health_only_app
from tests.support.api_fakes import CRM_TOKEN, bearer, make_deps, serve

CHECKS_OK = {"ari": "ok", "ami": "ok", "database": "ok", "journal": "ok"}


@pytest.mark.parametrize(
    ("checks", "status", "word"),
    [
        (CHECKS_OK, 200, "ok"),
        ({**CHECKS_OK, "ari": "connection refused"}, 503, "unavailable"),
    ],
)
async def test_given_health_checks_then_health_answers_as_before(
        tmp_path: Path, checks: dict[str, str], status: int, word: str) -> None:
    h = make_deps(tmp_path, health=checks)
    async with serve(h.deps) as client:
        resp = await client.get("/v1/health")
        head = await client.head("/v1/health")

        assert resp.status == status
        assert await resp.json() == {"status": word, "version": __version__, "checks": checks}
        assert head.status == status


async def test_given_the_compatibility_factory_then_health_only() -> None:
    async def probe() -> dict[str, str]:
        return CHECKS_OK

    async with TestClient(TestServer(make_health_only_app(probe))) as client:
        health = await client.get("/v1/health")
        calls = await client.get("/v1/calls", headers=bearer(CRM_TOKEN))

        assert health.status == 200
        assert (await health.json())["checks"] == CHECKS_OK
        assert calls.status == 404
        assert (await calls.json())["error"]["code"] == "not_found"


def test_given_the_route_table_then_the_app_serves_exactly_the_documented_routes(
        tmp_path: Path) -> None:
    app = make_http_app(make_deps(tmp_path).deps)
    served = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    documented = {(op.upper(), path)
                  for path, item in openapi_document()["paths"].items() for op in item}

    assert served == documented
    assert len(ROUTES) == len(documented)


def test_given_the_document_then_every_scoped_operation_needs_a_token_and_lists_401() -> None:
    doc = openapi_document()

    assert doc["openapi"] == "3.1.0"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path in ("/v1/health", "/v1/openapi.json"):
                assert op["security"] == [], (method, path)
                continue
            assert op["security"] == [{"bearerAuth": []}], (method, path)
            assert {"401", "403", "429"} <= set(op["responses"]), (method, path)
            for status, answer in op["responses"].items():
                if int(status) >= 400:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}


def test_given_the_document_then_every_reference_resolves() -> None:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas


async def test_given_a_request_then_openapi_json_is_served_without_a_token(
        tmp_path: Path) -> None:
    async with serve(make_deps(tmp_path).deps) as client:
        resp = await client.get("/v1/openapi.json")

        assert resp.status == 200
        assert await resp.json() == openapi_document()
