"""The run journal of `memory://`: in the process, as its sessions are.

A running run is a live entry. An ended one is kept compact, for its
retention: its record encoded as msgpack and its frames in the chunks they
were written in, in an object the garbage collector does not track. At a high
rate of runs that matters: ended runs are kept first in, first out, so the
memory each new run allocates is the memory the oldest ended run gave back,
long gone from the CPU's caches. The fewer objects and bytes each one
keeps, the less a run pays for the runs kept before it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

import anyio
import msgspec

from ..models import RunInfo
from .journal import (
    IdempotencyMismatch,
    JournalGone,
    JournalSlice,
    end_frames,
    record_frames,
    split_frames,
    start_frame,
)

__all__ = ["MAX_ENDED_BYTES", "MAX_ENDED_RUNS", "MemoryJournal"]

MAX_ENDED_RUNS = 10_000
"""Ended runs kept at most, whatever their retention: at thousands of runs a
second, ten minutes of them would otherwise hold the process's memory."""

MAX_ENDED_BYTES = 8 * 1024 * 1024
"""Bytes of records and frames the ended runs keep at most; the oldest go first."""

_OVERHEAD = 200  # bytes an ended run costs beyond its record and frames: objects, dict and queue slots

_encode_record = msgspec.msgpack.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(RunInfo).decode


class _Entry(msgspec.Struct):
    """A running run's record and frames. Its `start` (frame 1) is made from
    the record when read; the frames after it are kept in the chunks they
    were written in (a stream's text batch is one chunk), cut apart only when read."""

    info: RunInfo
    key: str | None
    chunks: list[bytes] = []  # frames 2 to `end`, less those dropped
    dropped: int = 0  # frames dropped from the head, `start` first
    end: int = 1  # the number of the last frame
    size: int = 0  # bytes of `chunks`
    touched: float = 0.0
    changed: anyio.Event | None = None  # made by a reader that waits

    def trim(self, max_bytes: int) -> None:
        frames = split_frames(b"".join(self.chunks))  # one frame a chunk from now on
        dropped = max(self.dropped, 1)  # `start`, the oldest, goes first
        while self.size > max_bytes and len(frames) > 1:
            self.size -= len(frames.pop(0))
            dropped += 1
        self.chunks, self.dropped = frames, dropped

    def frames_after(self, after: int) -> list[bytes]:
        wanted = self.end - after
        if wanted <= 0:
            return []
        if after == 0:  # nothing was dropped
            return [start_frame(self.info), *split_frames(b"".join(self.chunks))]
        # from the newest chunk back, as a follower mostly wants the last few frames
        index, found = len(self.chunks), 0
        while found < wanted and index > 0:
            index -= 1
            found += self.chunks[index].count(b"\n\n")
        return split_frames(b"".join(self.chunks[index:]))[found - wanted :]


class _Ended(msgspec.Struct, gc=False):
    """An ended run, as kept for its retention: bytes, numbers and strings only."""

    record: bytes  # its `RunInfo`, as msgpack
    chunks: tuple[bytes, ...] | None  # its frames after `start`; None: its record's (`record_frames`)
    dropped: int
    key: str | None
    expires: float  # monotonic time
    size: int  # bytes it counts for

    @property
    def info(self) -> RunInfo:
        return _decode_record(self.record)

    def frames_after(self, after: int) -> list[bytes]:
        if self.chunks is None:
            return record_frames(self.info)[after:]
        frames = split_frames(b"".join(self.chunks))
        if self.dropped == 0:
            frames.insert(0, start_frame(self.info))
        return frames[after - self.dropped :]


class MemoryJournal:
    """Runs in a dict: followed, resumed and cancelled within this process."""

    def __init__(
        self, *, max_ended_runs: int = MAX_ENDED_RUNS, max_ended_bytes: int = MAX_ENDED_BYTES
    ) -> None:
        self.max_ended_runs = max_ended_runs
        self.max_ended_bytes = max_ended_bytes
        self._entries: dict[str, _Entry | _Ended] = {}
        self._keys: dict[str, tuple[str, str]] = {}  # idempotency key: (fingerprint, run id)
        self._ended: deque[str] = deque()  # run ids, in end order
        self._ended_bytes = 0
        self._watchers: dict[str, Callable[[], None]] = {}

    def _forget_expired(self, now: float | None = None) -> None:
        """Drop the ended runs past their retention, or past the bounds of all kept."""
        ended, entries = self._ended, self._entries
        now = time.monotonic() if now is None else now
        while ended:
            oldest = entries[ended[0]]
            assert type(oldest) is _Ended
            if (
                oldest.expires > now
                and len(ended) <= self.max_ended_runs
                and self._ended_bytes <= self.max_ended_bytes
            ):
                return
            del entries[ended.popleft()]
            self._ended_bytes -= oldest.size
            if oldest.key is not None:
                self._keys.pop(oldest.key, None)

    async def start(
        self, info: RunInfo, *, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> RunInfo:
        if idempotency_key is not None:
            self._forget_expired()  # an expired run's key is free again
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
        if type(entry) is not _Entry:  # ended
            return
        entry.chunks.append(chunk)
        entry.end += count
        entry.size += len(chunk)
        if entry.size > max_bytes:
            entry.trim(max_bytes)
        if entry.changed is not None:
            entry.changed.set()
            entry.changed = None

    async def finish(
        self, info: RunInfo, frames: Sequence[bytes] | None, *, max_bytes: int, retention: float
    ) -> None:
        run_id = info.id
        self._watchers.pop(run_id, None)
        entry = self._entries.get(run_id)
        if type(entry) is not _Entry:
            return
        record = _encode_record(info)
        size = len(record) + _OVERHEAD
        kept: tuple[bytes, ...] | None = None  # streamed nothing: its frames are its record's
        if frames is not None or entry.chunks:
            frames = end_frames(info, entry.end + 1) if frames is None else frames
            entry.chunks.append(b"".join(frames))
            entry.size += len(entry.chunks[-1])
            if entry.size > max_bytes:
                entry.trim(max_bytes)
            kept = tuple(entry.chunks)
            size += entry.size
        now = time.monotonic()
        self._entries[run_id] = _Ended(record, kept, entry.dropped, entry.key, now + retention, size)
        if entry.changed is not None:  # readers waiting for the end
            entry.changed.set()
        ended = self._ended
        ended.append(run_id)
        self._ended_bytes += size
        if (
            self._ended_bytes > self.max_ended_bytes
            or len(ended) > self.max_ended_runs
            or self._entries[ended[0]].expires <= now  # type: ignore[union-attr]
        ):
            self._forget_expired(now)

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
        return JournalSlice(entry.frames_after(after), after + 1, type(entry) is _Ended)

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
        return type(entry) is _Entry and entry.touched >= moment
