"""The OpenAPI document of the control API, generated from the `api/` models."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from api.events import JSON_SCHEMA as EVENT_SCHEMA
from api.objects import Config, ConfigSpec

from .common import Route
from .errors import json_response


def document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(Config, "serialization"), (ConfigSpec, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    err = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    components = dict(schemas.get("$defs", {}))
    components["EventRecord"] = EVENT_SCHEMA
    components["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                },
                "required": ["code", "message"],
            }
        },
    }
    ref = {"$ref": "#/components/schemas/Config"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "orch control API", "version": "1"},
        "paths": {
            "/v1/cluster/status": {"get": {"responses": {"200": {"description": "Raft and store status"}}}},
            "/v1/configs": {
                "get": {"responses": {"200": {"description": "all configs", "content": {"application/json": {"schema": {"type": "array", "items": ref}}}}}},
                "post": {
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ConfigSpec"}}}},
                    "responses": {"201": {"description": "created", "content": {"application/json": {"schema": ref}}}, "400": err, "409": err, "413": err, "503": err},
                },
            },
            "/v1/events": {
                "get": {
                    "parameters": [
                        {"name": "since", "in": "query", "schema": {"type": "string"},
                         "description": "event id (INDEX or INDEX.SEQ: events after it), duration (10m) or time"},
                        {"name": "until", "in": "query", "schema": {"type": "string"},
                         "description": "same forms; the stream ends there (without it, it follows)"},
                        {"name": "filter", "in": "query", "schema": {"type": "array", "items": {"type": "string"}},
                         "explode": True, "description": "KEY=VALUE[,...]: type, event, service, node, task, id, scope"},
                    ],
                    "responses": {
                        "200": {"description": "one EventRecord per line",
                                "content": {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/EventRecord"}}}},
                        "400": err, "410": err, "503": err,
                    },
                },
            },
            "/v1/configs/{ref}": {
                "parameters": [{"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}, "description": "id, name or unique id prefix"}],
                "get": {"responses": {"200": {"description": "one config", "content": {"application/json": {"schema": ref}}}, "404": err}},
                "delete": {"responses": {"204": {"description": "removed"}, "404": err, "409": err}},
            },
        },
        "components": {"schemas": components},
    }


async def openapi(request: web.Request) -> web.Response:
    return json_response(document())


ROUTES: tuple[Route, ...] = (Route("GET", "/v1/openapi.json", openapi),)
