"""`begin_turn`/`end_turn` for a store that has only `lock`, `history` and `append`.

The stores of this package do a turn's store work in two steps of their
own; a store written against the earlier protocol still serves turns
through this, at the cost of a step per call.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from ..models import Message, RunInfo
from ._history_cache import window_start
from .base import OpenTurn, RunEnd
from .journal import RunJournal

__all__ = ["LockedTurns", "finish_run"]


def finish_run(journal: RunJournal, run: RunEnd) -> Awaitable[None]:
    """`journal.finish` of a `RunEnd`, awaitable."""
    return journal.finish(run.info, run.frames, max_bytes=run.max_bytes, retention=run.retention)


class LockedTurns:
    """A store's turns made of its `lock`, `history` and `append`."""

    __slots__ = ("store",)

    def __init__(self, store: Any) -> None:
        self.store = store

    async def begin_turn(
        self,
        session_id: str,
        *,
        agent_name: str | None,
        messages: Sequence[Message],
        seed: Sequence[Message] = (),
        window: int | None = None,
        run: RunInfo | None = None,
    ) -> OpenTurn:
        if run is not None:
            await self.store.runs.start(run)
        lock: AbstractAsyncContextManager[None] = self.store.lock(session_id)
        await lock.__aenter__()
        try:
            history = await self.store.history(session_id, agent_name=agent_name)
            opening = list(messages)
            if not history and seed:
                history = list(seed)
                opening[:0] = history
            stored = await self.store.append(session_id, opening)
        except BaseException:
            await lock.__aexit__(*sys.exc_info())
            raise
        shown = history[window_start(len(history), window) :]
        return OpenTurn(session_id, shown, stored[len(stored) - len(messages) :], token=lock)

    async def end_turn(
        self, turn: OpenTurn, messages: Sequence[Message], *, run: RunEnd | None = None
    ) -> list[Message]:
        lock: AbstractAsyncContextManager[None] = turn.token
        try:
            return await self.store.append(turn.session_id, messages) if messages else []
        finally:
            await lock.__aexit__(*sys.exc_info())
            if run is not None:
                await finish_run(self.store.runs, run)
