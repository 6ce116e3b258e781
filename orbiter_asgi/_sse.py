"""Server-Sent Events: framing, and the pump that sends one run as a stream.

The run is driven in the request's own task. What it emits within one
event-loop iteration (one event, or a list of text deltas that were ready
together) leaves in one write; a slow client holds back the run, which is
ASGI backpressure with at most one chunk waiting. A silent stream gets a
comment heartbeat from a timer, which starts a task only when the stream
has been idle for a whole interval. The client going away (`OSError` from
`send` under ASGI 2.4, or `http.disconnect` seen by the run's guard) ends
the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from starlette.types import Receive, Send

from ._codec import encode
from .exceptions import OrbiterError
from .models import ErrorEvent, Event, TextEvent

if TYPE_CHECKING:
    from .runs import Run, RunItem

__all__ = ["SSE_HEADERS", "error_event", "frame", "send_event_stream", "text_frames"]

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


def text_frames(first_id: int, texts: Sequence[str]) -> bytes:
    """Text deltas that were ready together, as `text` events numbered from `first_id`, in one chunk.

    The texts are encoded in one call, as a JSON list of strings, cut apart
    at `","` and spliced with cached `id:` prefixes by slice assignment, all
    in C, instead of being formatted one by one in Python. That cut is exact
    when no quote is escaped (the only quotes are then the strings' own);
    texts with quotes in them go the slow way.
    """
    encoded = encode(texts)
    if b"\\" in encoded and b'\\"' in encoded:  # one byte is found ~5x faster than two
        return b"".join([frame(n, TextEvent(text)) for n, text in enumerate(texts, first_id)])
    strings = encoded[2:-2].split(b'","')
    parts = [_TEXT_END] * (3 * len(strings))
    parts[0::3] = _text_prefixes(first_id, len(strings))
    parts[1::3] = strings
    return _escape_separators(b"".join(parts))


_TEXT_END = b'"}\n\n'
_TEXT_PREFIXES: list[bytes] = []  # [n]: the start of text frame `n`, made as ids are reached
_MAX_CACHED_ID = 1 << 16  # ~3 MiB of prefixes at most; longer streams format the rest


def _text_prefixes(first_id: int, count: int) -> list[bytes]:
    end = first_id + count
    if end > _MAX_CACHED_ID:
        return [b'id: %d\ndata: {"type":"text","content":"' % n for n in range(first_id, end)]
    while len(_TEXT_PREFIXES) < end:
        _TEXT_PREFIXES.append(b'id: %d\ndata: {"type":"text","content":"' % len(_TEXT_PREFIXES))
    return _TEXT_PREFIXES[first_id:end]


def error_event(exc: BaseException, agent_name: str) -> ErrorEvent:
    if isinstance(exc, OrbiterError):
        return ErrorEvent(error=exc.message, code=exc.code)
    return ErrorEvent(error=f"Agent {agent_name!r} failed: {type(exc).__name__}", code="agent_error")


class _Writer:
    """The body of one SSE response: its chunks, batched, and heartbeats.

    Chunks pushed within one event-loop iteration leave in one send, so a run
    whose events are all ready at once (an `echo` answer) is answered in one
    write after the headers. When the run yields to the loop (a model
    streaming over the network), what it pushed is sent by a task the loop
    runs next; the run waits for that send before it pushes more, so a slow
    reader holds the run back and at most one chunk waits. The heartbeat
    timer is armed only once the stream outlives its first loop iteration.
    Without asyncio (trio) every chunk is sent at once, without heartbeats.
    """

    __slots__ = (
        "_closed",
        "_error",
        "_flushing",
        "_interval",
        "_loop",
        "_pending",
        "_scheduled",
        "_send",
        "_timer",
        "last_write",
    )

    def __init__(self, send: Send, interval: float | None) -> None:
        self._send = send
        self._interval = interval
        self._pending: list[bytes] = []
        self._flushing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._error: Exception | None = None
        self._closed = False
        self._scheduled = True
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio
            self._loop = None
            return
        self.last_write = self._loop.time()
        self._loop.call_soon(self._on_next_iteration)

    async def push(self, chunk: bytes) -> None:
        """Send `chunk` once the run yields to the loop, with what else it pushes until then."""
        if self._loop is None:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
            return
        if self._flushing is not None:  # one send at a time
            await asyncio.shield(self._flushing)
        if self._error is not None:
            raise self._error
        self._pending.append(chunk)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._on_next_iteration)

    async def finish(self, chunk: bytes) -> None:
        """Send what is pending and `chunk`, and end the response."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        if self._error is not None:
            raise self._error
        if self._pending:
            chunk = b"".join([*self._pending, chunk])
            self._pending.clear()
        await self._send({"type": "http.response.body", "body": chunk, "more_body": False})

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._flushing is not None:
            self._flushing.cancel()

    def _on_next_iteration(self) -> None:
        # the run yielded to the loop, or has ended
        self._scheduled = False
        if self._closed:
            return
        assert self._loop is not None
        if self._timer is None and self._interval is not None:
            self._timer = self._loop.call_later(self._interval, self._tick)
        if self._pending and self._flushing is None:
            self._flushing = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        assert self._loop is not None
        try:
            while self._pending:
                body = b"".join(self._pending)
                self._pending.clear()
                await self._send({"type": "http.response.body", "body": body, "more_body": True})
                self.last_write = self._loop.time()
        except Exception as exc:  # `OSError`: the client left; the run learns at its next push
            self._error = exc
        finally:
            self._flushing = None

    def _tick(self) -> None:
        assert self._loop is not None and self._interval is not None
        idle = self._loop.time() - self.last_write
        if self._flushing is not None or self._pending:
            idle = 0.0  # a send is under way (maybe held by a slow reader): look again later
        elif idle >= self._interval:
            self._pending.append(HEARTBEAT)
            self._flushing = self._loop.create_task(self._flush())
            idle = 0.0
        self._timer = self._loop.call_later(self._interval - idle, self._tick)


async def send_event_stream(
    send: Send,
    run: Run,
    receive: Receive | None = None,
    *,
    heartbeat: float | None = 15.0,
) -> None:
    """Respond with the events of `run` as SSE, ending with `done` (or `error`) and `[DONE]`.

    The run is driven here, in the request's task, so a client that leaves
    ends the run (and the model request behind it) now.
    """
    # a fresh list: middleware may add to the headers in place
    await send({"type": "http.response.start", "status": 200, "headers": list(SSE_HEADERS)})
    writer = _Writer(send, heartbeat if heartbeat and heartbeat != float("inf") else None)
    event_id = 0

    async def emit(item: RunItem) -> None:
        nonlocal event_id
        if type(item) is list:  # text deltas ready together: one write
            chunk = text_frames(event_id + 1, item)
            event_id += len(item)
        else:
            event_id += 1
            chunk = frame(event_id, item)  # type: ignore[arg-type]
        await writer.push(chunk)

    try:
        last: Event | None
        try:
            last = await run.drive(emit, receive)
        except OSError:
            raise  # from `send`: the client left
        except Exception as exc:
            last = error_event(exc, run.agent.name)
        if last is not None:  # `done` or an error goes out with [DONE], unless the client left
            await writer.finish(frame(event_id + 1, last) + DONE)
    except OSError:
        pass  # the client went away mid-send; the run has ended
    finally:
        writer.close()
