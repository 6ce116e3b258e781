"""The run journal of `sqlite:`: runs and their frames in the store's file.

Every worker process that opens the file sees every run, so any of them
can serve `GET /runs/{id}/events` or cancel a run another one runs. SQLite
cannot notify, so this side polls: a reader that waits for frames queries
every few tens of milliseconds, and one task per store checks the runs it
watches for cancels every `_CANCEL_POLL` seconds, renewing their leases
on the way (a lease lasts the store's `?run_lease=`, default `LEASE_TTL`, and
is renewed every third of that). The tables are made by `MIGRATIONS` in `sqlite.py`; the store
hands this journal its thread-pool runner and its transaction class rather
than this module importing them, which would be a circle.

Columns of `runs` (times in microseconds since the epoch): `info` is the
`RunInfo` as JSON, `status` a copy of its status to query by; `count` is
the number of the last frame, `dropped` the number of the last frame
trimmed away, `size` the bytes of the frames kept. `expires_at` is when the
row is forgotten: `retention` after the end for an ended run, and for a
running one `LOST_RUN_RETENTION` after its lease, so a run whose worker
died and that nobody read is forgotten as if it had been ended then.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol, TypeVar

import anyio
import msgspec

from ..models import RunInfo
from ._cancel_watch import CancelWatch
from .journal import (
    LEASE_TTL,
    IdempotencyMismatch,
    JournalGone,
    JournalSlice,
    end_frames,
    frame_size,
    split_frames,
    start_frame,
    worker_lost,
)

__all__ = ["LOST_RUN_RETENTION", "SQLiteJournal"]

T = TypeVar("T")

LOST_RUN_RETENTION = 600.0
"""Seconds a run ended by its lost lease is kept: `start` is not told the
app's `run_retention`, so its default is used."""

_CANCEL_POLL = 0.2
_FIRST_READ_POLL = 0.02
_MAX_READ_POLL = 0.05
_SWEEP_BATCH = 500  # expired runs deleted per sweep, so one start never stalls on a backlog
_SWEEP_EVERY = 50  # starts per sweep: a sweep clears ten times as many runs as start meanwhile
_IN_BATCH = 500  # ids per `IN (...)`: SQLite builds before 3.32 allow 999 parameters

_encode_info = msgspec.json.Encoder().encode
_decode_info = msgspec.json.Decoder(RunInfo).decode


class Runner(Protocol):
    """`SQLiteStore._run`: `fn(conn, *args)` on the store's connections; its
    `_write` runs a write with the others of the same pass of the event loop."""

    async def __call__(self, fn: Callable[..., T], /, *args: Any) -> T: ...


class Transaction(Protocol):
    """`sqlite._Transaction`: BEGIN (IMMEDIATE or DEFERRED) ... COMMIT, ROLLBACK on error."""

    def __call__(
        self, conn: sqlite3.Connection, *, immediate: bool
    ) -> AbstractContextManager[sqlite3.Connection]: ...


class _Run(NamedTuple):
    """The columns of a `runs` row that the journal decides on."""

    info: str
    status: str
    dropped: int
    last: int  # the `count` column: tuple has a method of that name
    size: int
    lease_until: int
    expires_at: int

    def expired(self, now: int) -> bool:
        return self.expires_at <= now

    def lost(self, now: int) -> bool:
        return self.status == "running" and self.lease_until < now


_RUN_COLUMNS = "info, status, dropped, count, size, lease_until, expires_at"


def _now() -> int:
    return time.time_ns() // 1000


def _micros(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _select_run(conn: sqlite3.Connection, run_id: str) -> _Run | None:
    row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
    return _Run(*row) if row is not None else None


def _delete_runs(conn: sqlite3.Connection, run_ids: Sequence[str]) -> None:
    rows = [(run_id,) for run_id in run_ids]
    conn.executemany("DELETE FROM run_frames WHERE run_id = ?", rows)
    conn.executemany("DELETE FROM runs WHERE id = ?", rows)


def _add_frames(
    conn: sqlite3.Connection, run_id: str, run: _Run, frames: Sequence[bytes], max_bytes: int | None
) -> tuple[int, int, int]:
    """Inserts frames after the last and trims the oldest past `max_bytes`
    (None: no trimming); the run's new `(count, size, dropped)`."""
    conn.executemany(
        "INSERT INTO run_frames (run_id, seq, body) VALUES (?, ?, ?)",
        [(run_id, run.last + n, body) for n, body in enumerate(frames, 1)],
    )
    count, size, dropped = run.last + len(frames), run.size + frame_size(frames), run.dropped
    if max_bytes is not None and size > max_bytes and count - dropped > 1:
        # the newest frame is kept whatever its size, as the memory journal does
        rows = conn.execute(
            "SELECT seq, length(body) FROM run_frames WHERE run_id = ? AND seq < ? ORDER BY seq",
            (run_id, count),
        )
        # lazily: a full journal trims a frame or two per append, not the whole run
        for seq, length in rows:
            if size <= max_bytes:
                break
            size -= length
            dropped = seq
        rows.close()
        conn.execute("DELETE FROM run_frames WHERE run_id = ? AND seq <= ?", (run_id, dropped))
    return count, size, dropped


def _end(
    conn: sqlite3.Connection,
    run_id: str,
    run: _Run,
    info: RunInfo,
    frames: Sequence[bytes],
    max_bytes: int | None,
    expires_at: int,
) -> None:
    count, size, dropped = _add_frames(conn, run_id, run, frames, max_bytes)
    conn.execute(
        "UPDATE runs SET info = ?, status = ?, count = ?, size = ?, dropped = ?, expires_at = ? "
        "WHERE id = ?",
        (_encode_info(info).decode(), info.status, count, size, dropped, expires_at, run_id),
    )


def _end_lost(conn: sqlite3.Connection, run_id: str, run: _Run, now: int) -> RunInfo:
    """Ends a running run whose lease ran out, as `worker_lost`; inside a write transaction."""
    ended, frames = worker_lost(_decode_info(run.info), run.last + 1)
    _end(conn, run_id, run, ended, frames, None, now + _micros(LOST_RUN_RETENTION))
    return ended


def _settle_lost(conn: sqlite3.Connection, transaction: Transaction, run_id: str) -> None:
    """Ends a run found lost; under the write lock, so of several readers
    that found it lost only one ends it."""
    with transaction(conn, immediate=True):
        now = _now()
        run = _select_run(conn, run_id)
        if run is not None and not run.expired(now) and run.lost(now):
            _end_lost(conn, run_id, run, now)
        # else gone, or ended or renewed by another process meanwhile


class SQLiteJournal:
    """Runs in the tables `runs` and `run_frames` of an `SQLiteStore`'s file.

    ```python
    store = SQLiteStore("sqlite:///orbiter.db")
    await store.runs.start(RunInfo(id=run_id, agent_name="assistant"))
    ```

    Parameters:
        run: the store's runner, `fn(conn, *args)` on one of its connections.
        write: the store's runner of writes (batched); `run` when not given.
        transaction: the store's transaction context manager.
        lease: seconds the lease of a run this process runs lasts unless
            renewed; None: `LEASE_TTL`.
    """

    def __init__(
        self,
        run: Runner,
        transaction: Transaction,
        *,
        write: Runner | None = None,
        lease: float | None = None,
    ) -> None:
        assert lease is None or lease > 0
        self._run = run
        self._write = write or run
        self._starts = 0  # by this process: every `_SWEEP_EVERY`th sweeps expired runs
        self._transaction = transaction
        self._lease = lease
        self._watch = CancelWatch(self._poll, lease=lambda: self.lease, interval=_CANCEL_POLL)

    @property
    def lease(self) -> float:
        # read when used, not copied at construction: `LEASE_TTL` is patched in tests
        return self._lease if self._lease is not None else LEASE_TTL

    # --- runs ------------------------------------------------------------------------

    async def start(
        self, info: RunInfo, *, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> RunInfo:
        return await self._write(self.write_start, info, idempotency_key, fingerprint)

    def write_start(
        self, conn: sqlite3.Connection, info: RunInfo, key: str | None = None, fingerprint: str = ""
    ) -> RunInfo:
        """`start`, on `conn`: within the caller's transaction when one is open."""
        with self._transaction(conn, immediate=True):
            now = _now()
            self._starts += 1
            if self._starts % _SWEEP_EVERY == 1:
                expired = conn.execute(
                    "SELECT id FROM runs WHERE expires_at <= ? LIMIT ?", (now, _SWEEP_BATCH)
                ).fetchall()
                _delete_runs(conn, [run_id for (run_id,) in expired])
            if key is not None:
                # race-free: we hold the write lock from this select to our insert,
                # and the unique index would refuse a second run with the key anyway
                seen = conn.execute(
                    "SELECT id, fingerprint FROM runs WHERE idempotency_key = ?", (key,)
                ).fetchone()
                if seen is not None:
                    run_id, seen_fingerprint = seen
                    run = _select_run(conn, run_id)
                    assert run is not None
                    if run.expired(now):
                        _delete_runs(conn, [run_id])
                    elif seen_fingerprint != fingerprint:
                        raise IdempotencyMismatch(
                            "This Idempotency-Key was used with another request body"
                        )
                    elif run.lost(now):
                        return _end_lost(conn, run_id, run, now)  # the repeat attaches to its end
                    else:
                        return _decode_info(run.info)
            lease_until = now + _micros(self.lease)
            start = start_frame(info)
            conn.execute(
                "INSERT INTO runs (id, info, status, idempotency_key, fingerprint, "
                "count, size, lease_until, expires_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)",
                (
                    info.id,
                    _encode_info(info).decode(),
                    info.status,
                    key,
                    fingerprint,
                    len(start),
                    lease_until,
                    lease_until + _micros(LOST_RUN_RETENTION),
                ),
            )
            conn.execute("INSERT INTO run_frames (run_id, seq, body) VALUES (?, 1, ?)", (info.id, start))
            return info

    async def append(self, run_id: str, frames: Sequence[bytes], *, max_bytes: int) -> None:
        if frames:
            await self._write(self._append, run_id, frames, max_bytes)

    async def append_chunk(self, run_id: str, chunk: bytes, count: int, *, max_bytes: int) -> None:
        # one row a frame, so reads and trims address frames by number in SQL
        await self.append(run_id, split_frames(chunk), max_bytes=max_bytes)

    def _append(
        self, conn: sqlite3.Connection, run_id: str, frames: Sequence[bytes], max_bytes: int
    ) -> None:
        with self._transaction(conn, immediate=True):
            run = _select_run(conn, run_id)
            # an ended run takes no more frames: one ended as lost while its worker was
            # only slow must not grow frames after its `[DONE]`
            if run is None or run.status != "running":
                return
            count, size, dropped = _add_frames(conn, run_id, run, frames, max_bytes)
            # frames show the worker alive: its lease lasts at least as long as a renewal's
            lease_until = max(run.lease_until, _now() + _micros(self.lease))
            conn.execute(
                "UPDATE runs SET count = ?, size = ?, dropped = ?, lease_until = ?, expires_at = ? "
                "WHERE id = ?",
                (count, size, dropped, lease_until, lease_until + _micros(LOST_RUN_RETENTION), run_id),
            )

    async def finish(
        self, info: RunInfo, frames: Sequence[bytes] | None, *, max_bytes: int, retention: float
    ) -> None:
        if frames is None:
            frames = end_frames(info, 2)
        # forgotten first, so the poller cannot take the end for a cancel from elsewhere
        self.unwatch(info.id)
        await self._write(self.write_finish, info, frames, max_bytes, retention)

    def write_finish(
        self,
        conn: sqlite3.Connection,
        info: RunInfo,
        frames: Sequence[bytes],
        max_bytes: int,
        retention: float,
    ) -> None:
        """`finish`, on `conn` (after `unwatch`): within the caller's transaction when one is open."""
        with self._transaction(conn, immediate=True):
            run = _select_run(conn, info.id)
            if run is None or run.status != "running":
                return  # unknown, or already ended as lost: its followers saw that end
            expires_at = _now() + _micros(retention)
            _end(conn, info.id, run, info, frames, max_bytes, expires_at)

    async def get(self, run_id: str) -> RunInfo | None:
        run = await self._run(self._current, run_id)
        return _decode_info(run.info) if run is not None else None

    def _current(self, conn: sqlite3.Connection, run_id: str) -> _Run | None:
        """The run's row unless expired, ended first if its worker was lost."""
        run = _select_run(conn, run_id)
        if run is None or run.expired(_now()):
            return None
        if not run.lost(_now()):
            return run
        _settle_lost(conn, self._transaction, run_id)
        run = _select_run(conn, run_id)
        return run if run is not None and not run.expired(_now()) else None

    async def read(self, run_id: str, after: int, *, wait: float) -> JournalSlice | None:
        deadline = time.monotonic() + wait
        delay = _FIRST_READ_POLL
        while True:
            piece = await self._run(self._read, run_id, after)
            if piece is None or piece.frames or piece.ended:
                return piece
            left = deadline - time.monotonic()
            if left <= 0:
                return piece
            await anyio.sleep(min(delay, left))
            delay = min(delay * 1.5, _MAX_READ_POLL)

    def _read(
        self, conn: sqlite3.Connection, run_id: str, after: int, settled: bool = False
    ) -> JournalSlice | None:
        with self._transaction(conn, immediate=False):  # the row and its frames in one snapshot
            now = _now()
            run = _select_run(conn, run_id)
            if run is None or run.expired(now):
                return None
            if settled or not run.lost(now):
                if after < run.dropped:
                    raise JournalGone(
                        f"Events {after + 1} to {run.dropped} of run {run_id!r} were dropped to "
                        "keep its journal within max_run_journal_bytes"
                    )
                rows = conn.execute(
                    "SELECT body FROM run_frames WHERE run_id = ? AND seq > ? ORDER BY seq",
                    (run_id, after),
                ).fetchall()
                return JournalSlice([body for (body,) in rows], after + 1, run.status != "running")
        _settle_lost(conn, self._transaction, run_id)
        return self._read(conn, run_id, after, settled=True)

    # --- cancels and leases -------------------------------------------------------------

    async def cancel(self, run_id: str) -> RunInfo | None:
        run = await self._run(self._cancel, run_id)
        if run is None:
            return None
        self._watch.fire(run_id)
        return _decode_info(run.info)

    def _cancel(self, conn: sqlite3.Connection, run_id: str) -> _Run | None:
        run = self._current(conn, run_id)
        if run is not None and run.status == "running":
            with self._transaction(conn, immediate=True):
                conn.execute(
                    "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
                    (run_id,),
                )
        return run

    def watch(self, run_id: str, on_cancel: Callable[[], None]) -> None:
        self._watch.watch(run_id, on_cancel)

    def unwatch(self, run_id: str) -> None:
        self._watch.unwatch(run_id)

    async def _poll(self, run_ids: list[str], renew: bool) -> list[str]:
        return await self._run(_poll_runs, self._transaction, run_ids, self.lease if renew else None)

    async def aclose(self) -> None:
        await self._watch.aclose()

    # --- followers ------------------------------------------------------------------------

    async def touch(self, run_id: str) -> None:
        await self._run(self._touch, run_id)

    def _touch(self, conn: sqlite3.Connection, run_id: str) -> None:
        with self._transaction(conn, immediate=True):
            conn.execute("UPDATE runs SET touched_at = ? WHERE id = ?", (_now(), run_id))

    async def touched_since(self, run_id: str, moment: float) -> bool:
        touched = await self._run(_touched_at, run_id)
        return touched is not None and touched >= moment * 1_000_000


def _touched_at(conn: sqlite3.Connection, run_id: str) -> int | None:
    row = conn.execute("SELECT touched_at FROM runs WHERE id = ?", (run_id,)).fetchone()
    return row[0] if row is not None else None


def _poll_runs(
    conn: sqlite3.Connection, transaction: Transaction, run_ids: list[str], lease: float | None
) -> list[str]:
    """Renews the leases of the watched runs for `lease` seconds (None: not now);
    the ones to stop: cancelled from anywhere, or ended by another process
    that found them lost."""
    flagged: list[str] = []
    with transaction(conn, immediate=lease is not None):
        if lease is not None:
            lease_until = _now() + _micros(lease)
            expires_at = lease_until + _micros(LOST_RUN_RETENTION)
            conn.executemany(
                "UPDATE runs SET lease_until = ?, expires_at = ? WHERE id = ? AND status = 'running'",
                [(lease_until, expires_at, run_id) for run_id in run_ids],
            )
        for first in range(0, len(run_ids), _IN_BATCH):
            batch = run_ids[first : first + _IN_BATCH]
            marks = ", ".join("?" * len(batch))
            rows = conn.execute(
                f"SELECT id FROM runs WHERE id IN ({marks}) "
                "AND (cancel_requested = 1 OR status != 'running')",
                batch,
            ).fetchall()
            flagged.extend(run_id for (run_id,) in rows)
    return flagged
