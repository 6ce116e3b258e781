"""`TimedStore`: a session store whose operations report their latency."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol

from ..stores.base import SessionStore
from ..stores.journal import RunJournal

__all__ = ["STORE_OPERATIONS", "Observer", "TimedStore"]

# `lock` is timed until it is held: how long a turn waited for its session;
# a chat turn's store work is `begin_turn` (waiting for the session included) and `end_turn`
STORE_OPERATIONS = (
    "create", "get", "list", "update", "delete", "messages", "history", "append", "lock",
    "begin_turn", "end_turn",
)  # fmt: skip


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


def _timed(operation: Callable[..., Any], timer: Observer) -> Callable[..., Any]:
    clock = time.perf_counter
    observe = timer.observe

    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return await operation(*args, **kwargs)
        finally:
            observe(clock() - start)

    return timed


class _TimedAcquire:
    __slots__ = ("_lock", "_timer")

    def __init__(self, lock: AbstractAsyncContextManager[None], timer: Observer) -> None:
        self._lock = lock
        self._timer = timer

    async def __aenter__(self) -> None:
        start = time.perf_counter()
        await self._lock.__aenter__()
        self._timer.observe(time.perf_counter() - start)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._lock.__aexit__(kind, exc, tb)


class TimedStore:
    """Wraps a `SessionStore`; each operation in `timers` observes its latency.

    Everything else (`runs`, `ping`, `aclose`, a backend's own attributes)
    is the wrapped store's, read and written through: the run journal is not
    a store operation here, and stays one attribute read away. Calls a
    backend makes to itself are not timed twice, as they would be if its
    methods were patched in place.
    """

    wrapped: SessionStore
    runs: RunJournal  # read once a run: a plain attribute, kept in step by `__setattr__`
    _lock_timer: Observer | None

    def __init__(self, store: SessionStore, timers: Mapping[str, Observer]) -> None:
        object.__setattr__(self, "wrapped", store)
        object.__setattr__(self, "runs", store.runs)
        for name, timer in timers.items():
            if name != "lock" and hasattr(store, name):  # a store may predate `begin_turn`
                object.__setattr__(self, name, _timed(getattr(store, name), timer))
        object.__setattr__(self, "_lock_timer", timers.get("lock"))

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        lock = self.wrapped.lock(session_id)
        return lock if self._lock_timer is None else _TimedAcquire(lock, self._lock_timer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.wrapped, name, value)
        if name == "runs":
            object.__setattr__(self, name, value)
