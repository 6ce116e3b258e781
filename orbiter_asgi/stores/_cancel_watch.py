"""The local half of cancels from anywhere, for the journals shared by processes.

A shared journal cannot call into the process that runs a run; that
process asks. While it runs any run, one task polls the store every
`interval` seconds with the ids of those runs, renewing their leases every
third of the lease on the way, and calls each cancelled run's callback once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable

from ..exceptions import StoreError

__all__ = ["CancelWatch", "Poll"]

Poll = Callable[[list[str], bool], Awaitable[Iterable[str]]]
"""`poll(run_ids, renew)`: the ids among `run_ids` to stop (cancelled from
anywhere, or ended elsewhere); with `renew`, also extend their leases.
`StoreError` when the store is away for now."""


class CancelWatch:
    """The runs this process runs, their `on_cancel` callbacks, and the poller."""

    def __init__(self, poll: Poll, *, lease: Callable[[], float], interval: float = 0.2) -> None:
        self._poll = poll
        self._lease = lease  # read when used: tests patch the default
        self.interval = interval
        self._callbacks: dict[str, Callable[[], None]] = {}
        self._fired: set[str] = set()  # watched runs whose callback was called
        self.task: asyncio.Task[None] | None = None

    def watch(self, run_id: str, on_cancel: Callable[[], None]) -> None:
        self._callbacks[run_id] = on_cancel
        self._fired.discard(run_id)
        loop = asyncio.get_running_loop()
        task = self.task
        if task is None or task.done() or task.get_loop() is not loop:
            self.task = loop.create_task(self._run())

    def unwatch(self, run_id: str) -> None:
        # the poller sees nothing left to watch at its next tick and ends
        self._callbacks.pop(run_id, None)
        self._fired.discard(run_id)

    def fire(self, run_id: str) -> None:
        """Call the run's callback, once, if this process runs it."""
        on_cancel = self._callbacks.get(run_id)
        if on_cancel is not None and run_id not in self._fired:
            self._fired.add(run_id)
            on_cancel()

    async def aclose(self) -> None:
        task, self.task = self.task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        renewed = time.monotonic()
        while self._callbacks:
            await asyncio.sleep(self.interval)
            run_ids = list(self._callbacks)
            if not run_ids:
                break
            renew = time.monotonic() - renewed >= self._lease() / 3
            if not renew and self._fired.issuperset(run_ids):
                continue  # every watched run was told already: nothing to ask
            started = time.monotonic()
            try:
                stop = await self._poll(run_ids, renew)
            except StoreError:
                continue  # the store is away: ask again; a lease lapses only after several misses
            if renew:
                renewed = started
            for run_id in stop:
                self.fire(run_id)
