"""`stream_router`: `GET /stream` (SSE) and `WS /ws/chat`.

Both carry the events of `orbiter_asgi.models.Event`. The WebSocket keeps
one connection for many turns: each text (or binary) frame is a
`ChatRequest` or `{"type": "cancel"}`. Every turn ends with exactly one
`done`: a failed or cancelled turn sends its `error` first, then `done` with
what it produced, so a client that reads until `done` never hangs. A frame
refused before its turn starts (bad JSON, an unknown agent, an empty input)
gets `error` and `done` too, and the socket stays open.
"""

from __future__ import annotations

import anyio
import msgspec
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send

from ._codec import encode
from ._context import AppContext, get_context
from ._http import Endpoint, SocketEndpoint, header, query_params
from ._sse import resume_point, send_event_stream, send_journal_stream
from .exceptions import OrbiterError, RequestError
from .models import ChatRequest, DoneEvent, ErrorDetail, ErrorEvent, Event, TextEvent
from .routing import Operation, Router
from .runs import Run, RunItem, run_not_found, start_chat, start_run

__all__ = ["sse_stream", "stream_router", "ws_chat"]


class StreamEndpoint(Endpoint):
    """`GET /stream?agent_name=&input=&session_id=`.

    A browser `EventSource` reconnects with `Last-Event-ID: <run_id>:<n>`:
    that resumes the run, from the journal, instead of starting another.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = get_context(scope)
        resume = resume_point(header(scope, b"last-event-id"))
        if resume is not None:
            await send_journal_stream(
                send, context.store.runs, *resume, heartbeat=context.limits.heartbeat_interval
            )
            return
        query = query_params(scope)
        if "input" not in query and "message" not in query:
            raise RequestError("Query parameter 'input' is required")
        run = start_run(
            context,
            query.get("agent_name") or None,
            query.get("input", query.get("message", "")),
            query.get("session_id") or None,
            source="query",
        )
        await send_event_stream(send, run, receive, heartbeat=context.limits.heartbeat_interval)


class _Frame(msgspec.Struct):
    type: str | None = None


class _Resume(msgspec.Struct):
    """`{"type": "resume", "run_id": ..., "after": n}`: follow a run from its journal."""

    run_id: str
    after: int = 0


_frame = msgspec.json.Decoder(_Frame)
_request = msgspec.json.Decoder(ChatRequest)
_resume = msgspec.json.Decoder(_Resume)
_UNREADABLE = ErrorEvent(error="Invalid message: not UTF-8 JSON of a sane depth", code="bad_request")
_REFUSED = DoneEvent()  # the `done` of a frame that was not even a turn
_BUSY = ErrorEvent(error="A turn is already running; send {\"type\": \"cancel\"} first", code="busy")


class ChatSocket(SocketEndpoint):
    """`WS /ws/chat`: many turns per connection, cancellable."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await _Connection(get_context(scope), receive, send).serve()


class _Connection:
    """One accepted socket. Its task runs the turns, one at a time.

    A reader task takes every frame meanwhile, so a `cancel` stops the
    running turn, a chat frame sent during a turn is answered `busy`, and a
    disconnect detaches the running turn (it goes on for the app's
    disconnect grace, for a client that resumes it elsewhere). The reader
    hands each turn over on a one-slot channel: a turn costs no task, nor
    cancel scope, of its own. A `resume` frame is a turn too: following a
    run from the journal.
    """

    __slots__ = ("_context", "_open", "_receive", "_running", "_send", "_turns_in", "_turns_out")

    def __init__(self, context: AppContext, receive: Receive, send: Send) -> None:
        self._context = context
        self._receive = receive
        self._send = send
        self._open = True  # until the client leaves or is sent a close
        self._running: Run | _Resume | None = None  # handed over, and not ended yet
        self._turns_in, self._turns_out = anyio.create_memory_object_stream[Run | _Resume](1)

    async def serve(self) -> None:
        async with anyio.create_task_group() as group, self._turns_out:
            group.start_soon(self._read_frames)  # it ends the loop when the client leaves
            async for turn in self._turns_out:
                if isinstance(turn, _Resume):
                    await self._follow(turn)
                    self._running = None
                else:
                    await self._turn(turn)

    async def _turn(self, run: Run) -> None:
        error: ErrorEvent | None = None
        try:
            done = await run.drive(self._emit)  # None once the client left and its grace ran out
        except Exception as exc:
            error = run.error_event(exc)
            done = run.result or DoneEvent(
                run_id=run.id, agent_name=run.agent.name, session_id=run.session_id
            )
        # over: a frame sent by a client that already has the end is not `busy`
        self._running = None
        if error is not None:
            await self._send_event(error)
        if done is not None:
            await self._send_event(done)

    async def _follow(self, resume: _Resume) -> None:
        """The events of a run after `resume.after`, from its journal, then
        live ones; a failed run's `error` is followed by its `done`."""
        journal = self._context.store.runs
        after = resume.after
        last: bytes = b""
        try:
            while self._open:
                piece = await journal.read(resume.run_id, after, wait=self._context.limits.heartbeat_interval)
                if piece is None:
                    raise run_not_found(resume.run_id)
                await journal.touch(resume.run_id)
                for frame in piece.frames:
                    payload = frame.partition(b"\ndata: ")[2][:-2]
                    if payload != b"[DONE]" and self._open:
                        last = payload
                        await self._send({"type": "websocket.send", "text": payload.decode()})
                after = piece.first + len(piece.frames) - 1
                if piece.ended:
                    break
        except OrbiterError as exc:
            await self._send_event(ErrorEvent(run_id=resume.run_id, error=exc.message, code=exc.code))
            await self._send_event(DoneEvent(run_id=resume.run_id))
            return
        info = await journal.get(resume.run_id)
        if info is not None and not last.startswith(b'{"type":"done"'):
            await self._send_event(DoneEvent.of_run(info))

    async def _send_event(self, event: Event) -> None:
        if self._open:
            await self._send({"type": "websocket.send", "text": encode(event).decode()})

    async def _emit(self, item: RunItem, chunk: bytes) -> None:
        if type(item) is not list:
            await self._send_event(item)  # type: ignore[arg-type]
            return
        send = self._send
        for text in item:  # text deltas: one message each, still, sent from here
            if not self._open:
                return
            await send({"type": "websocket.send", "text": encode(TextEvent(text)).decode()})

    async def _read_frames(self) -> None:
        with self._turns_in:
            while True:
                message: Message = await self._receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                if _too_big(data, self._context.limits.max_ws_message_size):
                    self._open = False  # nothing more goes out after the close
                    await self._send({"type": "websocket.close", "code": 1009, "reason": "Message too big"})
                    break
                run = await self._take(data)
                if run is not None:
                    self._running = run
                    self._turns_in.send_nowait(run)  # the last turn was taken: room for this one
        self._open = False
        if isinstance(self._running, Run):
            self._running.detach()  # it ends after its grace, unless resumed elsewhere

    async def _take(self, data: str | bytes) -> Run | _Resume | None:
        """The turn a frame asks for; None when the frame was answered here.

        A refused turn ends with `done` like any other, unless a turn is
        running: its client reads until that turn's `done`, and a second one
        would end it early.
        """
        request: ChatRequest | None = None
        try:
            kind = _frame.decode(data).type
            if kind == "cancel":
                if isinstance(self._running, Run):
                    self._running.cancel()
                elif self._running is not None:
                    await self._context.store.runs.cancel(self._running.run_id)
                return None
            if kind == "resume":
                if self._running is not None:
                    await self._send_event(_BUSY)
                    return None
                return _resume.decode(data)
            request = _request.decode(data)
            if self._running is not None:
                await self._send_event(_BUSY)
                return None
            return start_chat(self._context, request)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = ErrorEvent(error=f"Invalid message: {exc}", code="bad_request")
        except (UnicodeDecodeError, RecursionError):
            error = _UNREADABLE
        except OrbiterError as exc:
            error = ErrorEvent(error=exc.message, code=exc.code)
        await self._send_event(error)
        if self._running is None:
            done = _REFUSED if request is None else DoneEvent(
                agent_name=request.agent_name or "", session_id=request.session_id
            )
            await self._send_event(done)
        return None


def _too_big(data: str | bytes, limit: int) -> bool:
    """Past `limit` bytes; text is encoded only when its characters might be."""
    if len(data) > limit:
        return True
    if isinstance(data, str) and len(data) * 4 > limit:
        return len(data.encode("utf-8", "surrogatepass")) > limit
    return False


# the original package's handler names, also those of the routes
sse_stream = StreamEndpoint()
ws_chat = ChatSocket()

_TAGS = ["streaming"]

stream_router = Router(
    [
        Route("/stream", sse_stream, methods=["GET"], name="sse_stream"),
        WebSocketRoute("/ws/chat", ws_chat, name="ws_chat"),
    ],
    operations=[
        Operation(
            method="get", path="/stream", summary="Run an agent and stream its events (SSE)",
            query=[("input", str, True), ("agent_name", str, False), ("session_id", str, False)],
            headers=[("Last-Event-ID", str, False)],
            response=Event,
            responses={400: ErrorDetail, 404: ErrorDetail, 410: ErrorDetail, 503: ErrorDetail},
            tags=_TAGS,
            media_type="text/event-stream",
        ),
    ],
)
