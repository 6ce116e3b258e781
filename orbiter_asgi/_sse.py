"""Server-Sent Events: framing and the pump that drives one stream.

The run is produced in its own task into a small buffer; the response side
sends whatever is ready in one write (events that arrive together are
coalesced), heartbeats an idle stream with a comment, and cancels the run
when the client goes away (`http.disconnect`, or `OSError` from `send`
under ASGI 2.4).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager

import anyio
from starlette.types import Receive, Send

from ._codec import encode
from .exceptions import OrbiterError
from .models import ErrorEvent, Event

__all__ = ["SSE_HEADERS", "error_event", "frame", "send_event_stream"]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
HEARTBEAT = b": ping\n\n"
DONE = b"data: [DONE]\n\n"

_BUFFER = 64


def frame(event_id: int, event: Event) -> bytes:
    # msgspec escapes CR and LF inside strings, so one `data:` line is always
    # enough for an SSE parser; U+0085, U+2028 and U+2029 it leaves raw, and
    # line readers that split like str.splitlines (httpx's `aiter_lines`, as in
    # the guide's client) would cut the line there, so those are escaped too.
    payload = encode(event)
    if b"\xe2\x80" in payload or b"\xc2\x85" in payload:
        payload = (
            payload.replace(b"\xe2\x80\xa8", b"\\u2028")
            .replace(b"\xe2\x80\xa9", b"\\u2029")
            .replace(b"\xc2\x85", b"\\u0085")
        )
    return b"id: %d\ndata: %b\n\n" % (event_id, payload)


def error_event(exc: BaseException, agent_name: str) -> ErrorEvent:
    if isinstance(exc, OrbiterError):
        return ErrorEvent(error=exc.message, code=exc.code)
    return ErrorEvent(error=f"Agent {agent_name!r} failed: {type(exc).__name__}", code="agent_error")


class _Ping:
    pass


_PING = _Ping()
_END = object()


async def send_event_stream(
    receive: Receive,
    send: Send,
    events: Callable[[], AbstractAsyncContextManager[AsyncGenerator[Event, None]]],
    *,
    agent_name: str,
    heartbeat: float = 15.0,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Respond with the events of `events()` as SSE, ending with `[DONE]`.

    `events()` (e.g. `Run.guarded`) is entered in the producer task, which
    also closes it, cancelled or not.
    """
    sender, receiver = anyio.create_memory_object_stream[object](_BUFFER)
    last_write = anyio.current_time()

    async def produce() -> None:
        # entered here, so a cancelled run closes its generators (and the model's
        # HTTP request behind them) in this task, now, not when garbage-collected
        try:
            async with events() as stream:
                async for event in stream:
                    await sender.send(event)
        except Exception as exc:
            await sender.send(error_event(exc, agent_name))
        await sender.send(_END)

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        group.cancel_scope.cancel()

    async def beat() -> None:
        while True:
            await anyio.sleep(heartbeat)
            if anyio.current_time() - last_write >= heartbeat:
                with contextlib.suppress(anyio.WouldBlock):
                    sender.send_nowait(_PING)

    await send(
        {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + (headers or [])}
    )
    event_id = 0
    try:
        with sender, receiver:
            async with anyio.create_task_group() as group:
                group.start_soon(watch_disconnect)
                group.start_soon(produce)
                if heartbeat and not math.isinf(heartbeat):
                    group.start_soon(beat)
                finished = False
                while not finished:
                    item = await receiver.receive()
                    parts: list[bytes] = []
                    while True:
                        if item is _END:
                            parts.append(DONE)
                            finished = True
                            break
                        if item is _PING:
                            parts.append(HEARTBEAT)
                        else:
                            event_id += 1
                            parts.append(frame(event_id, item))  # type: ignore[arg-type]
                        try:
                            item = receiver.receive_nowait()
                        except anyio.WouldBlock:
                            break
                    await send(
                        {
                            "type": "http.response.body",
                            "body": parts[0] if len(parts) == 1 else b"".join(parts),
                            "more_body": not finished,
                        }
                    )
                    last_write = anyio.current_time()
                group.cancel_scope.cancel()
    except* OSError:
        pass  # the client went away mid-send; leaving the task group cancelled the run
