"""Cancel work when the HTTP client goes away, nearly for free.

A task group with a watcher blocked in `receive()` costs a task group, a task
and, at the end, a cancellation anyio delivers over several event-loop turns:
about a hundred microseconds per request, more than the rest of a `/chat`.
On asyncio (uvicorn, hypercorn) only a timer is armed instead; if the work is
still running when it fires, a bare task starts waiting for
`http.disconnect` and, when it comes, cancels an anyio `CancelScope`, so
shielded cleanup (the session append of a cancelled run) still runs. Work
that ends sooner, like an `echo` turn, never pays for the task. On other
event loops a task group does the job.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import anyio
from anyio.abc import TaskGroup
from starlette.types import Receive

__all__ = ["WATCH_AFTER", "cancel_on_disconnect"]

WATCH_AFTER = 0.02  # seconds of work before a disconnect watcher is started


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class cancel_on_disconnect:  # noqa: N801 - used like a function: `async with cancel_on_disconnect(...)`
    """`async with cancel_on_disconnect(receive) as scope:` the body is cancelled on disconnect.

    Enter it once the request body has been read: from then on the only
    message `receive` can bring is the disconnect.
    """

    __slots__ = ("_group", "_handle", "_receive", "_scope", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._scope = anyio.CancelScope()
        self._handle: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._group: TaskGroup | None = None

    async def __aenter__(self) -> anyio.CancelScope:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another event loop: a task group watches
            self._group = group = anyio.create_task_group()
            await group.__aenter__()
            group.start_soon(self._watch_in_group, group)
            return group.cancel_scope
        self._scope.__enter__()
        self._handle = loop.call_later(WATCH_AFTER, self._start_watcher, loop)
        return self._scope

    def _start_watcher(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watcher = loop.create_task(_disconnected(self._receive))
        self._watcher.add_done_callback(self._on_watcher_done)

    def _on_watcher_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._scope.cancel()

    async def _watch_in_group(self, group: TaskGroup) -> None:
        await _disconnected(self._receive)
        group.cancel_scope.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        if self._group is not None:
            self._group.cancel_scope.cancel()
            return await self._group.__aexit__(exc_type, exc, traceback)
        assert self._handle is not None
        self._handle.cancel()
        if self._watcher is not None:
            self._watcher.remove_done_callback(self._on_watcher_done)
            self._watcher.cancel()
        return self._scope.__exit__(exc_type, exc, traceback)
