"""`@app.middleware("http")` functions, run as pure ASGI middleware.

`call_next(request)` starts the rest of the app in a task and returns as soon
as the response status and headers are known; the body then streams through
with backpressure (a zero-size channel), so SSE responses stay live and a
client disconnect still reaches the endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CallNext", "HTTPFunctionMiddleware"]

CallNext = Callable[[Request], Awaitable[Response]]
Dispatch = Callable[[Request, CallNext], Awaitable[Response]]


class _StreamedResponse(Response):
    """The downstream response: status and headers may still be changed."""

    def __init__(self, start: Message, body: MemoryObjectReceiveStream[Message]) -> None:
        self.status_code = start["status"]
        self.raw_headers = list(start.get("headers", []))
        self.background = None
        self._body_stream = body
        self.finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async with self._body_stream:
            async for message in self._body_stream:
                await send(message)
        self.finished = True


class HTTPFunctionMiddleware:
    """Runs `dispatch(request, call_next)` around the wrapped app."""

    def __init__(self, app: ASGIApp, dispatch: Dispatch) -> None:
        self.app = app
        self.dispatch = dispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        streamed: list[_StreamedResponse] = []
        failure: list[BaseException] = []

        async with anyio.create_task_group() as group:

            async def downstream_receive() -> Message:
                # A dispatch that read the body (request.body()) consumed it from
                # `receive`; hand the cached copy on to the app once.
                body: Any = getattr(request, "_body", None)
                if body is not None:
                    del request._body
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            async def call_next(_: Request) -> Response:
                body_send, body_receive = anyio.create_memory_object_stream[Message](0)
                started = anyio.Event()
                start: list[Message] = []

                async def app_send(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        start.append(message)
                        started.set()
                    else:
                        await body_send.send(message)

                async def run_app() -> None:
                    async with body_send:
                        try:
                            await self.app(scope, downstream_receive, app_send)
                        except Exception as exc:
                            failure.append(exc)
                        finally:
                            started.set()

                group.start_soon(run_app)
                await started.wait()
                if failure:
                    raise failure[0]
                if not start:
                    raise RuntimeError("The app returned without starting a response")
                response = _StreamedResponse(start[0], body_receive)
                streamed.append(response)
                return response

            response = await self.dispatch(request, call_next)
            await response(scope, receive, send)
            if not any(r is response and r.finished for r in streamed):
                group.cancel_scope.cancel()  # the downstream response was dropped
        if failure and streamed:
            raise failure[0]  # the app failed after its response had started
