"""The OpenAPI 3.1 document, generated from the route table and the pydantic models.

``api.app.ROUTES`` is the one list of endpoints: the application is built from it and so
is this document, so they cannot drift apart. Schemas come from the models in
``api.schemas`` (request models in validation mode, answers in serialization mode); query
parameters are the fields of a query model. schemathesis checks the server against it
(``tests/integration/test_api_schema.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from pbxbrain.api.schemas import ErrorBody
from pbxbrain.config import Scope

__all__ = ["Header", "Operation", "Param", "Reply", "build_document", "error_replies"]

JsonSchema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Header:
    """A response header."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = True


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented answer: a JSON model, or other content by media type."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    content: Mapping[str, Mapping[str, Any]] | None = None
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class Param:
    """A path or header parameter (query parameters come from a query model)."""

    name: str
    where: Literal["path", "header"]
    description: str
    schema: Mapping[str, Any]
    required: bool = False


@dataclass(frozen=True, slots=True)
class Operation:
    """One endpoint: what it takes, who may call it, what it answers.

    The request body is ``body`` (a model, as application/json) and/or ``body_content``
    (other media types and their schemas); ``body_required`` False makes it optional.
    """

    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    scope: Scope | None
    replies: tuple[Reply, ...]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    tags: tuple[str, ...] = ()
    body_content: Mapping[str, Mapping[str, Any]] | None = None
    body_required: bool = True


_ERROR_TEXT = {
    400: "The body is not valid JSON.",
    401: "No token, or not a valid one.",
    403: "The token lacks the scope this endpoint needs.",
    404: "No such resource.",
    409: "Conflict (see the code and message).",
    413: "The body is larger than 16 KiB.",
    415: "The body is not declared as application/json.",
    416: "The range lies outside the file.",
    422: "A field is missing or wrong; `field` names it.",
    429: "Too many requests; retry after Retry-After seconds.",
    503: "Temporarily unavailable; retry after Retry-After seconds.",
}

_ERROR_HEADERS = {
    401: (Header("WWW-Authenticate", "Bearer challenge."),),
    403: (Header("WWW-Authenticate", "Bearer challenge naming the missing scope."),),
    429: (Header("Retry-After", "Seconds to wait.", {"type": "string", "pattern": "^[0-9]+$"}),),
    503: (Header("Retry-After", "Seconds to wait.", {"type": "string", "pattern": "^[0-9]+$"}),),
    416: (Header("Content-Range", "bytes */<size>.",
                 {"type": "string", "pattern": "^bytes \\*/[0-9]+$"}),),
}


def error_replies(*statuses: int, text: Mapping[int, str] | None = None) -> tuple[Reply, ...]:
    """Error answers (shape ``ErrorBody``) with their usual descriptions and headers."""
    extra = text or {}
    return tuple(Reply(status, extra.get(status, _ERROR_TEXT.get(status, "Error.")), ErrorBody,
                       headers=_ERROR_HEADERS.get(status, ()))
                 for status in statuses)


def _without_null(schema: JsonSchema) -> JsonSchema:
    """An optional query parameter's schema: absent means None, so no ``null`` branch."""
    out = dict(schema)
    variants = out.pop("anyOf", None)
    if variants is not None:
        kept = [v for v in variants if v != {"type": "null"}]
        if len(kept) == 1:
            out = {**kept[0], **out}
        else:
            out["anyOf"] = kept
    if out.get("default", 0) is None:
        del out["default"]
    out.pop("title", None)
    return out


def _header_schema(header: Header) -> JsonSchema:
    return {"description": header.description, "required": header.required,
            "schema": dict(header.schema)}


def build_document(operations: Sequence[Operation], *, version: str,
                   description: str = "") -> JsonSchema:
    """The OpenAPI 3.1 document of ``operations``."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for op in operations:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        if op.query is not None:
            wanted.append((op.query, "validation"))
        wanted.extend((reply.model, "serialization") for reply in op.replies
                      if reply.model is not None)
    unique = list(dict.fromkeys(wanted))
    refs, defs = models_json_schema(unique, ref_template="#/components/schemas/{model}")
    schemas: dict[str, JsonSchema] = copy.deepcopy(defs.get("$defs", {}))
    query_names: set[str] = set()

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        parameters: list[JsonSchema] = [
            {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
             "description": p.description, "schema": dict(p.schema)}
            for p in op.params
        ]
        if op.query is not None:
            name = refs[(op.query, "validation")]["$ref"].rsplit("/", 1)[-1]
            query_names.add(name)
            model_schema = schemas[name]
            required = set(model_schema.get("required", ()))
            for prop, prop_schema in model_schema.get("properties", {}).items():
                clean = _without_null(prop_schema)
                text = clean.pop("description", "")
                clean.pop("examples", None)
                parameters.append({"name": prop, "in": "query", "required": prop in required,
                                   "description": text, "schema": clean})
        operation: JsonSchema = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "description": op.description,
            "tags": list(op.tags),
            "responses": {},
        }
        if parameters:
            operation["parameters"] = parameters
        content: JsonSchema = {}
        if op.body is not None:
            content["application/json"] = {"schema": refs[(op.body, "validation")]}
        for media, media_schema in (op.body_content or {}).items():
            content[media] = {"schema": dict(media_schema)}
        if content:
            operation["requestBody"] = {"required": op.body_required, "content": content}
        if op.scope is not None:
            operation["security"] = [{"bearerAuth": []}]
            operation["x-required-scope"] = op.scope
            operation["description"] += f"\n\nNeeds a token with the `{op.scope}` scope."
        else:
            operation["security"] = []
        for reply in op.replies:
            answer: JsonSchema = {"description": reply.description}
            if reply.model is not None:
                answer["content"] = {
                    "application/json": {"schema": refs[(reply.model, "serialization")]}}
            elif reply.content is not None:
                answer["content"] = {media: {"schema": dict(schema)}
                                     for media, schema in reply.content.items()}
            if reply.headers:
                answer["headers"] = {h.name: _header_schema(h) for h in reply.headers}
            operation["responses"][str(reply.status)] = answer
        paths.setdefault(op.path, {})[op.method.lower()] = operation

    for name in query_names:
        schemas.pop(name, None)
    return {
        "openapi": "3.1.0",
        "info": {"title": "pbxbrain HTTP API", "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http", "scheme": "bearer",
                    "description": "An API token from http.tokens (only its sha256 is "
                                   "configured); each token has scopes: originate, callback, "
                                   "read, recordings, contacts, admin.",
                },
            },
        },
    }
