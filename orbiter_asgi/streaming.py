"""`stream_router`: `GET /stream` (SSE) and `WS /ws/chat`.

Both carry the events of `orbiter_asgi.models.Event`. The WebSocket keeps
one connection for many turns: each text (or binary) frame is a
`ChatRequest` or `{"type": "cancel"}`; every turn ends with `done` or
`error`, and a bad frame gets an `error` event without closing the socket.
"""

from __future__ import annotations

import enum

import anyio
import anyio.abc
import msgspec
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send

from ._codec import encode
from ._context import get_context
from ._http import Endpoint, SocketEndpoint, query_params
from ._sse import error_event, send_event_stream
from .exceptions import OrbiterError, RequestError
from .models import ChatRequest, ErrorDetail, ErrorEvent, Event, TextEvent
from .routing import Operation, Router
from .runs import Run, RunItem, start_chat, start_run

__all__ = ["stream_router"]


class StreamEndpoint(Endpoint):
    """`GET /stream?agent_name=&input=&session_id=`."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = query_params(scope)
        if "input" not in query and "message" not in query:
            raise RequestError("Query parameter 'input' is required")
        context = get_context(scope)
        run = start_run(
            context,
            query.get("agent_name") or None,
            query.get("input", query.get("message", "")),
            query.get("session_id") or None,
            source="query",
        )
        await send_event_stream(send, run, receive, heartbeat=context.limits.heartbeat_interval)


class _Socket(enum.Enum):
    CONNECTING = 0
    OPEN = 1
    CLOSED = 2


class _Frame(msgspec.Struct):
    type: str | None = None


_frame = msgspec.json.Decoder(_Frame)
_request = msgspec.json.Decoder(ChatRequest)
_UNREADABLE = ErrorEvent(error="Invalid message: not UTF-8 JSON of a sane depth", code="bad_request")
_BUSY = ErrorEvent(error="A turn is already running; send {\"type\": \"cancel\"} first", code="busy")


class ChatSocket(SocketEndpoint):
    """`WS /ws/chat`: many turns per connection, cancellable.

    The connection's task runs the turns, one at a time. A reader task takes
    every frame meanwhile, so a `cancel` stops the running turn, a chat frame
    sent during a turn is answered `busy`, and a disconnect ends it all. The
    reader hands each turn over on a channel: a turn costs no task, nor
    cancel scope, of its own.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = get_context(scope)
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        state = _Socket.OPEN
        running: Run | None = None  # handed over, and not ended yet
        turns_in, turns_out = anyio.create_memory_object_stream[Run](1)

        async def send_event(event: Event) -> None:
            if state is _Socket.OPEN:
                await send({"type": "websocket.send", "text": encode(event).decode()})

        async def emit(item: RunItem) -> None:
            if type(item) is not list:
                await send_event(item)  # type: ignore[arg-type]
                return
            for text in item:  # text deltas: one message each, still, sent from here
                if state is not _Socket.OPEN:
                    return
                await send({"type": "websocket.send", "text": encode(TextEvent(text)).decode()})

        async def read_frames(group: anyio.abc.TaskGroup) -> None:
            nonlocal state, running
            with turns_in:
                while True:
                    message: Message = await receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    data = message.get("text")
                    if data is None:
                        data = message.get("bytes") or b""
                    if _too_big(data, context.limits.max_ws_message_size):
                        state = _Socket.CLOSED  # nothing more goes out after the close
                        await send({"type": "websocket.close", "code": 1009, "reason": "Message too big"})
                        break
                    try:
                        if _frame.decode(data).type == "cancel":
                            if running is not None:
                                running.cancel()
                            continue
                        request = _request.decode(data)
                        if running is not None:
                            await send_event(_BUSY)
                            continue
                        running = start_chat(context, request)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        await send_event(ErrorEvent(error=f"Invalid message: {exc}", code="bad_request"))
                        continue
                    except (UnicodeDecodeError, RecursionError):
                        await send_event(_UNREADABLE)
                        continue
                    except OrbiterError as exc:
                        await send_event(ErrorEvent(error=exc.message, code=exc.code))
                        continue
                    turns_in.send_nowait(running)  # the last turn was taken: room for this one
            state = _Socket.CLOSED
            group.cancel_scope.cancel()  # a running turn ends; what it produced is stored

        async with anyio.create_task_group() as group, turns_out:
            group.start_soon(read_frames, group)
            async for run in turns_out:
                try:
                    done = await run.drive(emit)
                    assert done is not None  # no `receive`: only a disconnect returns None
                    await send_event(done)
                except Exception as exc:
                    await send_event(error_event(exc, run.agent.name))
                running = None


def _too_big(data: str | bytes, limit: int) -> bool:
    """Past `limit` bytes; text is encoded only when its characters might be."""
    if len(data) > limit:
        return True
    if isinstance(data, str) and len(data) * 4 > limit:
        return len(data.encode("utf-8", "surrogatepass")) > limit
    return False


_TAGS = ["streaming"]

stream_router = Router(
    [
        Route("/stream", StreamEndpoint(), methods=["GET"], name="stream"),
        WebSocketRoute("/ws/chat", ChatSocket(), name="ws_chat"),
    ],
    operations=[
        Operation(
            method="get", path="/stream", summary="Run an agent and stream its events (SSE)",
            query=[("input", str, True), ("agent_name", str, False), ("session_id", str, False)],
            response=Event, responses={404: ErrorDetail, 400: ErrorDetail}, tags=_TAGS,
            media_type="text/event-stream",
        ),
    ],
)
