"""Calls made during one pass of the event loop, served together at its end.

Under load many turns reach the same step in the same pass of the loop. A
backend that serves them in one go pays its fixed cost once: SQLite commits
one transaction (its pages written once, one WAL append), Redis sends one
pipeline (one write, one connection taken from the pool). Each caller still
gets its own result or error, and only once the whole batch is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Batch", "Pending", "settle"]

Pending = list[tuple[Any, "asyncio.Future[Any]"]]
"""A batch: each call's item, and the future its caller awaits."""


class Batch:
    """`await batch.call(item)`: `serve(pending)` gets every item called in this
    pass of the loop, at its end, and settles their futures (now or later).

    A caller cancelled while its call is pending waits for the call to end,
    then raises, as a call to a worker thread does: the backend has answered
    by the time the cancellation goes on, and nothing is left running.
    """

    __slots__ = ("_pending", "_serve")

    def __init__(self, serve: Callable[[Pending], None]) -> None:
        self._serve = serve
        self._pending: Pending = []

    async def call(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)
        future = loop.create_future()
        self._pending.append((item, future))
        return await _uncancelled(future)

    async def call_many(self, items: Sequence[Any]) -> list[Any]:
        """Several calls, in one batch and in order; their outcomes, errors as values."""
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures, strict=True))
        outcomes: list[Any] = await _uncancelled(asyncio.gather(*futures, return_exceptions=True))
        return outcomes

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            self._serve(pending)
        except BaseException as exc:  # a bug in `serve`: no caller is left waiting
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            raise


async def _uncancelled(future: asyncio.Future[Any]) -> Any:
    """`await future`; a cancel waits for it to be done, then is raised."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(future)
        raise


def settle(pending: Pending, outcomes: list[Any]) -> None:
    """Give each caller its outcome: an exception is raised to it, anything else returned."""
    for (_, future), outcome in zip(pending, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
