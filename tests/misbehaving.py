"""Agents, providers, stores and ASGI drivers that misbehave on purpose."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio

from orbiter_asgi.exceptions import ProviderError, StoreError
from orbiter_asgi.models import Message, TextEvent, Usage
from orbiter_asgi.providers.base import ModelEvent, ModelRequest
from orbiter_asgi.stores import MemoryStore


class Gate:
    """An agent that says `start`, then waits for `open()`, then says `end`.

    `started` counts runs that reached the gate; `ended_by` records how each
    run ended (`completed`, or the exception that ended it).
    """

    name = "gate"

    def __init__(self) -> None:
        self.running = 0
        self.reached = anyio.Event()
        self.opened = anyio.Event()
        self.ended_by: list[str] = []

    def open(self) -> None:
        self.opened.set()

    async def stream(self, input: str, *, messages: Any) -> AsyncIterator[str]:
        self.running += 1
        try:
            yield "start "
            self.reached.set()
            await self.opened.wait()
            yield "end"
            self.ended_by.append("completed")
        except BaseException as exc:
            self.ended_by.append(type(exc).__name__)
            raise
        finally:
            self.running -= 1

    async def wait_running(self, count: int) -> None:
        while self.running < count:
            await anyio.sleep(0.005)


class FaultyProvider:
    """A model provider that fails the way real ones do.

    mode `ok` echoes; `stall` says one word and hangs; `error_mid` says two
    words and raises `ProviderError`; `garbage` yields a non-event; `crash`
    raises a plain `RuntimeError` mid-stream.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0
        self.cancelled = 0
        self.closed = False

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.calls += 1
        prompt = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        try:
            if self.mode == "ok":
                yield TextEvent(prompt)
            elif self.mode == "stall":
                yield TextEvent("thinking ")
                await anyio.sleep_forever()
            elif self.mode == "error_mid":
                yield TextEvent("half ")
                yield TextEvent("an answer")
                raise ProviderError("Upstream returned 500 mid-stream", status=500)
            elif self.mode == "garbage":
                yield TextEvent("fine so far ")
                yield {"choices": None}  # type: ignore[misc]
            elif self.mode == "crash":
                yield TextEvent("about to ")
                raise RuntimeError("segfault-ish")
            yield Usage(input_tokens=1, output_tokens=1, total_tokens=2)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise

    async def aclose(self) -> None:
        self.closed = True


class FlakyStore(MemoryStore):
    """A memory store whose `append` fails while `failing` is set.

    `fail_on` picks which append fails: `user` (the one that opens a turn),
    `assistant` (the one that closes it) or `any`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fail_on: str | None = None

    async def append(self, session_id: str, messages: Sequence[Message]) -> list[Message]:
        roles = {m.role for m in messages}
        if (
            self.fail_on == "any"
            or (self.fail_on == "user" and roles == {"user"})
            or (self.fail_on == "assistant" and "user" not in roles)
        ):
            raise StoreError("The session store is unavailable")
        return await super().append(session_id, messages)


class Response:
    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: Any,
    scope: dict[str, Any],
    body: Sequence[bytes] = (b"",),
    *,
    on_chunk: Callable[[Response], Awaitable[bool]] | None = None,
) -> tuple[Response, int]:
    """Call `app` the way a server would; returns the response and how many
    request-body messages the app received. `on_chunk` returning True
    disconnects the client."""
    response = Response()
    disconnect = anyio.Event()
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received < len(body):
            received += 1
            return {"type": "http.request", "body": body[received - 1], "more_body": received < len(body)}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = dict(message.get("headers", []))
        elif message["type"] == "http.response.body":
            response.chunks.append(message.get("body", b""))
            if on_chunk is not None and await on_chunk(response):
                disconnect.set()

    await app(scope, receive, send)
    return response, received


def texts(events: Sequence[Any]) -> str:
    return "".join(e["content"] for e in events if isinstance(e, dict) and e["type"] == "text")
