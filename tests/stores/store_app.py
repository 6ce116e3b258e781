"""The app the multi-process store tests serve: the echo agent over `$ORBITER_TEST_STORE`.

Every response names the worker process that answered (`x-worker-pid`), so
tests can tell that several workers took part.
"""

from __future__ import annotations

import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orbiter_asgi import Agent, create_app

_PID = str(os.getpid()).encode()


class _WorkerHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tag(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-worker-pid", _PID)]
            await send(message)

        await self.app(scope, receive, tag if scope["type"] == "http" else send)


def factory() -> ASGIApp:
    app = create_app(
        agents=[Agent("assistant", model=os.environ.get("ORBITER_TEST_MODEL", "echo"))],
        store=os.environ["ORBITER_TEST_STORE"],
    )
    return _WorkerHeader(app)
