"""Raw-ASGI request and response helpers for the hot endpoints.

Endpoints here skip Starlette's Request/Response objects: they read the body
straight from `receive`, answer with pre-built header lists, and render every
`OrbiterError` themselves, so a router mounted in any ASGI app answers with
FastAPI-shaped errors.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from ._codec import Decoder, RequestValidationError, encode
from .exceptions import OrbiterError, PayloadTooLarge, RequestError
from .models import ErrorDetail

__all__ = [
    "DEFAULT_MAX_BODY",
    "Endpoint",
    "SocketEndpoint",
    "error_body",
    "header",
    "query_params",
    "read_body",
    "read_json",
    "read_json_body",
    "send_json",
]

DEFAULT_MAX_BODY = 1024 * 1024

_JSON_TYPE = (b"content-type", b"application/json")


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def query_params(scope: Scope) -> dict[str, str]:
    raw: bytes = scope.get("query_string", b"")
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None or content_type == b"application/json":
        return True  # clients that send no type still mean JSON
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


async def read_body(
    scope: Scope, receive: Receive, max_size: int = DEFAULT_MAX_BODY, declared: bytes | None = None
) -> bytes:
    """The whole body; 413 as soon as it is known to pass `max_size`.

    `declared` is the `content-length` header, when the caller has it at hand.
    """
    if declared is None:
        declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_size:
        raise PayloadTooLarge(f"Request body exceeds {max_size} bytes")
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")  # the common case: one message
        if len(body) > max_size:
            raise PayloadTooLarge(f"Request body exceeds {max_size} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise RequestError("Client disconnected before the body was read")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_size:
                raise PayloadTooLarge(f"Request body exceeds {max_size} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
    return b"".join(chunks)


class UnsupportedMediaType(RequestError):
    status_code = 415
    code = "unsupported_media_type"


async def read_json(
    scope: Scope, receive: Receive, decoder: Decoder[Any], max_size: int = DEFAULT_MAX_BODY
) -> Any:
    return (await read_json_body(scope, receive, decoder, max_size))[0]


async def read_json_body(
    scope: Scope, receive: Receive, decoder: Decoder[Any], max_size: int = DEFAULT_MAX_BODY
) -> tuple[Any, bytes]:
    """The decoded body and its bytes (for a request's fingerprint)."""
    content_type = length = None
    for key, value in scope["headers"]:  # one pass for both; the first of each counts
        if key == b"content-type":
            if content_type is None:
                content_type = value
        elif key == b"content-length" and length is None:
            length = value
    if not _is_json(content_type):
        raise UnsupportedMediaType("Content-Type must be application/json")
    body = await read_body(scope, receive, max_size, length)
    if not body:
        raise RequestError("Request body is empty; expected a JSON object")
    return decoder.decode(body), body


async def send_json(
    send: Send, body: bytes, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    raw_headers = [_JSON_TYPE, (b"content-length", b"%d" % len(body))]
    if headers:
        raw_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def error_body(exc: OrbiterError) -> bytes:
    if isinstance(exc, RequestValidationError):
        return exc.body()
    return encode(ErrorDetail(exc.message))


_INTERNAL_ERROR = b'{"detail":"Internal Server Error"}'


class Endpoint:
    """An ASGI endpoint that renders `OrbiterError` as `{"detail": ...}`.

    Subclasses implement `handle`, and raise `OrbiterError` only before they
    respond: once a response has started, an error cannot become a status
    code (streaming endpoints turn theirs into events).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.handle(scope, receive, send)
        except OrbiterError as exc:
            extra = [(b"retry-after", b"1")] if exc.status_code == 503 else []
            if exc.run_id is not None:
                extra.append((b"x-run-id", exc.run_id.encode()))
            await send_json(send, error_body(exc), exc.status_code, extra)
        except Exception:
            # a bug: answer like Starlette's ServerErrorMiddleware would (the app may
            # call this endpoint without it), unless the response had already started
            # (the server refuses a second start), then let the server log it
            with contextlib.suppress(Exception):
                await send_json(send, _INTERNAL_ERROR, 500)
            raise

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class SocketEndpoint:
    """An ASGI WebSocket endpoint that accepts, answers and closes by itself,
    and so needs none of Starlette's wrapping around it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
