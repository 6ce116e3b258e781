"""One in-process lock per session id, that exists only while it is held.

A session's lock is taken by every turn on it and, almost always, by no
other task at the same time. `anyio.Lock` per session would be made anew for
most turns (kept, one per session ever seen, it would grow without bound),
and making one costs more than the rest of a memory-store turn's locking.
Here a free session has no entry at all: taking it is one dict insert and
releasing it one delete; only a task that has to wait makes an event.
Waiters are served first come, first served.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType

import anyio

__all__ = ["KeyedLock"]


class KeyedLock:
    """`async with locks(key):` holds `key` against every other task of the process."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        # a key is held while it is here; its deque holds the tasks waiting for it
        self._waiters: dict[str, deque[anyio.Event]] = {}

    def __call__(self, key: str) -> _Holding:
        return _Holding(self, key)

    async def acquire(self, key: str) -> None:
        waiters = self._waiters.get(key)
        if waiters is None:
            self._waiters[key] = deque()
            return
        turn = anyio.Event()
        waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # handed the lock just as it was cancelled: pass it on
                self.release(key)
            else:
                waiters.remove(turn)
            raise

    def release(self, key: str) -> None:
        waiters = self._waiters[key]
        if waiters:
            waiters.popleft().set()  # handed over: the key stays held
        else:
            del self._waiters[key]


class _Holding:
    __slots__ = ("_key", "_locks")

    def __init__(self, locks: KeyedLock, key: str) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        await self._locks.acquire(self._key)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._locks.release(self._key)
