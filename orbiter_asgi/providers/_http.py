"""What the HTTP providers share: a lazy pooled client, retries, SSE, errors.

A provider subclass says where to POST and how to read the stream; this
module owns everything between: opening the connection, retrying 429/5xx
and connect failures (only before the first byte of a stream is read, so a
retry never repeats output), turning error statuses into clear
`ProviderError`s that name the key or the model, and translating httpx
errors at the boundary. Streams are opened with `client.stream(...)` inside
`async with`, so closing or cancelling the consumer closes the upstream
request.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import msgspec

from ..exceptions import (
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "HTTPProvider",
    "ServerSentEvent",
    "iter_sse",
    "parse_arguments",
    "stream_object",
]

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=30.0)
_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
_MAX_DELAY = 30.0  # never sleep longer than this between attempts, whatever Retry-After says

_decode = msgspec.json.decode


class ServerSentEvent:
    __slots__ = ("data", "event")

    def __init__(self, event: str, data: str) -> None:
        self.event = event
        self.data = data


async def iter_sse(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """Events of a `text/event-stream` body, per the WHATWG framing rules.

    Lines are split on bytes rather than with `aiter_lines()`, which skips a
    text-decoding pass per chunk; only complete lines are decoded, so a UTF-8
    character split across chunks is safe.
    """
    event = ""
    data: list[str] = []
    buffer = b""
    skip_lf = False  # the last chunk ended in "\r"; a leading "\n" belongs to it
    async for chunk in response.aiter_bytes():
        if skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        skip_lf = False
        if b"\r" in chunk:
            skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if buffer:
            chunk = buffer + chunk
        lines = chunk.split(b"\n")
        buffer = lines.pop()
        for line in lines:
            if not line:
                if data:
                    yield ServerSentEvent(event or "message", "\n".join(data))
                event, data = "", []
                continue
            field, _, value = line.decode("utf-8", "replace").partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
    if buffer:  # a last line without its line break
        field, _, value = buffer.decode("utf-8", "replace").partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:  # a last event without its blank line still counts
        yield ServerSentEvent(event or "message", "\n".join(data))


def stream_object(label: str, data: str, what: str = "stream event") -> dict[str, Any]:
    """One `data:` payload of a model's stream as a JSON object; `ProviderError` otherwise."""
    try:
        value = _decode(data)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise ProviderError(f"{label} sent a malformed {what}: {data[:200]!r}")
    return value


def parse_arguments(raw: str) -> dict[str, Any]:
    """Tool-call arguments as a dict; `ValueError` when they are not a JSON object."""
    if not raw.strip():
        return {}
    try:
        value = _decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"arguments are not valid JSON ({exc}): {raw[:200]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


def _retry_after(response: httpx.Response) -> float | None:
    headers = response.headers
    if (value := headers.get("retry-after-ms")) is not None:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is not None:
        try:
            return float(value)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    return None


def _error_message(body: bytes) -> str:
    """The upstream `error.message` (both APIs nest it so), else the raw body."""
    try:
        payload = _decode(body)
    except msgspec.DecodeError:
        return body.decode(errors="replace").strip()[:500]
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(payload.get("message"), str):
            return str(payload["message"])
    return body.decode(errors="replace").strip()[:500]


class HTTPProvider:
    """Base of the HTTP providers: configuration, pooled client, requests.

    Subclasses set `label`, `key_env`, `base_url_env`, `default_base_url`
    and implement `stream()` with `self.open_stream(...)` and `iter_sse`.
    """

    label = "HTTP"
    key_env = ""
    base_url_env = ""
    default_base_url = ""
    needs_key = True
    connect_hint = ""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float | str | httpx.Timeout | None = None,
        max_retries: int | str = 2,
        backoff: float | str = 0.5,
    ) -> None:
        env_key = os.environ.get(self.key_env) if self.key_env else None
        self.api_key = api_key if api_key is not None else (env_key or None)
        env_url = os.environ.get(self.base_url_env) if self.base_url_env else None
        self.base_url = (base_url or env_url or self.default_base_url).rstrip("/")
        if timeout is None:
            self.timeout = DEFAULT_TIMEOUT
        elif isinstance(timeout, httpx.Timeout):
            self.timeout = timeout
        else:
            self.timeout = httpx.Timeout(float(timeout), connect=min(float(timeout), 10.0))
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self._client = client
        self._owns_client = client is None

    @property
    def client(self) -> httpx.AsyncClient:
        """The pooled client, created on first use."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=40),
            )
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()
        elif client is not None:
            self._client = client  # an injected client belongs to whoever made it

    def headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        hinted = _retry_after(response) if response is not None else None
        if hinted is not None:
            return min(hinted, _MAX_DELAY)
        return min(self.backoff * 2.0**attempt * (0.5 + random.random() / 2), _MAX_DELAY)

    def _status_error(self, response: httpx.Response, body: bytes, model: str) -> ProviderError:
        status = response.status_code
        detail = _error_message(body)
        where = f"{self.label} ({self.base_url})"
        if status == 401:
            if self.api_key is None:
                hint = f"{self.key_env} is not set" if self.key_env else "no API key was given"
            else:
                hint = f"check {self.key_env}" if self.key_env else "check the API key"
            return ProviderAuthError(
                f"{where} rejected the request as unauthenticated (401): {hint}. {detail}".rstrip(),
                status=status,
            )
        if status == 403:
            return ProviderAuthError(
                f"{where} refused access (403); the key in {self.key_env or 'use'} lacks "
                f"permission for this model or endpoint. {detail}".rstrip(),
                status=status,
            )
        if status == 404:
            return ProviderError(
                f"{where} does not know model {model!r} (404). {detail}".rstrip(), status=status
            )
        if status == 429:
            return ProviderRateLimited(
                f"{where} is rate limiting requests (429) and {self.max_retries} retries "
                f"did not get through. {detail}".rstrip(),
                status=status,
            )
        if status >= 500:
            return ProviderError(
                f"{where} failed with {status} after {self.max_retries} retries. {detail}".rstrip(),
                status=status,
            )
        return ProviderError(f"{where} refused the request ({status}): {detail}", status=status)

    @asynccontextmanager
    async def open_stream(
        self, path: str, body: Mapping[str, Any], *, model: str
    ) -> AsyncIterator[httpx.Response]:
        """POST `body` and yield the streaming 200 response; errors are translated."""
        url = self.base_url + path
        content = msgspec.json.encode(body)
        headers = self.headers()
        attempt = 0
        while True:
            try:
                async with self.client.stream(
                    "POST", url, content=content, headers=headers
                ) as response:
                    if response.is_success:
                        try:
                            yield response
                        except httpx.TimeoutException as exc:
                            raise ProviderTimeout(
                                f"{self.label} stopped sending mid-stream (read timeout)"
                            ) from exc
                        except httpx.HTTPError as exc:
                            raise ProviderError(
                                f"{self.label} stream broke off: {type(exc).__name__}: {exc}"
                            ) from exc
                        return
                    body_bytes = await response.aread()
                    if response.status_code not in _RETRY_STATUSES or attempt >= self.max_retries:
                        raise self._status_error(response, body_bytes, model)
                    delay = self._delay(attempt, response)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                if attempt >= self.max_retries:
                    raise ProviderError(
                        f"Cannot connect to {self.label} at {self.base_url}: "
                        f"{type(exc).__name__}: {exc}".rstrip(": ")
                        + self.connect_hint
                    ) from exc
                delay = self._delay(attempt, None)
            except httpx.TimeoutException as exc:
                raise ProviderTimeout(
                    f"{self.label} at {self.base_url} did not answer in time ({type(exc).__name__})"
                ) from exc
            except httpx.HTTPError as exc:
                raise ProviderError(
                    f"{self.label} request failed: {type(exc).__name__}: {exc}"
                ) from exc
            attempt += 1
            await anyio.sleep(delay)
