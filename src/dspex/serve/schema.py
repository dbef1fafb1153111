"""JSON Schema for signature field annotations, and the service's OpenAPI document.

Annotations are real typing objects (``Field.annotation``): ``str``, ``int``,
``list[str]``, ``dict[str, float]``, ``Optional[int]``, ``Literal["a", "b"]``, pydantic
models. Anything else becomes ``{}`` (any JSON value).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .targets import Target

__all__ = ["field_schema", "input_schema", "openapi", "output_schema"]

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
}


def field_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of one annotation."""
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    if tp is None or tp is typing.Any or tp is object:
        return {}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [field_schema(a) for a in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, set, frozenset, tuple) or tp in (list, set, frozenset, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return {"type": "array", "prefixItems": [field_schema(a) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": field_schema(args[0]) if args else {}}
    if origin is dict or tp is dict:
        return {"type": "object", "additionalProperties": field_schema(args[1]) if len(args) == 2 else {}}
    schema = getattr(tp, "model_json_schema", None)  # pydantic models, as DSPy uses them
    if callable(schema):
        try:
            return dict(schema())
        except Exception:
            return {"type": "object"}
    return {}


def _describe(schema: dict[str, Any], f: Any) -> dict[str, Any]:
    desc = getattr(f, "desc", "") or ""
    if desc and not desc.startswith("${"):
        schema = {**schema, "description": desc}
    return schema


def input_schema(target: Target) -> dict[str, Any]:
    props = {name: _describe(field_schema(f.annotation), f) for name, f in target.inputs.items()}
    return {"type": "object", "properties": props, "required": list(target.required),
            "additionalProperties": False}


def output_schema(target: Target) -> dict[str, Any]:
    if not target.outputs:
        return {"type": "object"}
    props = {name: _describe(field_schema(_output_type(target, f.annotation)), f) for name, f in target.outputs.items()}
    return {"type": "object", "properties": props}


def _output_type(target: Target, tp: Any) -> Any:
    """Code (handlers, objects) may return any value for a plain ``str`` field: a signature
    without a type says nothing. Typed fields keep their type (and are checked)."""
    return None if target.loose_outputs and tp is str else tp


_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "fix": {"type": "string"},
                "retryable": {"type": "boolean"},
                "fields": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["type", "message"],
        },
        "request_id": {"type": "string"},
    },
    "required": ["error"],
}

_TRACE_ROW = {
    "type": "object",
    "properties": {
        "step": {"type": "string"}, "kind": {"type": "string"}, "where": {"type": "string"},
        "pid": {"type": ["integer", "null"]}, "ms": {"type": "number"}, "status": {"type": "string"},
    },
}


# One server-sent event; ``data`` is the JSON text of the event's payload.
_SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"enum": ["start", "step", "progress", "chunk", "output", "done", "error"]},
                   "data": {"type": "string"}},
    "required": ["event", "data"],
}


def _responses(errors: Mapping[str, str]) -> dict[str, Any]:
    def err(text: str, retry: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"description": text,
                               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        if retry:
            out["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        return out

    return {code: err(text, retry=code in ("429", "503")) for code, text in errors.items()}


_CALL_ERRORS = {
    "400": "the body is not a JSON object, or a header is malformed",
    "401": "missing or wrong API key (when the service has one)",
    "413": "the body is larger than the service's limit",
    "415": "the body is not application/json",
    "422": "an input is missing, unknown, or has the wrong type; error.fields names each",
    "429": "too many requests in flight or the LM rate-limited us; retry after Retry-After",
    "502": "the LM or a worker failed (bad reply, crash)",
    "503": "a worker pool is overloaded or not ready; retry after Retry-After",
    "504": "the LM or a worker did not answer in time",
}


def openapi(targets: list[Target], *, title: str = "dspex", version: str = "0.1.0",
            auth: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service: one JSON and one SSE path per endpoint."""
    paths: dict[str, Any] = {}
    session = {"name": "X-Dspex-Session", "in": "header", "required": False,
               "description": "keeps this client's calls on one worker (letters, digits, '-', '_', max 128)",
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}}
    for t in targets:
        body = {"required": True, "content": {"application/json": {"schema": input_schema(t)}}}
        ok = {
            "type": "object",
            "properties": {
                "outputs": output_schema(t),
                "trace": {"type": "array", "items": _TRACE_ROW},
                "session": {"type": ["string", "null"]},
                "request_id": {"type": "string"},
            },
            "required": ["outputs", "trace", "request_id"],
        }
        summary = t.description or f"{t.kind} {t.signature_text}"
        paths[t.path] = {"post": {
            "operationId": f"call_{t.name}", "summary": summary, "tags": [t.group],
            "parameters": [session], "requestBody": body,
            "responses": {"200": {"description": "the outputs", "content": {"application/json": {"schema": ok}}},
                          **_responses(_CALL_ERRORS)},
        }}
        paths[t.path + "/stream"] = {"post": {
            "operationId": f"stream_{t.name}", "summary": f"{summary} (server-sent events)", "tags": [t.group],
            "parameters": [session], "requestBody": body,
            "responses": {"200": {"description": "events: start, step, progress, chunk, output, done, error",
                                  "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
                          **_responses(_CALL_ERRORS)},
        }}
    simple = {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}
    paths["/healthz"] = {"get": {"operationId": "healthz", "summary": "the process is up", "responses": simple}}
    paths["/readyz"] = {"get": {"operationId": "readyz", "summary": "every endpoint can take calls",
                                "responses": {**simple, "503": {"description": "not ready yet (or shutting down)"}}}}
    paths["/v1/endpoints"] = {"get": {"operationId": "endpoints", "summary": "the served endpoints and their fields",
                                      "responses": simple}}
    paths["/metrics"] = {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "dspex programs and pipelines; inputs and outputs from their signatures"},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR}},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"},
                                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
        for p in ("/healthz", "/readyz"):
            doc["paths"][p]["get"]["security"] = []
    return doc
