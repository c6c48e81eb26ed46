"""The OpenAPI schema declares every status a route answers, each error with OpenAI's envelope.

Routes declare their statuses with FastAPI's own `responses=`. `install_openapi` adds the
envelope's schema, and takes out the 422 that FastAPI adds to every route with parameters:
validation errors are 400s here (errors.py). The 499 of a departed client is never seen by one,
so it is not declared.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from loragate.server.errors import AnthropicErrorEnvelope, ErrorEnvelope
from loragate.server.protocol import LegacyPromptRequest

Responses = dict[int | str, dict[str, Any]]

_ERRORS = {
    400: "Malformed JSON, an invalid field (named in `param`), or a prompt over the context.",
    401: "A missing or wrong API key (the admin key, for the routes that change personas).",
    403: "The API key may not use this model (the message lists those it may use), or may not "
    "administer.",
    404: "No model, persona, adapter or asset by that name; the message lists the valid ones.",
    413: "The request body is larger than --max-request-body-bytes.",
    429: "The engine's queue is full (--max-waiting-requests), or the key is over one of its "
    "limits (its x-ratelimit-* headers say which): retry after Retry-After seconds.",
    500: "An unexpected error in the gateway.",
    503: "The engine is restarting (with Retry-After), or dead; or the server is draining "
    "before it stops (with Retry-After): another replica can take the request.",
    504: "The request took longer than --request-timeout.",
}
# FastAPI's own validation schemas, referenced only by the 422s taken out.
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
_SCHEMAS = "#/components/schemas/{model}"
# Models no route names to FastAPI: their schemas are added to the components here.
_COMPONENTS: tuple[type[BaseModel], ...] = (
    ErrorEnvelope,
    AnthropicErrorEnvelope,
    LegacyPromptRequest,
)
# Spelled out rather than `"model": ErrorEnvelope`, which FastAPI files under the route's own
# media type: text/plain for vLLM's load and unload routes, whose errors are JSON all the same.
_ENVELOPE = {"application/json": {"schema": {"$ref": _SCHEMAS.format(model="ErrorEnvelope")}}}


def errors(*statuses: int) -> Responses:
    return {status: {"description": _ERRORS[status], "content": _ENVELOPE} for status in statuses}


# Every route: the body limit answers before any route runs, and anything can fail.
EVERY_ROUTE = errors(413, 500, 503)
# Chat and completions: a reply, or its stream of server-sent events.
GENERATION = {
    200: {
        "description": "The completion, or with `stream: true` its chunks as server-sent events.",
        # Each event is one `data:` line: a chunk, an error envelope, or the final [DONE].
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "properties": {"data": {"type": "string"}},
                    "required": ["data"],
                }
            }
        },
    },
    **errors(400, 401, 403, 404, 429, 503, 504),
}


_ANTHROPIC_ENVELOPE = {
    "application/json": {"schema": {"$ref": _SCHEMAS.format(model="AnthropicErrorEnvelope")}}
}
# Anthropic's Messages route: its message, or its events; its errors in Anthropic's envelope
# (but a body over the limit, refused before any route runs).
MESSAGES: Responses = {
    200: {
        "description": "The message, or with `stream: true` its events as server-sent events.",
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                    "required": ["event", "data"],
                }
            }
        },
    },
    **{
        status: {"description": _ERRORS[status], "content": _ANTHROPIC_ENVELOPE}
        for status in (400, 401, 403, 404, 429, 500, 503, 504)
    },
}


# The legacy route parses its body itself (the tutorial's client sends a wrong content type).
LEGACY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": _SCHEMAS.format(model="LegacyPromptRequest")}}
        },
    }
}


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _amended(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it


def _amended(schema: dict[str, Any]) -> dict[str, Any]:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        components.pop(name, None)
    for model in _COMPONENTS:
        model_schema = model.model_json_schema(ref_template=_SCHEMAS)
        components.update(model_schema.pop("$defs", {}), **{model.__name__: model_schema})
    _standard_bounds(schema)
    return schema


# pydantic writes a bound set on a type with a before-validator (protocol.JsonInt) under its
# own keyword names; JSON Schema's are these.
_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _standard_bounds(schema: Any) -> None:
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") in ("integer", "number"):
                for ours, standard in _BOUNDS.items():
                    if ours in node:
                        node[standard] = node.pop(ours)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
