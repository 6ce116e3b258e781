"""The `SessionStore` protocol every backend implements, and shared helpers.

Listing is newest first by `(created_at, id)`; a cursor is an opaque string
naming the last item of the previous page by that key, so pages stay correct
when sessions are created or deleted between them.
"""

from __future__ import annotations

import base64
import builtins
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import msgspec

from ..exceptions import RequestError
from ..models import Message, RunInfo, Session, SessionSummary
from .journal import RunJournal

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "OpenTurn",
    "Page",
    "RunEnd",
    "SessionStore",
    "decode_cursor",
    "encode_cursor",
    "new_session_id",
    "utcnow",
]

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

def utcnow() -> datetime:
    return datetime.now(UTC)


def new_session_id() -> str:
    return uuid.uuid4().hex


def encode_cursor(created_at: datetime, session_id: str) -> str:
    raw = f"{created_at.timestamp():.6f}|{session_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The `(created_at, id)` key a cursor names; a 400 when it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, session_id = raw.partition("|")
        created_at = datetime.fromtimestamp(float(stamp), UTC)
    except (ValueError, UnicodeDecodeError, OverflowError, OSError):
        raise RequestError("Invalid cursor") from None
    if not session_id:
        raise RequestError("Invalid cursor")
    return created_at, session_id


class Page(msgspec.Struct):
    """One page of a listing; `next_cursor` is None on the last page."""

    items: list[SessionSummary]
    next_cursor: str | None = None

    @classmethod
    def of(cls, items: list[SessionSummary], more: bool) -> Page:
        """A page of newest-first `items`; with `more`, a cursor after the last."""
        if not more or not items:
            return cls(items)
        last = items[-1]
        return cls(items, encode_cursor(last.created_at, last.id))


class OpenTurn:
    """A session turn begun by `SessionStore.begin_turn`; its session stays
    locked until `end_turn` is given it.

    `history` is what the model is shown of the session before this turn:
    all of it, or its last `window` messages. `stored` is what `begin_turn`
    appended (the turn's opening messages, stamped). `token` and `end` are
    the backend's own (its lease, the history length it expects at the end).
    """

    __slots__ = ("end", "history", "session_id", "stored", "token")

    def __init__(
        self,
        session_id: str,
        history: builtins.list[Message],
        stored: builtins.list[Message],
        token: Any = None,
        end: int = 0,
    ) -> None:
        self.session_id = session_id
        self.history = history
        self.stored = stored
        self.token = token
        self.end = end


class RunEnd:
    """A run's end, as `RunJournal.finish` takes it: `end_turn` writes it in
    the turn's last step, so the answer and the run's end land together."""

    __slots__ = ("frames", "info", "max_bytes", "retention")

    def __init__(
        self, info: RunInfo, frames: Sequence[bytes] | None, *, max_bytes: int, retention: float
    ) -> None:
        self.info = info
        self.frames = frames
        self.max_bytes = max_bytes
        self.retention = retention


@runtime_checkable
class SessionStore(Protocol):
    """Async storage of sessions and their ordered message histories.

    Errors: `SessionNotFound` for a missing id where one is required,
    `ConflictError` when `create` is given an id that exists, and
    `StoreError` when the backend cannot be reached.

    `runs` is the store's run journal, kept beside its sessions.
    """

    runs: RunJournal

    async def create(
        self,
        *,
        agent_name: str | None = None,
        title: str = "",
        metadata: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session: ...

    async def get(self, session_id: str) -> Session:
        """The session with all its messages, or `SessionNotFound`."""
        ...

    async def list(
        self,
        *,
        agent_name: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page:
        """Summaries, newest first."""
        ...

    async def update(
        self,
        session_id: str,
        *,
        agent_name: str | msgspec.UnsetType | None = msgspec.UNSET,
        title: str | msgspec.UnsetType = msgspec.UNSET,
        metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET,
    ) -> Session: ...

    async def delete(self, session_id: str) -> bool:
        """True when the session existed."""
        ...

    async def messages(self, session_id: str) -> builtins.list[Message]:
        """The history, oldest first, or `SessionNotFound`."""
        ...

    async def history(self, session_id: str, *, agent_name: str | None) -> builtins.list[Message]:
        """The history for a chat turn, creating the session when it is new."""
        ...

    async def append(self, session_id: str, messages: Sequence[Message]) -> builtins.list[Message]:
        """Append in order, stamping `created_at`; returns what was stored."""
        ...

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """Serializes chat turns on one session."""
        ...

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
        """Lock the session for a chat turn, read its history and append `messages`.

        One step on the backend where it can (a transaction, a script), so a
        turn's store work is two round trips: this, then `end_turn`. Waits
        for another turn on the session as `lock` does; creates the session
        when it is new. A session with no history yet stores `seed` first,
        and shows it as its history. With `window`, only the last `window`
        messages are read and shown; the stored history stays whole.
        With `run`, a run not yet in the journal, it is started there in the
        same step, as `runs.start(run)` would.
        """
        ...

    async def end_turn(
        self, turn: OpenTurn, messages: Sequence[Message], *, run: RunEnd | None = None
    ) -> builtins.list[Message]:
        """Append what the turn produced and unlock the session, in one step;
        with `run`, also end the run in the journal, as `runs.finish` would.

        Called once per `begin_turn`, shielded from cancellation. When the
        backend fails here the lock lapses with its lease.
        """
        ...

    async def ping(self) -> None:
        """Return once the backend answers, within the store's own timeout;
        `StoreError` when it does not. `GET /readyz` asks this."""
        ...

    async def aclose(self) -> None: ...
