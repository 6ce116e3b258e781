"""The OpenAPI 3.1 document, built from the routers' operations and msgspec schemas."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from .models import Event, ValidationErrorResponse
from .routing import Operation

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def _content(schema: dict[str, Any], media_type: str) -> dict[str, Any]:
    if media_type == "text/event-stream":
        schema = _sse_event(schema)
    return {media_type: {"schema": schema}}


def _sse_event(payload: dict[str, Any]) -> dict[str, Any]:
    """One SSE event: its `data` is a JSON payload, or `[DONE]` at the end."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "id": {"type": "string"},
            "data": {
                "anyOf": [
                    {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
                    {"const": "[DONE]"},
                ]
            },
        },
    }


def openapi_document(
    operations: Sequence[Operation], *, title: str, version: str
) -> dict[str, Any]:
    types: list[Any] = [ValidationErrorResponse, Event]
    for op in operations:
        types.extend(t for t in (op.request, op.response, *op.responses.values()) if t is not None)
        if op.events is not True and op.events is not False:
            types.append(op.events)
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(unique, ref_template=_REF)
    schema_of = dict(zip(unique, schemas, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path = _PATH_PARAM.sub(r"{\1}", op.path)
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(op.path)
        ]
        for where, declared in (("query", op.query), ("header", op.headers)):
            for name, kind, required in declared:
                parameters.append(
                    {"name": name, "in": where, "required": required, "schema": msgspec.json.schema(kind)}
                )
        description = "Successful Response" if op.status != 204 else "No Content"
        success: dict[str, Any] = {"description": description}
        if op.status != 204:
            schema = schema_of[op.response] if op.response is not None else {}
            success["content"] = _content(schema, op.media_type)
            if op.events is not False:
                payload = Event if op.events is True else op.events
                success["content"].update(_content(schema_of[payload], "text/event-stream"))
        responses: dict[str, Any] = {str(op.status): success}
        for status, error_type in op.responses.items():
            responses[str(status)] = {
                "description": "Error" if status >= 400 else "Accepted",
                "content": _content(schema_of[error_type], "application/json"),
            }
        operation: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.method + "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_"),
            "responses": responses,
        }
        if op.tags:
            operation["tags"] = op.tags
        if parameters:
            operation["parameters"] = parameters
        if op.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": _content(schema_of[op.request], "application/json"),
            }
            responses["422"] = {
                "description": "Validation Error",
                "content": _content(schema_of[ValidationErrorResponse], "application/json"),
            }
        paths.setdefault(path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }
