"""Admission, deadlines and draining for chat turns.

Each app has one `RunGuard`. A turn is admitted only while fewer than
`max_concurrent_runs` turns run in the app (beyond that `Overloaded`, a 503
with `Retry-After`: refusing early beats an unbounded queue), it runs as a
`Turn` (a cancel scope) with a wall-clock deadline (`RunTimeout`), and when
the process drains for shutdown new turns are refused and running ones get
the grace period before they end with `ShuttingDown`.

`drain_all()` drains every app of the process; the app's lifespan calls it
from SIGTERM/SIGINT (chained to the server's own handlers), and embedders
may call `OrbiterApp.drain()` from their own shutdown hooks.
"""

from __future__ import annotations

import asyncio
import math
import signal
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from starlette.types import Receive

from ..exceptions import Overloaded, RunCancelled, RunTimeout, ShuttingDown
from .turn import AnyioTurn, Turn

if TYPE_CHECKING:
    from .._context import Limits

__all__ = ["ARM_AFTER", "RunGuard", "drain_all", "drain_on_signals"]

_guards: weakref.WeakSet[RunGuard] = weakref.WeakSet()


ARM_AFTER = 0.02  # seconds a turn runs before its deadline and disconnect watch are armed


class RunGuard:
    """Counts, times and drains the running turns of one app.

    Most of a short turn's fixed cost would go to its guards: a deadline
    timer, and a task blocked in `receive()` to notice the client leaving,
    which must then be cancelled. Instead new turns wait in an ordered dict,
    and one timer per app, running while there are such turns, arms those
    older than `ARM_AFTER` (`Turn.arm`). A turn that ends sooner, like an
    `echo` one, costs two dict operations.
    """

    __slots__ = ("__weakref__", "_armed", "_drain_at", "_tick_handle", "_young", "draining", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._young: dict[Turn, None] = {}  # running, not armed yet; in start order
        self._armed: set[Turn] = set()
        self._tick_handle: asyncio.TimerHandle | None = None
        self._drain_at = math.inf
        self.draining = False
        _guards.add(self)

    @property
    def active(self) -> int:
        """Turns running now."""
        return len(self._young) + len(self._armed)

    def admit(self) -> None:
        """Raise unless a new turn may start now."""
        if self.draining:
            raise ShuttingDown("The server is shutting down; retry shortly")
        limit = self.limits.max_concurrent_runs
        if limit is not None and len(self._young) + len(self._armed) >= limit:
            raise Overloaded(f"Too many concurrent runs (limit {limit}); retry shortly")

    def running(self, receive: Receive | None = None) -> Turn:
        """Admit a turn and bound its wall-clock time: `with guard.running() as turn:`,
        entered in the task that runs the turn.

        With `receive` (an HTTP request whose body was read) the turn is also
        cancelled when the client disconnects; it then ends quietly, since
        nobody is left to tell. Cut short by its deadline or the drain, it
        raises `RunTimeout` or `ShuttingDown` on leaving.
        """
        self.admit()
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not asyncio
            task = None
        return Turn(self, task, receive) if task is not None else AnyioTurn(self, receive)

    def enter(self, turn: Turn) -> None:
        timeout = self.limits.run_timeout
        turn.timeout_at = turn.started + timeout if timeout is not None else math.inf
        if self._drain_at != math.inf:
            turn.set_deadline(self._drain_at)
        if turn.timeout_at - turn.started <= ARM_AFTER or isinstance(turn, AnyioTurn):
            self._armed.add(turn)  # a deadline sooner than the tick, or no asyncio: arm now
            turn.arm()
            return
        self._young[turn] = None
        if self._tick_handle is None:
            self._tick_handle = asyncio.get_running_loop().call_later(ARM_AFTER, self._tick)

    def exit(self, turn: Turn) -> None:
        if turn.armed:
            self._armed.discard(turn)
        else:
            del self._young[turn]

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        threshold = loop.time() - ARM_AFTER
        young = self._young
        while young:
            turn = next(iter(young))
            if turn.started > threshold:
                break
            del young[turn]
            self._armed.add(turn)
            turn.arm()
        self._tick_handle = loop.call_later(ARM_AFTER, self._tick) if young else None

    def raise_for(self, turn: Turn) -> None:
        """The error of a turn its deadline, the drain or its client cut short."""
        if turn.disconnected:
            return
        if turn.stopped:
            raise RunCancelled("The turn was cancelled")
        if self._drain_at <= turn.timeout_at:
            raise ShuttingDown("The server shut down before the run finished")
        timeout = self.limits.run_timeout
        raise RunTimeout(f"The run took longer than its {timeout:g} s limit")

    def resume(self) -> None:
        """Admit turns again, as a fresh lifespan starts."""
        self.draining = False
        self._drain_at = math.inf

    def drain(self, grace: float | None = None, *, now: float | None = None) -> None:
        """Refuse new turns; end running ones `grace` seconds from now
        (default: the app's `grace_period`).

        Call it from the event loop that runs the turns.
        """
        self.draining = True
        grace = self.limits.grace_period if grace is None else grace
        now = anyio.current_time() if now is None else now
        self._drain_at = min(self._drain_at, now + grace)
        for turn in [*self._young, *self._armed]:
            turn.set_deadline(self._drain_at)


def drain_all(grace: float | None = None, *, now: float | None = None) -> None:
    """Drain every app of this process (see `RunGuard.drain`)."""
    for guard in list(_guards):
        guard.drain(grace, now=now)


def drain_on_signals() -> Callable[[], None]:
    """On SIGTERM or SIGINT, `drain_all()`, then run the handler installed before.

    Servers (uvicorn, hypercorn) install their handlers before the lifespan
    starts; chaining onto them leaves their graceful shutdown intact while
    the running turns learn about it. A signal nobody handles keeps its
    default action. Returns a function that restores the previous handlers.
    Only the main thread of an asyncio program can do this; elsewhere it is
    a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return lambda: None
    chained: dict[int, Callable[..., object]] = {}

    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(lambda: drain_all(now=loop.time()))
        chained[signum](signum, frame)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if callable(previous):
            chained[signum] = previous
            signal.signal(signum, handler)

    def restore() -> None:
        for signum, previous in chained.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, previous)

    return restore
