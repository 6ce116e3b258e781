"""Write an app's limits into its OpenAPI document.

The structs describe shapes; the limits (longest `input`, what a session id
may be, the page size) belong to the app, so they are added per app. With
them go the few places where the structs alone say less than the server
does, so the document promises exactly what the server accepts (schemathesis
checks both ways in `tests/test_fuzz.py`).
"""

from __future__ import annotations

from typing import Any

from ._context import Limits

__all__ = ["document_limits"]


_VALIDATION_ERROR = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ValidationErrorResponse"}}},
}


_BAD_REQUEST = {
    "description": "Bad Request",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}},
}


_TOO_LARGE = {
    "description": "Request body past the app's `max_body_size`",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}},
}


def _session_id(limits: Limits) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": limits.max_session_id_length,
        "pattern": f"^(?:{limits.session_id_pattern})$",
    }


def _text(limits: Limits) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": limits.max_input_length}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}], "default": None}


def document_limits(document: dict[str, Any], limits: Limits) -> dict[str, Any]:
    schemas = document.get("components", {}).get("schemas", {})
    chat = schemas.get("ChatRequest")
    if chat is not None:
        properties = chat["properties"]
        properties["input"] = _nullable(_text(limits))
        properties["message"] = _nullable(_text(limits))
        properties["session_id"] = _nullable(_session_id(limits))
        # one of `input` and its alias `message` is required
        chat["anyOf"] = [
            {"required": ["input"], "properties": {"input": {"type": "string"}}},
            {"required": ["message"], "properties": {"message": {"type": "string"}}},
        ]
    create = schemas.get("CreateSessionRequest")
    if create is not None:
        create["properties"]["id"] = _nullable(_session_id(limits))
    message = schemas.get("Message")
    if message is not None:
        message["properties"]["created_at"] = _nullable({"type": "string", "format": "date-time"})
    create_session = document.get("paths", {}).get("/sessions", {}).get("post")
    if create_session is not None and "requestBody" in create_session:
        create_session["requestBody"]["required"] = False  # an empty body is an empty CreateSessionRequest
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if any(p["in"] == "query" for p in operation.get("parameters", ())):
                operation["responses"].setdefault("422", _VALIDATION_ERROR)
            if "requestBody" in operation:
                operation["responses"].setdefault("413", _TOO_LARGE)
            if "requestBody" in operation or operation.get("parameters"):
                operation["responses"].setdefault("400", _BAD_REQUEST)  # malformed JSON, bad ids
            for parameter in operation.get("parameters", ()):
                name, where = parameter["name"], parameter["in"]
                if name == "session_id" and where == "path":
                    parameter["schema"] = _session_id(limits)
                elif name == "session_id":  # an empty query value means none, as forms send it
                    parameter["schema"] = {
                        "type": "string",
                        "maxLength": limits.max_session_id_length,
                        "pattern": f"^(?:{limits.session_id_pattern})?$",
                    }
                elif where == "query" and name == "limit":
                    parameter["schema"].update(minimum=1, maximum=limits.max_page_size)
                elif where == "query" and name == "after":
                    parameter["schema"].update(minimum=0)
                elif where == "query" and name == "input":
                    parameter["schema"] = _text(limits)
    return document
