"""A scripted fake model server behind `httpx.MockTransport`.

A test queues turns (`text`, `tool_calls`, `status`, ...); each request the
provider makes is recorded and answered by the next turn, rendered in the
provider's exact wire format by a subclass. Streaming bodies record whether
the client closed them, which is how cancellation is observed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

__all__ = [
    "Call",
    "FakeModelServer",
    "FakeStream",
    "Hang",
    "Raise",
    "Raw",
    "Recorded",
    "Status",
    "Text",
    "ToolCalls",
]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass
class Call:
    """A tool call; `arguments` is the raw JSON, sent in `pieces` fragments."""

    id: str
    name: str
    arguments: str = "{}"
    pieces: int = 3

    def fragments(self) -> list[str]:
        size = max(1, -(-len(self.arguments) // self.pieces))
        return [self.arguments[i : i + size] for i in range(0, len(self.arguments), size)]


@dataclass
class Text:
    chunks: list[str]
    usage: tuple[int, int] = (10, 5)


@dataclass
class ToolCalls:
    calls: list[Call]
    text: list[str] = field(default_factory=list)
    usage: tuple[int, int] = (10, 5)


@dataclass
class Status:
    code: int
    message: str = "error"
    retry_after: str | None = "0"


@dataclass
class Raw:
    """Send these SSE bytes as they are (malformed streams, mid-stream errors)."""

    body: bytes


@dataclass
class Hang:
    """Send a text turn's first chunks, then never finish."""

    chunks: list[str]


@dataclass
class Raise:
    """The transport raises this httpx error instead of answering."""

    error: Exception


@dataclass
class Recorded:
    url: str
    headers: httpx.Headers
    body: dict[str, Any]


class FakeStream(httpx.AsyncByteStream):
    def __init__(self, parts: list[bytes], *, hang: bool = False) -> None:
        self.parts = parts
        self.hang = hang
        self.closed = False
        self.started = anyio.Event() if hang else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        if self.started is not None:
            self.started.set()
            await anyio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True


class FakeModelServer:
    """Base of the fakes; subclasses render turns and read requests."""

    path = ""

    def __init__(self, *turns: Any) -> None:
        self.turns: list[Any] = list(turns)
        self.requests: list[Recorded] = []
        self.streams: list[FakeStream] = []

    def push(self, *turns: Any) -> None:
        self.turns.extend(turns)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))

    async def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread())
        self.requests.append(Recorded(str(request.url), request.headers, body))
        assert request.url.path.endswith(self.path), request.url
        assert body["stream"] is True
        if not self.turns:
            return self.status_response(Status(500, "the fake's script is exhausted", None))
        turn = self.turns.pop(0)
        if isinstance(turn, Raise):
            raise turn.error
        if isinstance(turn, Status):
            return self.status_response(turn)
        if isinstance(turn, Raw):
            stream = FakeStream([turn.body])
        elif isinstance(turn, Hang):
            stream = FakeStream(self.render(Text(turn.chunks), body["model"])[:-3], hang=True)
        else:
            stream = FakeStream(self.render(turn, body["model"]))
        self.streams.append(stream)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream; charset=utf-8"}, stream=stream
        )

    def status_response(self, turn: Status) -> httpx.Response:
        headers = {"retry-after": turn.retry_after} if turn.retry_after is not None else {}
        return httpx.Response(turn.code, headers=headers, json=self.error_body(turn))

    # --- per wire format ---------------------------------------------------

    def render(self, turn: Text | ToolCalls, model: str) -> list[bytes]:
        raise NotImplementedError

    def error_body(self, turn: Status) -> dict[str, Any]:
        raise NotImplementedError

    def system(self, index: int) -> str | None:
        raise NotImplementedError

    def tool_names(self, index: int) -> list[str]:
        raise NotImplementedError

    def tool_results(self, index: int) -> list[dict[str, Any]]:
        """`[{id, content, is_error}]` in request `index`'s messages."""
        raise NotImplementedError

    def tool_calls(self, index: int) -> list[dict[str, Any]]:
        """`[{id, name, arguments}]` the history of request `index` replays."""
        raise NotImplementedError

    def user_texts(self, index: int) -> list[str]:
        raise NotImplementedError
