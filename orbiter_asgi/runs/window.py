"""The part of a history a turn shows the model: `Agent(history_limit=N)`.

A history of at most `N` messages is shown whole. A longer one is cut to
its last `N`, and the cut moves forward so that the model never sees a tool
result without the call that asked for it: the window starts at its first
`user` message, or, in a window that holds none (a long chain of tool
rounds), at its first message that is not a tool result. A call is always
followed by its results, so a window that starts so holds whole rounds.
Providers that require a conversation to open with the user (Anthropic)
get one whenever the window has a user message at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..models import Message

__all__ = ["fit_history"]


def fit_history(history: Sequence[Message], limit: int | None) -> Sequence[Message]:
    """The last `limit` messages of `history`, cut at a safe start; all of it when None."""
    if limit is None or len(history) <= limit:
        return history
    shown = history[len(history) - limit :] if limit else history[:0]
    for index, message in enumerate(shown):
        if message.role == "user":
            return shown[index:]
    for index, message in enumerate(shown):
        if message.role != "tool":
            return shown[index:]
    return shown[:0]
