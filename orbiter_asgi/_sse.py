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
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from starlette.types import Receive, Send

from ._codec import encode
from .exceptions import NotFoundError
from .models import Event, TextEvent

if TYPE_CHECKING:
    from .runs import Run, RunItem
    from .stores.journal import RunJournal

__all__ = [
    "SSE_HEADERS",
    "StreamEncoder",
    "done_frame",
    "escape_separators",
    "frame",
    "resume_point",
    "send_event_stream",
    "send_journal_stream",
    "text_frames",
]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
HEARTBEAT = b": ping\n\n"

def escape_separators(chunk: bytes) -> bytes:
    """`chunk`, SSE frames of JSON, with U+0085, U+2028 and U+2029 escaped."""
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


def frame(head: bytes, seq: int, event: Event) -> bytes:
    """One event as an SSE frame: `id: <run_id>:<seq>` and one `data:` line.

    `head` is the run's `id: <run_id>:`, made once per stream.
    """
    return escape_separators(b"%b%d\ndata: %b\n\n" % (head, seq, encode(event)))


def done_frame(head: bytes, seq: int) -> bytes:
    """The end of a stream: `[DONE]`, with the next id, so the last id a client
    saw tells whether it saw the end."""
    return b"%b%d\ndata: [DONE]\n\n" % (head, seq)


def text_frames(head: bytes, first_seq: int, texts: Sequence[str]) -> bytes:
    """Text deltas that were ready together, as `text` events numbered from `first_seq`, in one chunk.

    The texts are encoded in one call, as a JSON list of strings, cut apart
    at `","` and spliced with cached number-and-data prefixes and the run's
    `id:` head by slice assignment, all in C, instead of being formatted one
    by one in Python. That cut is exact when no quote is escaped (the only
    quotes are then the strings' own); texts with quotes in them go the slow
    way. Only the strings can hold line separators, so only they are escaped.
    """
    encoded = encode(texts)
    if b"\\" in encoded and b'\\"' in encoded:  # one byte is found ~5x faster than two
        return b"".join([frame(head, n, TextEvent(text)) for n, text in enumerate(texts, first_seq)])
    strings = escape_separators(encoded)[2:-2].split(b'","')
    # each frame's end and the next one's head are one part: three parts a frame
    between = _TEXT_END + head
    parts = [between] * (3 * len(strings))
    parts[0::3] = _text_prefixes(first_seq, len(strings))
    parts[1::3] = strings
    parts[0] = head + parts[0]
    parts[-1] = _TEXT_END
    return b"".join(parts)


_TEXT_END = b'"}\n\n'
_TEXT_PREFIXES: list[bytes] = []  # [n]: text frame `n` after its run's id head, made as seqs are reached
_MAX_CACHED_ID = 1 << 16  # ~2 MiB of prefixes at most; longer streams format the rest


def _text_prefixes(first_seq: int, count: int) -> list[bytes]:
    end = first_seq + count
    if end > _MAX_CACHED_ID:
        return [b'%d\ndata: {"type":"text","content":"' % n for n in range(first_seq, end)]
    while len(_TEXT_PREFIXES) < end:
        _TEXT_PREFIXES.append(b'%d\ndata: {"type":"text","content":"' % len(_TEXT_PREFIXES))
    return _TEXT_PREFIXES[first_seq:end]


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


class StreamEncoder(Protocol):
    """How a protocol other than the run's own (OpenAI's, AG-UI's) frames a run.

    `send_event_stream` hands it every item the run emits and, once the run
    has ended, the run itself; each answers the bytes to send (b"": nothing).
    """

    def item(self, item: RunItem, chunk: bytes) -> bytes: ...

    def end(self, run: Run) -> bytes: ...


async def send_event_stream(
    send: Send,
    run: Run,
    receive: Receive | None = None,
    *,
    heartbeat: float | None = 15.0,
    encoder: StreamEncoder | None = None,
) -> None:
    """Respond with the events of `run` as SSE: `start`, ..., `done` (or `error`), `[DONE]`,
    as the run framed them, or as `encoder` frames them.

    The run is driven here, in the request's task. A client that leaves
    detaches the run, which goes on for its disconnect grace (or to its end,
    in the background) for a client that resumes it.
    """
    run_id = run.id.encode()
    # a fresh list: middleware may add to the headers in place
    headers = [*SSE_HEADERS, (b"x-run-id", run_id)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    writer = _Writer(send, _interval(heartbeat))
    gone = False

    async def emit(item: RunItem, chunk: bytes) -> None:
        nonlocal gone
        if gone:
            return
        if encoder is not None:
            chunk = encoder.item(item, chunk)
            if not chunk:
                return
        try:
            await writer.push(chunk)
        except OSError:  # from `send`: the client left
            gone = True
            run.detach()

    try:
        try:  # noqa: SIM105 (contextlib.suppress costs three calls on every stream)
            await run.drive(emit, receive)
        except Exception:  # the run's last frames tell its failure
            pass
        if not gone and run.detached_at is None and run.final:
            await writer.finish(run.final if encoder is None else encoder.end(run))
    except OSError:
        pass  # the client went away mid-send; the run has ended
    finally:
        writer.close()


def resume_point(value: bytes | str | None) -> tuple[str, int] | None:
    """The `(run_id, seq)` of a `Last-Event-ID: <run_id>:<seq>`; None for any other value
    (an id of some other stream starts a new run, as it always did)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    run_id, colon, seq = text.strip().rpartition(":")
    if not colon or not run_id or not seq.isascii() or not seq.isdigit() or len(seq) > 18:
        return None
    return run_id, int(seq)


def _interval(heartbeat: float | None) -> float | None:
    return heartbeat if heartbeat and heartbeat != float("inf") else None


async def send_journal_stream(
    send: Send, journal: RunJournal, run_id: str, after: int, *, heartbeat: float | None = 15.0
) -> None:
    """Respond with the frames of a run after frame `after`, from its journal,
    then live ones until `[DONE]`: what a direct client of the run would
    have had from there, byte for byte. A 204 when there is nothing after
    `after` (the client saw the end); 404 or 410 before anything is sent."""
    piece = await journal.read(run_id, after, wait=0)
    if piece is None:
        raise NotFoundError(f"Run {run_id!r} not found; it may have expired")
    if piece.ended and not piece.frames:
        headers = [(b"x-run-id", run_id.encode())]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [*SSE_HEADERS, (b"x-run-id", run_id.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    wait = _interval(heartbeat) or 15.0
    touched = 0.0
    fresh = True
    try:
        while True:
            now = time.monotonic()
            if now - touched >= 1.0:  # a follower keeps a detached run alive
                await journal.touch(run_id)
                touched = now
            if piece.ended:
                await send({"type": "http.response.body", "body": b"".join(piece.frames)})
                return
            if piece.frames:
                await send({"type": "http.response.body", "body": b"".join(piece.frames), "more_body": True})
            elif not fresh:  # a wait ran out: keep the connection alive
                await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
            fresh = False
            after = piece.first + len(piece.frames) - 1
            next_piece = await journal.read(run_id, after, wait=wait)
            if next_piece is None:  # expired while followed
                await send({"type": "http.response.body", "body": b""})
                return
            piece = next_piece
    except OSError:
        pass  # the client went away; the run goes on
