"""The per-session turn lock of the persistent stores, shared by many processes.

A turn first takes an in-process lock, so tasks of one worker queue without
touching the backend, then a lease in the backend: a record naming its
holder that expires unless renewed. A worker that crashes mid-turn stops
renewing, so its lease lapses and the session is not wedged; while the
turn runs, one background task per store renews every lease it holds.
The renewer is an asyncio task because it must outlive the request that
started it; both backends already run on asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio

from ..exceptions import StoreError
from ._keyed_lock import KeyedLock

__all__ = ["LeaseLock"]

T = TypeVar("T")

TryAcquire = Callable[[str, str], Awaitable[bool]]
Release = Callable[[str, str], Awaitable[None]]
Renew = Callable[[Mapping[str, str]], Awaitable[None]]

_FIRST_POLL = 0.002
_MAX_POLL = 0.05


class LeaseLock:
    """Turn locks over a backend's `try_acquire(id, token)`, `release(id, token)`, `renew(held)`.

    Parameters:
        ttl: seconds a lease lives without renewal; renewed every `ttl / 3`.
        wait: seconds to wait for a busy session before a 503.
    """

    def __init__(
        self,
        try_acquire: TryAcquire,
        release: Release,
        renew: Renew,
        *,
        ttl: float,
        wait: float,
    ) -> None:
        assert ttl > 0 and wait > 0
        self._try_acquire = try_acquire
        self._release = release
        self._renew = renew
        self.ttl = ttl
        self.wait = wait
        self._local = KeyedLock()
        self._held: dict[str, str] = {}
        self._renewer: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[None]:
        async def take(token: str) -> bool | None:
            return True if await self._try_acquire(session_id, token) else None

        token, _ = await self.acquire(session_id, take)
        try:
            yield
        finally:
            # a backend that is down cannot release; the lease then lapses
            with contextlib.suppress(StoreError):
                await self.release(session_id, functools.partial(self._release, session_id, token))

    async def acquire(self, session_id: str, attempt: Callable[[str], Awaitable[T | None]]) -> tuple[str, T]:
        """Hold `session_id`: first in this process, then its lease in the backend.

        `attempt(token)` tries to take the lease under `token` in one step of
        the backend, which may do a turn's other work too; it is retried with
        backoff while it returns None (the lease is someone else's).
        Returns the token and what the successful attempt returned.
        """
        await self._local.acquire(session_id)
        try:
            token = uuid.uuid4().hex
            result = await self._attempt(session_id, token, attempt)
        except BaseException:
            self._local.release(session_id)
            raise
        self._held[session_id] = token
        self._start_renewer()
        return token, result

    async def release(self, session_id: str, step: Callable[[], Awaitable[T]]) -> T:
        """Give `session_id` back: `step()` drops the lease in the backend (and
        may write with it), shielded from cancellation; the process's hold
        ends whatever it raises."""
        del self._held[session_id]
        try:
            with anyio.CancelScope(shield=True):
                result = await step()
        finally:
            self._local.release(session_id)
        return result

    async def _attempt(
        self, session_id: str, token: str, attempt: Callable[[str], Awaitable[T | None]]
    ) -> T:
        delay = _FIRST_POLL
        with anyio.move_on_after(self.wait):
            while (result := await attempt(token)) is None:
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_POLL)
            return result
        raise StoreError(
            f"Session {session_id!r} is busy: another turn held it for more than {self.wait:g}s"
        )

    def _start_renewer(self) -> None:
        task = self._renewer
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            self._renewer = loop.create_task(self._renew_while_held())

    async def _renew_while_held(self) -> None:
        while self._held:
            await asyncio.sleep(self.ttl / 3)
            if self._held:
                with contextlib.suppress(StoreError):
                    await self._renew(dict(self._held))

    async def aclose(self) -> None:
        task, self._renewer = self._renewer, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
