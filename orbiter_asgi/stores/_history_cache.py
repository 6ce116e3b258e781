"""Per-process tails of session histories, so a turn reads only what changed.

A persistent store reads a session's length and incarnation (its
`created_at`, which a deleted and re-created session does not share) in the
turn's own transaction or script: the cheap version check. When this process
already holds the history up to some message, the store reads only the
messages after it: none when nothing changed, another worker's few when one
wrote. Histories are append-only between turns, which all hold the session's
lock, so a tail that matches the incarnation and is no longer than the
stored history is a true prefix of it.

Tails are kept least recently used first, within a budget of messages; with
a turn `window`, a tail keeps only the messages the next window can need.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from ..models import Message

__all__ = ["DEFAULT_CACHED_MESSAGES", "HistoryCache", "Known", "first_unknown", "window_start"]

DEFAULT_CACHED_MESSAGES = 100_000


class _Tail:
    """Messages `start` to `start + len(messages)` of one incarnation of a session."""

    __slots__ = ("incarnation", "messages", "start")

    def __init__(self, incarnation: object, start: int, messages: list[Message]) -> None:
        self.incarnation = incarnation
        self.start = start
        self.messages = messages

    @property
    def end(self) -> int:
        return self.start + len(self.messages)


Known = tuple[object, int, int]
"""What the cache holds of a session: its incarnation, and messages `start` to `end`."""


def window_start(count: int, window: int | None) -> int:
    """The index of the first message a turn shows, of a history of `count`."""
    return 0 if window is None else max(0, count - window)


def first_unknown(known: Known | None, incarnation: object, count: int, window: int | None) -> int:
    """The first message a turn must read of a history of `count`, given what
    the cache holds of the session: `count` when it needs none.

    A backend calls this in the step that reads the history's version, with
    `known` taken beforehand (`HistoryCache.known`); Lua and SQL ports of it
    keep the same rule.
    """
    want = window_start(count, window)
    if known is None:
        return want
    cached_incarnation, start, end = known
    if cached_incarnation != incarnation or start > want or end > count:
        return want
    return end


class HistoryCache:
    """`read_from` says where a store's read must begin; `history` merges and keeps it.

    Used from the event loop's thread only: a backend whose step runs in a
    worker thread takes `known()` before it and calls `history()` after.

    Parameters:
        max_messages: messages kept over all sessions; 0 keeps none.
    """

    __slots__ = ("_size", "_tails", "max_messages")

    def __init__(self, max_messages: int = DEFAULT_CACHED_MESSAGES) -> None:
        assert max_messages >= 0
        self.max_messages = max_messages
        self._tails: OrderedDict[str, _Tail] = OrderedDict()
        self._size = 0

    def known(self, session_id: str) -> Known | None:
        tail = self._tails.get(session_id)
        return None if tail is None else (tail.incarnation, tail.start, tail.end)

    def read_from(self, session_id: str, incarnation: object, count: int, window: int | None) -> int:
        """The first message to read of a history of `count`: `count` when none is needed."""
        return first_unknown(self.known(session_id), incarnation, count, window)

    def history(
        self,
        session_id: str,
        incarnation: object,
        count: int,
        window: int | None,
        first: int,
        read: Sequence[Message],
    ) -> list[Message]:
        """The turn's history: the cached tail joined to `read` (messages `first`
        to `count`, from `read_from`), which the cache keeps."""
        want = window_start(count, window)
        tail = self._tails.pop(session_id, None)
        if tail is not None and tail.incarnation == incarnation and tail.end == first:
            self._size -= len(tail.messages)
            tail.messages += read
        else:
            if tail is not None:
                self._size -= len(tail.messages)
            tail = _Tail(incarnation, first, list(read))
        shown = tail.messages[want - tail.start :]
        if self.max_messages:
            self._tails[session_id] = tail
            self._size += len(tail.messages)
            self._trim(tail, window)
            self._evict()
        return shown

    def appended(
        self, session_id: str, incarnation: object, count: int, stored: Sequence[Message], window: int | None
    ) -> None:
        """This process stored `stored` after the first `count` messages."""
        tail = self._tails.get(session_id)
        if tail is None or tail.incarnation != incarnation or tail.end != count:
            self.forget(session_id)
            return
        self._size -= len(tail.messages)
        tail.messages += stored
        self._size += len(tail.messages)
        self._tails.move_to_end(session_id)
        self._trim(tail, window)
        self._evict()

    def forget(self, session_id: str) -> None:
        tail = self._tails.pop(session_id, None)
        if tail is not None:
            self._size -= len(tail.messages)

    def clear(self) -> None:
        self._tails.clear()
        self._size = 0

    def _trim(self, tail: _Tail, window: int | None) -> None:
        if window is not None and len(tail.messages) > 2 * window:
            drop = len(tail.messages) - window
            del tail.messages[:drop]
            tail.start += drop
            self._size -= drop

    def _evict(self) -> None:
        while self._size > self.max_messages and self._tails:
            _, oldest = self._tails.popitem(last=False)
            self._size -= len(oldest.messages)
