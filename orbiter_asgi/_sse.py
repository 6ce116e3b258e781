"""Server-Sent Events: framing, and the pump that sends one run as a stream.

The run is driven in the request's own task and each item it emits is
written at once: one event, or all the events that were ready together (the
run passes those as one list), in one write. `send` blocking on a slow client
blocks the run, which is ASGI backpressure with nothing buffered. A silent
stream gets a comment heartbeat from a timer, which starts a task only when
the stream has been idle for a whole interval. The client going away
(`OSError` from `send` under ASGI 2.4, or `http.disconnect` seen by the run's
guard) ends the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from starlette.types import Receive, Send

from ._codec import encode
from .exceptions import OrbiterError
from .models import ErrorEvent, Event

if TYPE_CHECKING:
    from .runs import Run, RunItem

__all__ = ["SSE_HEADERS", "error_event", "frame", "frames", "send_event_stream"]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
HEARTBEAT = b": ping\n\n"
DONE = b"data: [DONE]\n\n"

def _escape_separators(chunk: bytes) -> bytes:
    # msgspec escapes CR and LF inside strings, so one `data:` line is always
    # enough for an SSE parser; U+0085, U+2028 and U+2029 it leaves raw, and
    # line readers that split like str.splitlines (httpx's `aiter_lines`, as in
    # the guide's client) would cut the line there, so those are escaped too.
    # Those bytes occur only inside JSON strings, so a whole chunk is escaped at
    # once; an ASCII chunk (checked ~50x faster than searched) has none of them.
    if not chunk.isascii() and (b"\xe2\x80" in chunk or b"\xc2\x85" in chunk):
        chunk = (
            chunk.replace(b"\xe2\x80\xa8", b"\\u2028")
            .replace(b"\xe2\x80\xa9", b"\\u2029")
            .replace(b"\xc2\x85", b"\\u0085")
        )
    return chunk


def frame(event_id: int, event: Event) -> bytes:
    """One event as an SSE frame: `id: N` and one `data:` line."""
    return _escape_separators(b"id: %d\ndata: %b\n\n" % (event_id, encode(event)))


def frames(first_id: int, events: Sequence[Event]) -> bytes:
    """Events that were ready together, numbered from `first_id`, as one chunk."""
    chunk = b"".join([b"id: %d\ndata: %b\n\n" % (n, encode(e)) for n, e in enumerate(events, first_id)])
    return _escape_separators(chunk)


def error_event(exc: BaseException, agent_name: str) -> ErrorEvent:
    if isinstance(exc, OrbiterError):
        return ErrorEvent(error=exc.message, code=exc.code)
    return ErrorEvent(error=f"Agent {agent_name!r} failed: {type(exc).__name__}", code="agent_error")


class _Writer:
    """Writes body chunks, and heartbeats between them while the run is silent."""

    __slots__ = ("_handle", "_interval", "_loop", "_ping", "_send", "_writing", "last_write")

    def __init__(self, send: Send, interval: float | None) -> None:
        self._send = send
        self._interval = interval
        self._ping: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._writing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        if interval is not None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # not asyncio (trio): no heartbeats
                return
            self.last_write = self._loop.time()
            self._handle = self._loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None and self._interval is not None
        idle = self._loop.time() - self.last_write
        if self._writing or self._ping is not None:
            idle = 0.0  # a send is under way (maybe held by a slow reader): look again later
        elif idle >= self._interval:
            self._ping = self._loop.create_task(self._send_ping())
            idle = 0.0
        self._handle = self._loop.call_later(self._interval - idle, self._tick)

    async def _send_ping(self) -> None:
        try:
            await self._send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
        except OSError:
            pass  # the client is gone; the next write says so to the pump
        finally:
            self._ping = None
            if self._loop is not None:
                self.last_write = self._loop.time()

    async def write(self, body: bytes, more_body: bool = True) -> None:
        if self._ping is not None:  # never two sends at once
            await asyncio.shield(self._ping)
        self._writing = True
        try:
            await self._send({"type": "http.response.body", "body": body, "more_body": more_body})
        finally:
            self._writing = False
            if self._loop is not None:
                self.last_write = self._loop.time()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._ping is not None:
            self._ping.cancel()


async def send_event_stream(
    send: Send,
    run: Run,
    receive: Receive | None = None,
    *,
    heartbeat: float | None = 15.0,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Respond with the events of `run` as SSE, ending with `done` (or `error`) and `[DONE]`.

    The run is driven here, in the request's task, so a client that leaves
    ends the run (and the model request behind it) now.
    """
    await send(
        {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + (headers or [])}
    )
    writer = _Writer(send, heartbeat if heartbeat and heartbeat != float("inf") else None)
    event_id = 0

    async def emit(item: RunItem) -> None:
        nonlocal event_id
        if type(item) is list:  # ready together: one write
            chunk = frames(event_id + 1, item)
            event_id += len(item)
        else:
            event_id += 1
            chunk = frame(event_id, item)  # type: ignore[arg-type]
        await writer.write(chunk)

    try:
        last: Event | None
        try:
            last = await run.drive(emit, receive)
        except OSError:
            raise  # from `send`: the client left
        except Exception as exc:
            last = error_event(exc, run.agent.name)
        if last is not None:  # `done` or an error goes out with [DONE], unless the client left
            await writer.write(frame(event_id + 1, last) + DONE, more_body=False)
    except OSError:
        pass  # the client went away mid-send; the run has ended
    finally:
        writer.close()
