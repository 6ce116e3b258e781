"""The run journal of `memory://`: in the process, as its sessions are."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

import anyio

from ..models import RunInfo
from .journal import IdempotencyMismatch, JournalGone, JournalSlice, record_frames, split_frames

__all__ = ["MemoryJournal"]

# Ended runs kept at most, whatever their retention: at thousands of runs a
# second, ten minutes of them would otherwise hold the process's memory. The
# oldest go first once there are more, or once their frames pass the bytes.
MAX_ENDED_RUNS = 10_000
MAX_ENDED_BYTES = 64 * 1024 * 1024


class _Entry:
    """A run's record and frames. Frames are kept in the chunks they were
    written in (a stream's text batch is one chunk), cut apart only when read."""

    __slots__ = ("changed", "chunks", "dropped", "end", "info", "key", "size", "touched")

    def __init__(self, info: RunInfo, key: str | None) -> None:
        self.info = info
        self.key = key
        self.chunks: list[bytes] = []
        self.dropped = 0  # frames dropped from the head
        self.end = 0  # the number of the last frame
        self.size = 0
        self.touched = 0.0
        self.changed: anyio.Event | None = None  # made by a reader that waits

    def add(self, chunk: bytes, count: int, max_bytes: int) -> None:
        self.chunks.append(chunk)
        self.end += count
        self.size += len(chunk)
        if self.size > max_bytes:
            self._trim(max_bytes)
        if self.changed is not None:
            self.changed.set()
            self.changed = None

    def _trim(self, max_bytes: int) -> None:
        frames = split_frames(b"".join(self.chunks))  # one frame a chunk from now on
        while self.size > max_bytes and len(frames) > 1:
            self.size -= len(frames.pop(0))
            self.dropped += 1
        self.chunks = frames

    def frames_after(self, after: int) -> list[bytes]:
        wanted = self.end - after
        if wanted <= 0:
            return []
        # from the newest chunk back, as a follower mostly wants the last few frames
        index, found = len(self.chunks), 0
        while found < wanted and index > 0:
            index -= 1
            found += self.chunks[index].count(b"\n\n")
        return split_frames(b"".join(self.chunks[index:]))[found - wanted :]


class _Ended(NamedTuple):
    """An ended run, as kept for its retention: a tuple of strings, numbers and
    an untracked struct, which the garbage collector stops scanning. Thousands
    of them are kept; as objects they made every full collection slower."""

    info: RunInfo
    frames: tuple[bytes, ...] | None  # the chunks kept; None: the record's (`record_frames`)
    dropped: int
    key: str | None
    touched: float
    size: int  # bytes of `frames`

    def frames_after(self, after: int) -> list[bytes]:
        frames = record_frames(self.info) if self.frames is None else split_frames(b"".join(self.frames))
        return frames[after - self.dropped :]


class MemoryJournal:
    """Runs in a dict: followed, resumed and cancelled within this process."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry | _Ended] = {}
        self._keys: dict[str, tuple[str, str]] = {}  # idempotency key: (fingerprint, run id)
        self._ended: deque[tuple[float, str]] = deque()  # (forget at, run id), in end order
        self._ended_bytes = 0  # of the frames the ended runs keep
        self._watchers: dict[str, Callable[[], None]] = {}

    def _forget_expired(self) -> None:
        ended = self._ended
        now = time.monotonic()
        while ended and (
            len(ended) > MAX_ENDED_RUNS or self._ended_bytes > MAX_ENDED_BYTES or ended[0][0] <= now
        ):
            _, run_id = ended.popleft()
            entry = self._entries.pop(run_id, None)
            if isinstance(entry, _Ended):
                self._ended_bytes -= entry.size
                if entry.key is not None:
                    self._keys.pop(entry.key, None)

    async def start(
        self, info: RunInfo, *, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> RunInfo:
        if self._ended:
            self._forget_expired()
        if idempotency_key is not None:
            seen = self._keys.get(idempotency_key)
            if seen is not None:
                if seen[0] != fingerprint:
                    raise IdempotencyMismatch(
                        "This Idempotency-Key was used with another request body"
                    )
                return self._entries[seen[1]].info
            self._keys[idempotency_key] = (fingerprint, info.id)
        self._entries[info.id] = _Entry(info, idempotency_key)
        return info

    def _running(self, run_id: str) -> _Entry | None:
        entry = self._entries.get(run_id)
        return entry if type(entry) is _Entry else None

    async def append(self, run_id: str, frames: Sequence[bytes], *, max_bytes: int) -> None:
        if frames:
            await self.append_chunk(run_id, b"".join(frames), len(frames), max_bytes=max_bytes)

    async def append_chunk(self, run_id: str, chunk: bytes, count: int, *, max_bytes: int) -> None:
        entry = self._entries.get(run_id)
        if type(entry) is _Entry:  # not ended
            entry.add(chunk, count, max_bytes)

    async def finish(
        self, info: RunInfo, frames: Sequence[bytes] | None, *, max_bytes: int, retention: float
    ) -> None:
        entry = self._running(info.id)
        if entry is None:
            return
        entry.info = info
        kept: tuple[bytes, ...] | None = None  # nothing streamed: nothing to keep but the record
        if frames is not None or entry.chunks:
            frames = record_frames(info) if frames is None else frames
            entry.add(b"".join(frames), len(frames), max_bytes)
            kept = tuple(entry.chunks)
        size = entry.size if kept is not None else 0
        self._entries[info.id] = _Ended(info, kept, entry.dropped, entry.key, entry.touched, size)
        self._ended_bytes += size
        if entry.changed is not None:  # readers waiting for the end
            entry.changed.set()
        self._ended.append((time.monotonic() + retention, info.id))
        self._watchers.pop(info.id, None)

    async def get(self, run_id: str) -> RunInfo | None:
        if self._ended:
            self._forget_expired()
        entry = self._entries.get(run_id)
        return entry.info if entry is not None else None

    async def read(self, run_id: str, after: int, *, wait: float) -> JournalSlice | None:
        if self._ended:
            self._forget_expired()
        entry = self._entries.get(run_id)
        if type(entry) is _Entry and after >= entry.end and wait > 0:
            if entry.changed is None:
                entry.changed = anyio.Event()
            with anyio.move_on_after(wait):
                await entry.changed.wait()
            entry = self._entries.get(run_id)  # it may have ended meanwhile
        if entry is None:
            return None
        if after < entry.dropped:
            raise JournalGone(
                f"Events {after + 1} to {entry.dropped} of run {run_id!r} were dropped to keep its "
                "journal within max_run_journal_bytes"
            )
        if type(entry) is _Entry:
            return JournalSlice(entry.frames_after(after), after + 1, False)
        assert isinstance(entry, _Ended)
        return JournalSlice(entry.frames_after(after), after + 1, True)

    async def cancel(self, run_id: str) -> RunInfo | None:
        entry = self._entries.get(run_id)
        if entry is None:
            return None
        on_cancel = self._watchers.get(run_id)
        if on_cancel is not None:
            on_cancel()
        return entry.info

    def watch(self, run_id: str, on_cancel: Callable[[], None]) -> None:
        self._watchers[run_id] = on_cancel

    def unwatch(self, run_id: str) -> None:
        self._watchers.pop(run_id, None)

    async def touch(self, run_id: str) -> None:
        entry = self._running(run_id)  # following an ended run keeps nothing alive
        if entry is not None:
            entry.touched = time.time()

    async def touched_since(self, run_id: str, moment: float) -> bool:
        entry = self._entries.get(run_id)
        return entry is not None and entry.touched >= moment
