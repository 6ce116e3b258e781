"""The run journal of `postgresql:`: runs and their frames beside the sessions.

Tables `runs` and `run_frames` (made by `JOURNAL_MIGRATION`, a step of the
store's `MIGRATIONS`) hold what `sqlite_journal.py` holds; every write that
checks and changes is one server-side function, so it is one round trip and
atomic whatever the isolation. Lease times come from the server's clock
(`now_us()`), so workers' clocks may disagree.

Nobody polls for frames or cancels. A write that a follower waits for
(frames, the end, a cancel) sends `NOTIFY` in its own transaction, so the
notification leaves exactly when the write is visible. Each store keeps one
connection of its own (not the pool's) that `LISTEN`s on the schema's
channel and wakes the readers and the cancel watch of this process; it
reconnects when it drops, and after each reconnect everybody looks again,
since what was sent meanwhile was lost. The cancel watch still writes every
third of a lease, to renew the leases of the runs this process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import anyio
import msgspec
import psycopg

from ..exceptions import StoreError
from ..models import RunInfo
from ._cancel_watch import CancelWatch
from .journal import (
    LEASE_TTL,
    IdempotencyMismatch,
    JournalGone,
    JournalSlice,
    end_frames,
    split_frames,
    start_frame,
    worker_lost,
)

__all__ = ["JOURNAL_MIGRATION", "LOST_RUN_RETENTION", "PostgresJournal"]

LOST_RUN_RETENTION = 600.0
"""Seconds a run ended by its lost lease is kept: `start` is not told the
app's `run_retention`, so its default is used."""

_TICK = 0.2  # the cancel watch's tick; it asks the server only to renew, or after a gap
_FALLBACK_POLL = 0.1  # a reader's pause while the listener reconnects
_HEARTBEAT = 15.0  # seconds of silence after which the listener checks its connection
_FIRST_RETRY = 0.05
_MAX_RETRY = 2.0

# `{s}` is the quoted schema, `{channel}` the quoted channel name: see `PostgresStore`.
JOURNAL_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE {s}.runs (
        id text COLLATE "C" PRIMARY KEY,
        info bytea NOT NULL,
        status text NOT NULL,
        idempotency_key text UNIQUE,
        fingerprint text NOT NULL DEFAULT '',
        dropped integer NOT NULL DEFAULT 0,
        last_seq integer NOT NULL DEFAULT 0,
        size bigint NOT NULL DEFAULT 0,
        lease_until bigint NOT NULL,
        cancel_requested boolean NOT NULL DEFAULT false,
        touched_at bigint NOT NULL DEFAULT 0,
        expires_at bigint NOT NULL
    )""",
    "CREATE INDEX runs_by_expiry ON {s}.runs (expires_at)",
    """CREATE TABLE {s}.run_frames (
        run_id text COLLATE "C" NOT NULL,
        seq integer NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (run_id, seq)
    )""",
    # frames after the last, then the oldest dropped past max bytes (NULL: none),
    # always keeping the newest; the caller holds the run's row lock
    """CREATE FUNCTION {s}.run_add(p_id text, p_frames bytea[], p_max_bytes bigint)
    RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        v_last integer; v_size bigint; v_dropped integer; f record;
    BEGIN
        SELECT last_seq, size, dropped INTO v_last, v_size, v_dropped FROM {s}.runs WHERE id = p_id;
        INSERT INTO {s}.run_frames (run_id, seq, body)
            SELECT p_id, v_last + u.n, u.body FROM unnest(p_frames) WITH ORDINALITY AS u(body, n);
        v_last := v_last + cardinality(p_frames);
        v_size := v_size + coalesce((SELECT sum(length(b)) FROM unnest(p_frames) AS b), 0);
        IF p_max_bytes IS NOT NULL AND v_size > p_max_bytes AND v_last - v_dropped > 1 THEN
            FOR f IN SELECT seq, length(body) AS bytes FROM {s}.run_frames
                     WHERE run_id = p_id AND seq < v_last ORDER BY seq LOOP
                EXIT WHEN v_size <= p_max_bytes;
                v_size := v_size - f.bytes;
                v_dropped := f.seq;
            END LOOP;
            DELETE FROM {s}.run_frames WHERE run_id = p_id AND seq <= v_dropped;
        END IF;
        UPDATE {s}.runs SET last_seq = v_last, size = v_size, dropped = v_dropped WHERE id = p_id;
    END $$""",
    # o_kind: 0 the key names a kept run of another fingerprint; 1 that run (o_info);
    # 2 made; 3 that run, running with its lease lapsed (the caller ends it first)
    """CREATE FUNCTION {s}.run_start(
        p_id text, p_info bytea, p_key text, p_fingerprint text, p_start bytea,
        p_lease bigint, p_keep bigint, p_sweep integer,
        OUT o_kind integer, OUT o_info bytea, OUT o_last integer)
    LANGUAGE plpgsql AS $$
    DECLARE
        v_now bigint := {s}.now_us(); r record;
    BEGIN
        IF p_sweep > 0 THEN
            WITH gone AS (
                DELETE FROM {s}.runs WHERE id IN (
                    SELECT id FROM {s}.runs WHERE expires_at <= v_now
                    LIMIT p_sweep FOR UPDATE SKIP LOCKED)
                RETURNING id)
            DELETE FROM {s}.run_frames WHERE run_id IN (SELECT id FROM gone);
        END IF;
        IF p_key IS NOT NULL THEN
            -- starts with one key queue here, so the second finds the first's run
            PERFORM pg_advisory_xact_lock(hashtext({channel}), hashtext(p_key));
            SELECT id, info, fingerprint, status, lease_until, expires_at, last_seq INTO r
                FROM {s}.runs WHERE idempotency_key = p_key;
            IF FOUND THEN
                IF r.expires_at <= v_now THEN
                    DELETE FROM {s}.run_frames WHERE run_id = r.id;
                    DELETE FROM {s}.runs WHERE id = r.id;
                ELSIF r.fingerprint <> p_fingerprint THEN
                    o_kind := 0;
                    RETURN;
                ELSE
                    o_kind := CASE WHEN r.status = 'running' AND r.lease_until < v_now THEN 3 ELSE 1 END;
                    o_info := r.info;
                    o_last := r.last_seq;
                    RETURN;
                END IF;
            END IF;
        END IF;
        INSERT INTO {s}.runs (id, info, status, idempotency_key, fingerprint, last_seq, size,
                              lease_until, expires_at)
            VALUES (p_id, p_info, 'running', p_key, p_fingerprint, 1, length(p_start),
                    v_now + p_lease, v_now + p_lease + p_keep);
        INSERT INTO {s}.run_frames (run_id, seq, body) VALUES (p_id, 1, p_start);
        o_kind := 2;
    END $$""",
    # an ended run takes no more frames; frames show the worker alive, so they extend its lease
    """CREATE FUNCTION {s}.run_append(
        p_id text, p_frames bytea[], p_max_bytes bigint, p_lease bigint, p_keep bigint)
    RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        v_status text; v_until bigint;
    BEGIN
        SELECT status, lease_until INTO v_status, v_until FROM {s}.runs WHERE id = p_id FOR UPDATE;
        IF NOT FOUND OR v_status <> 'running' THEN
            RETURN;
        END IF;
        PERFORM {s}.run_add(p_id, p_frames, p_max_bytes);
        v_until := greatest(v_until, {s}.now_us() + p_lease);
        UPDATE {s}.runs SET lease_until = v_until, expires_at = v_until + p_keep WHERE id = p_id;
        PERFORM pg_notify({channel}, 'f' || p_id);
    END $$""",
    """CREATE FUNCTION {s}.run_finish(
        p_id text, p_info bytea, p_status text, p_frames bytea[], p_max_bytes bigint, p_keep bigint)
    RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        v_status text;
    BEGIN
        SELECT status INTO v_status FROM {s}.runs WHERE id = p_id FOR UPDATE;
        IF NOT FOUND OR v_status <> 'running' THEN
            RETURN;  -- unknown, or already ended as lost: its followers saw that end
        END IF;
        PERFORM {s}.run_add(p_id, p_frames, p_max_bytes);
        UPDATE {s}.runs SET info = p_info, status = p_status, expires_at = {s}.now_us() + p_keep
            WHERE id = p_id;
        PERFORM pg_notify({channel}, 'f' || p_id);
    END $$""",
    # only while the run still runs with its lease lapsed and no frame came since the
    # caller looked: of many readers, one ends it; its worker, if only slow, is told
    """CREATE FUNCTION {s}.run_lost(
        p_id text, p_info bytea, p_status text, p_last integer, p_frames bytea[], p_keep bigint)
    RETURNS boolean LANGUAGE plpgsql AS $$
    DECLARE
        r record; v_now bigint := {s}.now_us();
    BEGIN
        SELECT status, lease_until, last_seq INTO r FROM {s}.runs WHERE id = p_id FOR UPDATE;
        IF NOT FOUND OR r.status <> 'running' OR r.lease_until >= v_now OR r.last_seq <> p_last THEN
            RETURN false;
        END IF;
        PERFORM {s}.run_add(p_id, p_frames, NULL);
        UPDATE {s}.runs SET info = p_info, status = p_status, expires_at = v_now + p_keep WHERE id = p_id;
        PERFORM pg_notify({channel}, 'f' || p_id);
        PERFORM pg_notify({channel}, 'c' || p_id);
        RETURN true;
    END $$""",
)

# One statement, so one snapshot: the row and its frames agree (no trim in between).
# frames is NULL when not asked for (`after` NULL) or when frames after `after` were dropped.
_STATE = """
SELECT r.status, r.info, r.status = 'running' AND r.lease_until < n.now, r.lease_until - n.now,
       r.last_seq, r.dropped,
       CASE WHEN %(after)s::integer >= r.dropped THEN ARRAY(
           SELECT f.body FROM {s}.run_frames f
           WHERE f.run_id = r.id AND f.seq > %(after)s::integer ORDER BY f.seq) END
FROM {s}.runs r, (SELECT {s}.now_us() AS now) n
WHERE r.id = %(id)s AND r.expires_at > n.now
"""

_CANCEL = """
WITH flagged AS (
    UPDATE {s}.runs SET cancel_requested = true WHERE id = %s AND status = 'running' RETURNING id)
SELECT pg_notify({channel}, 'c' || id) FROM flagged
"""

# renews the leases (when `lease` is not NULL) and names the runs to stop: cancelled
# from anywhere, or ended by another process that found them lost
_POLL = """
WITH renewed AS (
    UPDATE {s}.runs SET lease_until = n.now + %(lease)s::bigint,
                        expires_at = n.now + %(lease)s::bigint + %(keep)s::bigint
    FROM (SELECT {s}.now_us() AS now) n
    WHERE id = ANY(%(ids)s::text[]) AND status = 'running' AND %(lease)s::bigint IS NOT NULL)
SELECT id FROM {s}.runs WHERE id = ANY(%(ids)s::text[]) AND (cancel_requested OR status <> 'running')
"""

_SWEEP_BATCH = 500  # expired runs deleted per sweep, so one start never stalls on a backlog
_SWEEP_EVERY = 50  # starts per sweep: a sweep clears ten times as many runs as start meanwhile

_encode_info = msgspec.json.Encoder().encode
_decode_info = msgspec.json.Decoder(RunInfo).decode

Params = Sequence[Any] | Mapping[str, Any]
Fetch = Callable[[str, Params], Awaitable[list[tuple[Any, ...]]]]
"""`PostgresStore._fetch`: one statement on a pooled connection, its rows; errors made `StoreError`."""

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]
"""Opens a connection of its own, in autocommit, for `LISTEN`."""


def _micros(seconds: float) -> int:
    return max(1, round(seconds * 1_000_000))


class _State(NamedTuple):
    status: str
    info: bytes
    lapsed: bool
    lease_left: int  # microseconds until the lease lapses, on the server's clock
    last: int  # the number of the last frame
    dropped: int
    frames: list[bytes] | None


class _Listener:
    """The store's `LISTEN` connection: wakes readers of a run (`f<run id>`) and
    tells the cancel watch (`c<run id>`)."""

    def __init__(
        self,
        connect: Connect,
        channel: str,
        *,
        on_cancel: Callable[[str], None],
        on_gap: Callable[[], None],
    ) -> None:
        self._connect = connect
        self._listen = f'LISTEN "{channel}"'  # a plain identifier: see `PostgresStore`
        self._on_cancel = on_cancel
        self._on_gap = on_gap
        self._waiters: dict[str, set[anyio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._up: asyncio.Event | None = None
        self.listening = False

    def start(self) -> None:
        task = self._task
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            self.listening = False
            self._up = asyncio.Event()
            self._task = loop.create_task(self._run())

    async def ready(self, limit: float) -> bool:
        """Whether it listens, waiting up to `limit` seconds for it to start."""
        self.start()
        if not self.listening and self._up is not None and limit > 0:
            with anyio.move_on_after(limit):
                await self._up.wait()
        return self.listening

    @contextlib.contextmanager
    def waiting(self, run_id: str) -> Iterator[anyio.Event]:
        """An event set when the run changes; registered before the caller looks,
        so a change between its look and its wait is not missed."""
        event = anyio.Event()
        events = self._waiters.setdefault(run_id, set())
        events.add(event)
        try:
            yield event
        finally:
            events.discard(event)
            if not events and self._waiters.get(run_id) is events:
                del self._waiters[run_id]

    def _wake(self, run_id: str) -> None:
        for event in self._waiters.get(run_id, ()):
            event.set()

    def _dispatch(self, payload: str) -> None:
        kind, run_id = payload[:1], payload[1:]
        if kind == "f":
            self._wake(run_id)
        elif kind == "c":
            self._on_cancel(run_id)

    async def _run(self) -> None:
        delay = _FIRST_RETRY
        while True:
            try:
                conn = await self._connect()
            except (psycopg.Error, OSError, TimeoutError, StoreError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)
                continue
            try:
                await conn.execute(self._listen)
                self.listening = True
                if self._up is not None:
                    self._up.set()
                delay = _FIRST_RETRY
                # notifications sent while nobody listened are lost: everybody looks again
                self._gap()
                while True:
                    async for note in conn.notifies(timeout=_HEARTBEAT):
                        self._dispatch(note.payload)
                    with anyio.fail_after(_HEARTBEAT):  # quiet for long: is the server still there?
                        await conn.execute("SELECT 1")
            except (psycopg.Error, OSError, TimeoutError):
                pass
            finally:
                self.listening = False
                if self._up is not None:
                    self._up.clear()
                await conn.close()
            await asyncio.sleep(delay)

    def _gap(self) -> None:
        for run_id in list(self._waiters):
            self._wake(run_id)
        self._on_gap()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        self.listening = False
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class PostgresJournal:
    """Runs in the tables `runs` and `run_frames` of a `PostgresStore`'s schema.

    ```python
    store = PostgresStore("postgresql://app@db/app")
    await store.runs.start(RunInfo(id=run_id, agent_name="assistant"))
    ```

    Parameters:
        fetch: the store's statement runner.
        connect: opens the listening connection.
        schema: the quoted schema the tables are in.
        channel: the `NOTIFY` channel of that schema.
        timeout: the store's timeout; a reader waits no longer for the listener to start.
        lease: seconds the lease of a run this process runs lasts unless
            renewed; None: `LEASE_TTL`.
    """

    def __init__(
        self,
        fetch: Fetch,
        connect: Connect,
        *,
        schema: str,
        channel: str,
        timeout: float,
        lease: float | None = None,
    ) -> None:
        assert lease is None or lease > 0
        self._fetch = fetch
        self._timeout = timeout
        self._lease = lease
        literal = f"'{channel}'"
        self._sql = {
            name: text.replace("{s}", schema).replace("{channel}", literal)
            for name, text in (("state", _STATE), ("cancel", _CANCEL), ("poll", _POLL))
        }
        self._prefix = schema
        self._watch = CancelWatch(self._poll, lease=lambda: self.lease, interval=_TICK)
        self._listener = _Listener(connect, channel, on_cancel=self._watch.fire, on_gap=self._gap)
        self._missed = True  # cancels may have been sent unheard: the next tick asks
        self._starts = 0  # by this process: every `_SWEEP_EVERY`th sweeps expired runs

    @property
    def lease(self) -> float:
        # read when used, not copied at construction: `LEASE_TTL` is patched in tests
        return self._lease if self._lease is not None else LEASE_TTL

    def _call(self, function: str, arguments: str) -> str:
        return f"SELECT * FROM {self._prefix}.{function}({arguments})"

    def _decode(self, raw: bytes) -> RunInfo:
        try:
            return _decode_info(raw)
        except msgspec.DecodeError as exc:
            raise StoreError(f"PostgreSQL store holds an unreadable run: {exc}") from None

    # --- writes by the process running the run -------------------------------------

    async def start(
        self, info: RunInfo, *, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> RunInfo:
        query = self._call(
            "run_start",
            "%s::text, %s::bytea, %s::text, %s::text, %s::bytea, %s::bigint, %s::bigint, %s::integer",
        )
        run_id, raw, start, lease, keep, sweep = self.start_args(info)
        params = (run_id, raw, idempotency_key, fingerprint, start, lease, keep, sweep)
        while True:
            ((kind, raw, last),) = await self._fetch(query, params)
            if kind == 0:
                raise IdempotencyMismatch("This Idempotency-Key was used with another request body")
            if kind == 2:
                return info
            seen = self._decode(raw)
            if kind == 1:
                return seen
            await self._end_lost(seen, last)  # the repeat attaches to its end; then look again

    def start_args(self, info: RunInfo) -> tuple[Any, ...]:
        """What `run_start()` is given to start `info` with no idempotency key, but the
        key and fingerprint: the store's `begin_turn()` starts a turn's run with these."""
        keep = _micros(LOST_RUN_RETENTION)
        self._starts += 1
        sweep = _SWEEP_BATCH if self._starts % _SWEEP_EVERY == 1 else 0
        return info.id, _encode_info(info), start_frame(info), _micros(self.lease), keep, sweep

    async def append(self, run_id: str, frames: Sequence[bytes], *, max_bytes: int) -> None:
        if frames:
            query = self._call("run_append", "%s::text, %s::bytea[], %s::bigint, %s::bigint, %s::bigint")
            params = (run_id, list(frames), max_bytes, _micros(self.lease), _micros(LOST_RUN_RETENTION))
            await self._fetch(query, params)

    async def append_chunk(self, run_id: str, chunk: bytes, count: int, *, max_bytes: int) -> None:
        # one row a frame, so reads and trims address frames by number in SQL
        await self.append(run_id, split_frames(chunk), max_bytes=max_bytes)

    async def finish(
        self, info: RunInfo, frames: Sequence[bytes] | None, *, max_bytes: int, retention: float
    ) -> None:
        query = self._call(
            "run_finish", "%s::text, %s::bytea, %s::text, %s::bytea[], %s::bigint, %s::bigint"
        )
        await self._fetch(query, self.finish_args(info, frames, max_bytes=max_bytes, retention=retention))

    def finish_args(
        self, info: RunInfo, frames: Sequence[bytes] | None, *, max_bytes: int, retention: float
    ) -> tuple[Any, ...]:
        """What `run_finish()` is given to end `info`, for a caller that ends it in a
        statement of its own (the store's `end_turn()`); the run is unwatched now."""
        if frames is None:
            frames = end_frames(info, 2)
        # forgotten first, so the watch cannot take the end for a cancel from elsewhere
        self.unwatch(info.id)
        return info.id, _encode_info(info), info.status, list(frames), max_bytes, _micros(retention)

    # --- reads, by any process ------------------------------------------------------------

    async def _state(self, run_id: str, after: int | None) -> _State | None:
        """The run as it is; a run whose lease lapsed is ended first, as `worker_lost`."""
        while True:
            rows = await self._fetch(self._sql["state"], {"id": run_id, "after": after})
            if not rows:
                return None
            state = _State(*rows[0])
            if not state.lapsed:
                return state
            await self._end_lost(self._decode(state.info), state.last)

    async def _end_lost(self, info: RunInfo, last: int) -> None:
        ended, frames = worker_lost(info, last + 1)
        query = self._call(
            "run_lost", "%s::text, %s::bytea, %s::text, %s::integer, %s::bytea[], %s::bigint"
        )
        params = (info.id, _encode_info(ended), ended.status, last, frames, _micros(LOST_RUN_RETENTION))
        # one reader wins; every one of them then reads the run as it ended
        await self._fetch(query, params)

    async def get(self, run_id: str) -> RunInfo | None:
        state = await self._state(run_id, None)
        return self._decode(state.info) if state is not None else None

    async def read(self, run_id: str, after: int, *, wait: float) -> JournalSlice | None:
        deadline = time.monotonic() + wait
        while True:
            with self._listener.waiting(run_id) as changed:
                listening = wait > 0 and await self._listener.ready(min(wait, self._timeout))
                state = await self._state(run_id, after)
                if state is None:
                    return None
                if state.frames is None:
                    raise JournalGone(
                        f"Events {after + 1} to {state.dropped} of run {run_id!r} were dropped to keep "
                        "its journal within max_run_journal_bytes"
                    )
                ended = state.status != "running"
                left = deadline - time.monotonic()
                if state.frames or ended or left <= 0:
                    return JournalSlice(state.frames, after + 1, ended)
                # woken by a NOTIFY; or when the lease would lapse, since a dead worker sends none
                pause = min(left, state.lease_left / 1_000_000 + 0.05)
                with anyio.move_on_after(pause if listening else min(pause, _FALLBACK_POLL)):
                    await changed.wait()

    # --- cancels and leases -------------------------------------------------------------------

    async def cancel(self, run_id: str) -> RunInfo | None:
        state = await self._state(run_id, None)
        if state is None:
            return None
        if state.status == "running":
            await self._fetch(self._sql["cancel"], (run_id,))
        self._watch.fire(run_id)
        return self._decode(state.info)

    def watch(self, run_id: str, on_cancel: Callable[[], None]) -> None:
        self._listener.start()
        self._watch.watch(run_id, on_cancel)

    def unwatch(self, run_id: str) -> None:
        self._watch.unwatch(run_id)

    def _gap(self) -> None:
        self._missed = True

    async def _poll(self, run_ids: list[str], renew: bool) -> list[str]:
        if not renew and not self._missed and self._listener.listening:
            return []  # cancels come by NOTIFY
        self._missed = False
        params = {
            "ids": run_ids,
            "lease": _micros(self.lease) if renew else None,
            "keep": _micros(LOST_RUN_RETENTION),
        }
        try:
            rows = await self._fetch(self._sql["poll"], params)
        except StoreError:
            self._missed = True
            raise
        return [run_id for (run_id,) in rows]

    async def aclose(self) -> None:
        await self._watch.aclose()
        await self._listener.aclose()

    # --- clients following ------------------------------------------------------------------------

    async def touch(self, run_id: str) -> None:
        query = f"UPDATE {self._prefix}.runs SET touched_at = %s WHERE id = %s"
        await self._fetch(query, (_micros(time.time()), run_id))

    async def touched_since(self, run_id: str, moment: float) -> bool:
        query = f"SELECT touched_at FROM {self._prefix}.runs WHERE id = %s"
        rows = await self._fetch(query, (run_id,))
        return bool(rows) and rows[0][0] >= moment * 1_000_000
