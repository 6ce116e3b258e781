"""A run journal that keeps nothing: `orbiter_asgi` with its journal switched off.

Only for measuring what journaling costs (target `orbiter_asgi+no_journal`):
runs cannot be followed, resumed or cancelled by id with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orbiter_asgi.models import RunInfo
from orbiter_asgi.stores.journal import JournalSlice

__all__ = ["NullJournal"]


class NullJournal:
    async def start(
        self, info: RunInfo, *, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> RunInfo:
        return info

    async def append(self, run_id: str, frames: Sequence[bytes], *, max_bytes: int) -> None:
        pass

    async def append_chunk(self, run_id: str, chunk: bytes, count: int, *, max_bytes: int) -> None:
        pass

    async def finish(
        self, info: RunInfo, frames: Sequence[bytes] | None, *, max_bytes: int, retention: float
    ) -> None:
        pass

    async def get(self, run_id: str) -> RunInfo | None:
        return None

    async def read(self, run_id: str, after: int, *, wait: float) -> JournalSlice | None:
        return None

    async def cancel(self, run_id: str) -> RunInfo | None:
        return None

    def watch(self, run_id: str, on_cancel: Callable[[], None]) -> None:
        pass

    def unwatch(self, run_id: str) -> None:
        pass

    async def touch(self, run_id: str) -> None:
        pass

    async def touched_since(self, run_id: str, moment: float) -> bool:
        return False
