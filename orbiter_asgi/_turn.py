"""A chat turn's cancel scope: its deadline, the drain and its client leaving.

On asyncio a turn cancels its task the way `asyncio.timeout` does:
`cancel()` calls `task.cancel()` once, and leaving the turn takes that
cancellation back (`task.uncancel()`) and swallows it. No anyio cancel
scope is entered: on a turn that ends within microseconds, as most `echo`
turns do, anyio's per-task bookkeeping would cost more than the turn's own
work. On other event loops (trio) the turn enters an anyio `CancelScope`.

The cancellation is delivered once. While the turn is `shielded()`, writing
the history of a cancelled or finished turn, it waits until the shield ends.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
from starlette.types import Receive

if TYPE_CHECKING:
    from ._guard import RunGuard

__all__ = ["Turn"]

# states of a turn's cancellation
_NONE, _PENDING, _DELIVERED = 0, 1, 2


class Turn:
    """One admitted turn: `with guard.running(receive) as turn:`.

    `started` and `timeout_at` are loop times; `deadline` is the one in force
    (the timeout is armed by the guard's `TurnWatcher` once the turn lasts).
    """

    __slots__ = (
        "_anyio",
        "_cancel",
        "_cancelling",
        "_shields",
        "_task",
        "_timer",
        "cancelled_caught",
        "deadline",
        "disconnected",
        "guard",
        "receive",
        "started",
        "timeout_at",
        "watcher",
    )

    def __init__(
        self, guard: RunGuard, started: float, timeout_at: float, receive: Receive | None
    ) -> None:
        self.guard = guard
        self.started = started
        self.timeout_at = timeout_at
        self.receive = receive
        self.deadline = math.inf
        self.disconnected = False
        self.cancelled_caught = False
        self.watcher: asyncio.Task[None] | None = None
        self._task: asyncio.Task[object] | None = None
        self._anyio: anyio.CancelScope | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._cancel = _NONE
        self._cancelling = 0
        self._shields = 0

    def __enter__(self) -> Turn:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no asyncio loop runs this task
            task = None
        if task is None:
            self._anyio = anyio.CancelScope()
            self._anyio.__enter__()
        else:
            self._task = task
            self._cancelling = task.cancelling()
        self.guard.enter(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self.guard.exit(self)
        if self._timer is not None:
            self._timer.cancel()
        swallowed = False
        if self._anyio is not None:
            swallowed = bool(self._anyio.__exit__(exc_type, exc, traceback))
            self.cancelled_caught = self._anyio.cancelled_caught
        elif self._cancel == _DELIVERED:
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is not None:
                swallowed = self.cancelled_caught = issubclass(exc_type, asyncio.CancelledError)
        self._cancel = _DELIVERED  # nothing left to cancel
        if self.cancelled_caught:
            self.guard.raise_for(self)
        return swallowed

    def cancel(self) -> None:
        """End the turn: at once, or when the shielded part ends."""
        if self._anyio is not None:
            self._anyio.cancel()
        elif self._cancel == _NONE:
            self._cancel = _PENDING
            self._deliver()

    def set_deadline(self, deadline: float) -> None:
        """Cancel the turn at loop time `deadline`, unless it ends sooner."""
        if deadline >= self.deadline:
            return
        self.deadline = deadline
        if self._anyio is not None:
            self._anyio.deadline = deadline
        elif self._task is not None and self._cancel == _NONE:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._task.get_loop().call_at(deadline, self.cancel)

    def shielded(self) -> _Shield:
        """`with turn.shielded():` work that a cancellation must not cut."""
        return _Shield(self)

    def _deliver(self) -> None:
        if self._cancel == _PENDING and self._shields == 0:
            assert self._task is not None
            self._cancel = _DELIVERED
            self._task.cancel()


class _Shield:
    """Holds back the turn's own cancellation, and anyio's, for its block."""

    __slots__ = ("_scope", "_turn")

    def __init__(self, turn: Turn) -> None:
        self._turn = turn
        self._scope = anyio.CancelScope(shield=True)

    def __enter__(self) -> None:
        self._turn._shields += 1
        self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._scope.__exit__(exc_type, exc, traceback)
        self._turn._shields -= 1
        self._turn._deliver()
