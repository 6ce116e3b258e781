"""A chat turn's cancel scope: its deadline, the drain and its client leaving.

On asyncio a turn cancels its task the way `asyncio.timeout` does:
`cancel()` calls `task.cancel()` once, and leaving the turn takes that
cancellation back (`task.uncancel()`) and swallows it. No anyio cancel
scope is entered: on a turn that ends within microseconds, as most `echo`
turns do, anyio's per-task bookkeeping would cost more than the turn's own
work. On other event loops (trio) an `AnyioTurn` enters an anyio
`CancelScope` instead.

The cancellation is delivered once. While the turn is `shielded()`, writing
the history of a cancelled or finished turn, it waits, and the shield's end
raises it (without `task.cancel()`, which would linger past the turn).

A turn's deadline and disconnect watch are armed by its `RunGuard` only once
it has run a little (`arm()`); a turn that ends sooner never makes a timer.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
from starlette.types import Receive

if TYPE_CHECKING:
    from .guard import RunGuard

__all__ = ["AnyioTurn", "Turn"]

# states of a turn's cancellation: none yet, waiting for a shield to end,
# delivered with `task.cancel()`, raised where a shield ended
_NONE, _PENDING, _DELIVERED, _RAISED = 0, 1, 2, 3


class Turn:
    """One admitted turn of an asyncio task: `with guard.running(receive) as turn:`.

    `started` and `timeout_at` are loop times; `deadline` is the one in force.
    """

    __slots__ = (
        "_cancel",
        "_cancelling",
        "_shields",
        "_task",
        "_timer",
        "armed",
        "cancelled_caught",
        "deadline",
        "disconnected",
        "guard",
        "on_disconnect",
        "receive",
        "started",
        "stopped",
        "timeout_at",
        "watcher",
    )

    started: float
    timeout_at: float
    _cancelling: int

    def __init__(self, guard: RunGuard, task: asyncio.Task[object] | None, receive: Receive | None) -> None:
        self.guard = guard
        self._task = task
        self.receive = receive
        self.deadline = math.inf
        self.armed = self.disconnected = self.stopped = self.cancelled_caught = False
        self.watcher: asyncio.Task[None] | None = None
        # called when the client leaves, instead of ending the turn at once
        self.on_disconnect: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._cancel = _NONE
        self._shields = 0

    def __enter__(self) -> Turn:
        assert self._task is not None
        self._cancelling = self._task.cancelling()
        self.started = self._task.get_loop().time()
        self.guard.enter(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self.guard.exit(self)
        if self._timer is not None:  # a young turn may hold the drain's timer
            self._timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
        swallowed = False
        if self._cancel == _DELIVERED:
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is not None:
                swallowed = self.cancelled_caught = issubclass(exc_type, asyncio.CancelledError)
        elif self._cancel == _RAISED and exc_type is not None:
            swallowed = self.cancelled_caught = issubclass(exc_type, asyncio.CancelledError)
        self._cancel = _RAISED  # nothing left to cancel
        if self.cancelled_caught:
            self.guard.raise_for(self)
        return swallowed

    def arm(self) -> None:
        """Set the turn's timeout, and watch for its client leaving."""
        self.armed = True
        self.set_deadline(self.timeout_at)
        if self.receive is not None:
            self.watcher = asyncio.get_running_loop().create_task(_watch(self, self.receive))

    def cancel(self) -> None:
        """End the turn: at once, or when the shielded part ends."""
        if self._cancel == _NONE:
            self._cancel = _PENDING
            if self._shields == 0:
                assert self._task is not None
                self._cancel = _DELIVERED
                self._task.cancel()

    def drop(self) -> None:
        """End the turn because nobody is left to answer: it ends quietly."""
        self.disconnected = True
        self.cancel()

    def stop(self) -> None:
        """End the turn at its client's request (`RunCancelled`), unless it is ending already."""
        if self._cancel == _NONE:
            self.stopped = True
            self.cancel()

    def set_deadline(self, deadline: float) -> None:
        """Cancel the turn at loop time `deadline`, unless it ends sooner."""
        if deadline >= self.deadline:
            return
        self.deadline = deadline
        if self._task is not None and self._cancel == _NONE:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._task.get_loop().call_at(deadline, self.cancel)

    def shielded(self) -> _Shield:
        """`with turn.shielded():` work that a cancellation must not cut."""
        return _Shield(self)


class AnyioTurn(Turn):
    """A turn on an event loop other than asyncio: an anyio cancel scope does it all."""

    __slots__ = ("_scope",)

    def __init__(self, guard: RunGuard, receive: Receive | None) -> None:
        super().__init__(guard, None, receive)
        self._scope = anyio.CancelScope()

    def __enter__(self) -> Turn:
        self._scope.__enter__()
        self.started = anyio.current_time()
        self.guard.enter(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self.guard.exit(self)
        swallowed = bool(self._scope.__exit__(exc_type, exc, traceback))
        self.cancelled_caught = self._scope.cancelled_caught
        if self.cancelled_caught:
            self.guard.raise_for(self)
        return swallowed

    def arm(self) -> None:
        self.armed = True
        self.set_deadline(self.timeout_at)  # no disconnect watch: it would need an asyncio task

    def cancel(self) -> None:
        self._scope.cancel()

    def stop(self) -> None:
        if not self._scope.cancel_called:
            self.stopped = True
            self._scope.cancel()

    def set_deadline(self, deadline: float) -> None:
        if deadline < self.deadline:
            self.deadline = self._scope.deadline = deadline


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
        turn = self._turn
        turn._shields -= 1
        if turn._cancel == _PENDING and turn._shields == 0:
            turn._cancel = _RAISED
            if exc_type is None:  # else the turn is ending anyway, with that error
                raise asyncio.CancelledError


async def _watch(turn: Turn, receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    if turn.on_disconnect is not None:
        turn.on_disconnect()
    else:
        turn.drop()
