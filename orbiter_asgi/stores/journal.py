"""The `RunJournal` protocol: what every store keeps of a run, beside its sessions.

A run's journal is its record (`RunInfo`) and the SSE frames its stream
sent, in order: frame `n` has id `<run_id>:<n>`, the first one is `start`
(which the journal makes from the record), the last one is `[DONE]`.
The frames are kept as they went out, so a resumed stream is byte for byte
the stream a direct client had, and any worker that reaches the store can
serve it. A journal is bounded twice: `max_bytes` of frames (older ones are
dropped first; asking for them is a 410) and `retention` seconds after the
run ended (then the run is unknown, a 404).

Cancels travel through the journal too: `cancel()` marks the run, and the
process that runs it learns through `watch()`. A shared journal also holds
a lease on each run, renewed by the process that runs it while it watches
the run; a run whose lease ran out (its worker was killed) is ended by the
next reader as `failed`, code `worker_lost` (`worker_lost()`). A lease lasts
`LEASE_TTL` seconds unless the store's URL says otherwise (`?run_lease=10`):
what counts is the setting of the process that runs the run, which writes
the lease; a reader only compares it with the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple, Protocol, runtime_checkable

import msgspec

from .._codec import RequestValidationError
from .._sse import done_frame, frame
from ..exceptions import OrbiterError
from ..models import DoneEvent, ErrorEvent, RunError, RunInfo, StartEvent, ValidationErrorItem

__all__ = [
    "LEASE_TTL",
    "IdempotencyMismatch",
    "JournalGone",
    "JournalSlice",
    "RunJournal",
    "end_frames",
    "frame_size",
    "record_frames",
    "split_frames",
    "start_frame",
    "worker_lost",
]

LEASE_TTL = 10.0
"""Seconds a run's lease lasts unless its process renews it (every third of that);
the default of a store's `?run_lease=`."""


class JournalGone(OrbiterError):
    """Frames asked for were dropped to keep the journal within its bounds."""

    status_code = 410
    code = "gone"


class IdempotencyMismatch(RequestValidationError):
    """An `Idempotency-Key` seen before, with another request body: a 422 in
    FastAPI's list shape, about the header."""

    code = "idempotency_mismatch"

    def __init__(self, message: str = "This Idempotency-Key was used with another request body") -> None:
        item = ValidationErrorItem(loc=["header", "Idempotency-Key"], msg=message, type=self.code)
        super().__init__([item])


class JournalSlice(NamedTuple):
    """Frames after a position: `frames[0]` is frame `first`; `ended` once they reach `[DONE]`."""

    frames: list[bytes]
    first: int
    ended: bool


def frame_size(frames: Sequence[bytes]) -> int:
    return sum(map(len, frames))


def split_frames(chunk: bytes) -> list[bytes]:
    """The frames of a chunk, each with its blank line: a frame's `data:` is
    one line of JSON (whose strings escape newlines), so frames part at `\n\n`."""
    return [piece + b"\n\n" for piece in chunk.split(b"\n\n")[:-1]]


def start_frame(info: RunInfo) -> bytes:
    """Frame 1 of every run, its `start`, made from its record: `RunJournal.start`
    holds it from the moment the run is recorded, so nobody appends it."""
    start = StartEvent(run_id=info.id, agent_name=info.agent_name, session_id=info.session_id)
    return frame(b"id: %b:" % info.id.encode(), 1, start)


def end_frames(info: RunInfo, seq: int) -> list[bytes]:
    """An ended run's last frames from its record, as frames `seq` and `seq + 1`:
    its `done` (or `error`), then `[DONE]`."""
    head = b"id: %b:" % info.id.encode()
    last: DoneEvent | ErrorEvent
    if info.error is None:
        last = DoneEvent.of_run(info)
    else:
        last = ErrorEvent(run_id=info.id, error=info.error.message, code=info.error.code)
    return [frame(head, seq, last), done_frame(head, seq + 1)]


def record_frames(info: RunInfo) -> list[bytes]:
    """The whole stream of an ended run that streamed nothing, from its record:
    `start`, its `done` (or `error`), `[DONE]`."""
    return [start_frame(info), *end_frames(info, 2)]


def worker_lost(info: RunInfo, next_seq: int) -> tuple[RunInfo, list[bytes]]:
    """The end of a run whose process stopped renewing its lease: its record
    and its last frames (`error` of code `worker_lost`, then `[DONE]`), as
    frames `next_seq` and `next_seq + 1`."""
    message = "The worker running this run stopped; its lease expired"
    ended = msgspec.structs.replace(
        info,
        status="failed",
        ended_at=datetime.now(UTC),
        error=RunError(code="worker_lost", message=message),
    )
    head = b"id: %b:" % info.id.encode()
    event = ErrorEvent(run_id=info.id, error=message, code="worker_lost")
    return ended, [frame(head, next_seq, event), done_frame(head, next_seq + 1)]


@runtime_checkable
class RunJournal(Protocol):
    """Runs and their frames, shared by every process that uses the store."""

    async def start(
        self, info: RunInfo, *, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> RunInfo:
        """Record a new running run, with its first frame, `start_frame(info)`,
        and return it; with an `idempotency_key`
        already used for a run kept in the journal, return that run instead,
        or raise `IdempotencyMismatch` when its `fingerprint` differs."""
        ...

    async def append(self, run_id: str, frames: Sequence[bytes], *, max_bytes: int) -> None:
        """Add frames, numbered on from the last (the first added is frame 2);
        drop the oldest past `max_bytes`."""
        ...

    async def append_chunk(self, run_id: str, chunk: bytes, count: int, *, max_bytes: int) -> None:
        """`append` for `count` frames written back to back, as a stream sends
        them (`split_frames(chunk)` cuts them apart)."""
        ...

    async def finish(
        self, info: RunInfo, frames: Sequence[bytes] | None, *, max_bytes: int, retention: float
    ) -> None:
        """Add the last frames (the final event and `[DONE]`) and the ended
        record, at once; forget the run `retention` seconds later. The run is
        unwatched first, whether or not the write succeeds. `frames`
        None is a run that streamed nothing but its start (a JSON one): its
        last frames are its record's, `end_frames(info, 2)`."""
        ...

    async def get(self, run_id: str) -> RunInfo | None:
        """The run, or None when unknown or expired."""
        ...

    async def read(self, run_id: str, after: int, *, wait: float) -> JournalSlice | None:
        """The frames after frame `after`, waiting up to `wait` seconds for
        some while the run goes on; None when the run is unknown or expired,
        `JournalGone` when frames after `after` were dropped."""
        ...

    async def cancel(self, run_id: str) -> RunInfo | None:
        """Ask the process running the run to cancel it; the run as it is now."""
        ...

    def watch(self, run_id: str, on_cancel: Callable[[], None]) -> None:
        """Call `on_cancel` (in this process) when the run is cancelled from anywhere,
        until `unwatch`."""
        ...

    def unwatch(self, run_id: str) -> None: ...

    async def touch(self, run_id: str) -> None:
        """A client follows the run now: a run that lost its client is not cancelled."""
        ...

    async def touched_since(self, run_id: str, moment: float) -> bool:
        """Whether a client followed the run after `moment` (seconds since the epoch)."""
        ...
