"""Cancel a turn when its HTTP client goes away, nearly for free.

A task group with a watcher blocked in `receive()` costs a task group, a task
and, at the end, a cancellation that anyio delivers over several event-loop
turns: about a hundred microseconds per request, more than the rest of a
JSON `/chat`. Instead only a timer is armed; if the turn is still running
when it fires, a bare task starts waiting for `http.disconnect` and, when it
comes, cancels the turn's anyio `CancelScope`, so shielded cleanup (the
session append of a cancelled turn) still runs. A turn that ends sooner,
like an `echo` one, never pays for the task.
"""

from __future__ import annotations

import asyncio

import anyio
from starlette.types import Receive

__all__ = ["WATCH_AFTER", "DisconnectWatch"]

WATCH_AFTER = 0.02  # seconds of work before a watcher task is started


class DisconnectWatch:
    """Cancels `scope` if the client disconnects before `close()`.

    Arm it once the request body has been read: from then on the only message
    `receive` can bring is the disconnect. Without a running asyncio loop
    (trio) it watches nothing.
    """

    __slots__ = ("_handle", "_receive", "_scope", "_watcher", "disconnected")

    def __init__(self, receive: Receive, scope: anyio.CancelScope) -> None:
        self._receive = receive
        self._scope = scope
        self._watcher: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.disconnected = False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._handle = loop.call_later(WATCH_AFTER, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watcher = loop.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self._scope.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
