"""Server-Sent Events: framing and the pump that drives one stream.

The run is produced in its own task, which encodes each event into a small
buffer and yields to the event loop only when the run itself waits or the
buffer is full; the response side sends whatever is ready in one write
(events that arrive together are coalesced), heartbeats a stream that stayed
silent with a comment, and cancels the run when the client goes away
(`http.disconnect`, or `OSError` from `send` under ASGI 2.4).
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import anyio
from starlette.types import Receive, Send

from ._codec import encode
from .exceptions import OrbiterError
from .models import ErrorEvent, Event

if TYPE_CHECKING:
    from .runs import RunItem

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


class _Pending:
    """Frames the producer has encoded and the writer has not sent yet.

    The producer never yields to the event loop on its own account: it fills
    `frames` until the run itself waits (a model call, a delay) or the batch
    is full, so the writer wakes once per batch, not once per event.
    """

    __slots__ = ("finished", "frames", "space", "wake")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.finished = False
        self.wake: anyio.Event | None = None  # set while the writer waits for frames
        self.space: anyio.Event | None = None  # set while the producer waits for room

    def push(self, data: bytes) -> None:
        self.frames.append(data)
        if self.wake is not None:
            self.wake.set()
            self.wake = None

    def take(self) -> list[bytes]:
        frames, self.frames = self.frames, []
        if self.space is not None:
            self.space.set()
            self.space = None
        return frames


async def send_event_stream(
    receive: Receive,
    send: Send,
    events: Callable[[], AbstractAsyncContextManager[AsyncGenerator[RunItem, None]]],
    *,
    agent_name: str,
    heartbeat: float = 15.0,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Respond with the events of `events()` as SSE, ending with `[DONE]`.

    `events()` (e.g. `Run.guarded`) is entered in the producer task, which
    also closes it, cancelled or not.
    """
    pending = _Pending()
    beats = bool(heartbeat) and not math.isinf(heartbeat)

    async def produce() -> None:
        event_id = 0
        # entered here, so a cancelled run closes its generators (and the model's
        # HTTP request behind them) in this task, now, not when garbage-collected
        try:
            async with events() as stream:
                async for item in stream:
                    if type(item) is list:  # ready together: one chunk
                        first = event_id + 1
                        event_id += len(item)
                        pending.push(b"".join(map(frame, range(first, event_id + 1), item)))
                    else:
                        event_id += 1
                        pending.push(frame(event_id, item))  # type: ignore[arg-type]
                    if len(pending.frames) >= _BUFFER:
                        pending.space = space = anyio.Event()
                        await space.wait()
        except Exception as exc:
            pending.push(frame(event_id + 1, error_event(exc, agent_name)))
        pending.finished = True
        pending.push(DONE)

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        group.cancel_scope.cancel()

    await send(
        {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + (headers or [])}
    )
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(watch_disconnect)
            group.start_soon(produce)
            while True:
                if not pending.frames:
                    pending.wake = wake = anyio.Event()
                    if beats:
                        with anyio.move_on_after(heartbeat):
                            await wake.wait()
                    else:
                        await wake.wait()
                    if not pending.frames:  # silent for `heartbeat` seconds
                        pending.wake = None
                        await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                        continue
                finished = pending.finished
                frames = pending.take()
                await send(
                    {
                        "type": "http.response.body",
                        "body": frames[0] if len(frames) == 1 else b"".join(frames),
                        "more_body": not finished,
                    }
                )
                if finished:
                    break
            group.cancel_scope.cancel()
    except* OSError:
        pass  # the client went away mid-send; leaving the task group cancelled the run
