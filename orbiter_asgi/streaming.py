"""`stream_router`: `GET /stream` (SSE) and `WS /ws/chat`.

Both carry the events of `orbiter_asgi.models.Event`. The WebSocket keeps
one connection for many turns: each text (or binary) frame is a
`ChatRequest` or `{"type": "cancel"}`; every turn ends with `done` or
`error`, and a bad frame gets an `error` event without closing the socket.
"""

from __future__ import annotations

import enum

import anyio
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
_CANCELLED = ErrorEvent(error="The turn was cancelled", code="cancelled")
_BUSY = ErrorEvent(error="A turn is already running; send {\"type\": \"cancel\"} first", code="busy")


class ChatSocket(SocketEndpoint):
    """`WS /ws/chat`: many turns per connection, cancellable."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = get_context(scope)
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        state = _Socket.OPEN
        turn: anyio.CancelScope | None = None

        async def send_event(event: Event) -> None:
            if state is _Socket.OPEN:
                await send({"type": "websocket.send", "text": encode(event).decode()})

        async def emit(item: RunItem) -> None:
            if type(item) is list:  # text deltas: one message each, still
                for text in item:
                    await send_event(TextEvent(text))
            else:
                await send_event(item)  # type: ignore[arg-type]

        async def run_turn(run: Run, scope_: anyio.CancelScope) -> None:
            nonlocal turn
            with scope_:
                try:
                    done = await run.drive(emit)
                    assert done is not None  # no `receive`: only a disconnect returns None
                    await send_event(done)
                except Exception as exc:
                    await send_event(error_event(exc, run.agent.name))
            if scope_.cancelled_caught:
                await send_event(_CANCELLED)
            turn = None

        async with anyio.create_task_group() as group:
            while state is _Socket.OPEN:
                message: Message = await receive()
                if message["type"] == "websocket.disconnect":
                    state = _Socket.CLOSED
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                if _too_big(data, context.limits.max_ws_message_size):
                    await send({"type": "websocket.close", "code": 1009, "reason": "Message too big"})
                    state = _Socket.CLOSED
                    break
                try:
                    kind = _frame.decode(data).type
                    if kind == "cancel":
                        if turn is not None:
                            turn.cancel()
                        continue
                    request = _request.decode(data)
                    if turn is not None:
                        await send_event(_BUSY)
                        continue
                    run = start_chat(context, request)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    await send_event(ErrorEvent(error=f"Invalid message: {exc}", code="bad_request"))
                    continue
                except (UnicodeDecodeError, RecursionError):
                    await send_event(_UNREADABLE)
                    continue
                except OrbiterError as exc:
                    await send_event(ErrorEvent(error=exc.message, code=exc.code))
                    continue
                turn = anyio.CancelScope()
                group.start_soon(run_turn, run, turn)
            group.cancel_scope.cancel()


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
