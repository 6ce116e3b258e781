"""In-process session store: the default of `create_app()`, lost on restart."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import msgspec

from ..exceptions import ConflictError, SessionNotFound
from ..models import Message, RunInfo, Session, SessionSummary
from ._history_cache import window_start
from ._keyed_lock import KeyedLock
from ._turns import finish_run
from .base import (
    DEFAULT_PAGE_SIZE,
    OpenTurn,
    Page,
    RunEnd,
    decode_cursor,
    new_session_id,
    utcnow,
)
from .journal import RunJournal
from .memory_journal import MemoryJournal

__all__ = ["MemoryStore"]


class _Record:
    __slots__ = ("agent_name", "created_at", "id", "messages", "metadata", "title", "updated_at")

    def __init__(self, session_id: str, agent_name: str | None, title: str, metadata: dict[str, Any]) -> None:
        self.id = session_id
        self.agent_name = agent_name
        self.title = title
        self.metadata = metadata
        self.messages: list[Message] = []
        self.created_at = self.updated_at = utcnow()

    def session(self) -> Session:
        return Session(
            id=self.id,
            agent_name=self.agent_name,
            title=self.title,
            metadata=dict(self.metadata),
            messages=list(self.messages),
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def summary(self) -> SessionSummary:
        return SessionSummary(
            id=self.id,
            agent_name=self.agent_name,
            title=self.title,
            metadata=dict(self.metadata),
            message_count=len(self.messages),
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class MemoryStore:
    """Keeps sessions in a dict; `memory://`."""

    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}
        self._locks = KeyedLock()
        self.runs: RunJournal = MemoryJournal()

    def _record(self, session_id: str) -> _Record:
        try:
            return self._records[session_id]
        except KeyError:
            raise SessionNotFound.of(session_id) from None

    async def create(
        self,
        *,
        agent_name: str | None = None,
        title: str = "",
        metadata: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        session_id = session_id or new_session_id()
        if session_id in self._records:
            raise ConflictError(f"Session {session_id!r} already exists")
        record = self._records[session_id] = _Record(session_id, agent_name, title, dict(metadata or {}))
        return record.session()

    async def get(self, session_id: str) -> Session:
        return self._record(session_id).session()

    async def list(
        self,
        *,
        agent_name: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page:
        after: tuple[datetime, str] | None = decode_cursor(cursor) if cursor else None
        records = sorted(self._records.values(), key=lambda r: (r.created_at, r.id), reverse=True)
        items: builtins.list[SessionSummary] = []
        for record in records:
            if agent_name is not None and record.agent_name != agent_name:
                continue
            if after is not None and (record.created_at, record.id) >= after:
                continue
            if len(items) == limit:
                return Page.of(items, more=True)
            items.append(record.summary())
        return Page.of(items, more=False)

    async def update(
        self,
        session_id: str,
        *,
        agent_name: str | msgspec.UnsetType | None = msgspec.UNSET,
        title: str | msgspec.UnsetType = msgspec.UNSET,
        metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET,
    ) -> Session:
        record = self._record(session_id)
        if agent_name is not msgspec.UNSET:
            record.agent_name = agent_name
        if title is not msgspec.UNSET:
            record.title = title
        if metadata is not msgspec.UNSET:
            record.metadata = dict(metadata)
        record.updated_at = utcnow()
        return record.session()

    async def delete(self, session_id: str) -> bool:
        return self._records.pop(session_id, None) is not None

    async def messages(self, session_id: str) -> builtins.list[Message]:
        return list(self._record(session_id).messages)

    async def history(self, session_id: str, *, agent_name: str | None) -> builtins.list[Message]:
        record = self._records.get(session_id)
        if record is None:
            record = self._records[session_id] = _Record(session_id, agent_name, "", {})
        return list(record.messages)

    async def append(self, session_id: str, messages: Sequence[Message]) -> builtins.list[Message]:
        record = self._record(session_id)
        now = utcnow()
        stored = [msgspec.structs.replace(m, created_at=m.created_at or now) for m in messages]
        record.messages.extend(stored)
        record.updated_at = now
        return stored

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        return self._locks(session_id)

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
            await self.runs.start(run)
        await self._locks.acquire(session_id)
        try:
            record = self._records.get(session_id)
            if record is None:
                record = self._records[session_id] = _Record(session_id, agent_name, "", {})
            if not record.messages and seed:
                await self.append(session_id, seed)
            history = record.messages
            shown = history[window_start(len(history), window) :]
            stored = await self.append(session_id, messages)
        except BaseException:
            self._locks.release(session_id)
            raise
        return OpenTurn(session_id, shown, stored)

    async def end_turn(
        self, turn: OpenTurn, messages: Sequence[Message], *, run: RunEnd | None = None
    ) -> builtins.list[Message]:
        try:
            return await self.append(turn.session_id, messages) if messages else []
        finally:
            self._locks.release(turn.session_id)
            if run is not None:
                await finish_run(self.runs, run)

    async def ping(self) -> None:
        return None  # in this process: it answers whenever the process does

    async def aclose(self) -> None:
        return None
