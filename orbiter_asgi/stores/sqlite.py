"""SQLite session store: `sqlite:///orbiter.db`, persistent on one machine.

The standard library `sqlite3` first runs on the event loop itself, on a
connection that never waits for a lock: a WAL read, or a short write that
finds the file free, takes tens of microseconds, less than a hop to a
thread. When another process holds the write lock, the call moves to a
worker thread (`anyio.to_thread`, a small pool of connections) that waits
there for up to `timeout`, so the loop never blocks on a busy file. The
loop's connection does not checkpoint the WAL itself (that fsyncs the
database); a worker thread does, every ten thousand changed rows.
A chat turn is two transactions: `begin_turn` takes the session's lease,
reads what the history cache lacks and stores the user's message;
`end_turn` stores the answer and drops the lease.
The file is in WAL mode with `synchronous=NORMAL`: a commit is in the WAL
before the call returns, so an acknowledged append survives the process
being killed (even with SIGKILL); only a power loss can take back the last
commits, which `?synchronous=FULL` prevents at an fsync per commit.
Every write is one `BEGIN IMMEDIATE` transaction, so several worker
processes share one file and wait (`busy_timeout`) rather than fail. The
schema is versioned with `PRAGMA user_version`; opening an older file
upgrades it, a newer or foreign one is refused with a 503.

URL: `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`, with
options `?timeout=5` (seconds to wait for a busy file), `?pool=4`,
`?synchronous=NORMAL|FULL`, `?lock_ttl=30` and `?lock_wait=300` (turn lock),
`?run_lease=10` (seconds a run whose worker died stays `running` at most,
before a reader ends it as `worker_lost`), `?history_cache=100000`
(messages of recent histories kept in this process; 0 keeps none).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import msgspec

from ..exceptions import ConflictError, OrbiterError, SessionNotFound, StoreError
from ..models import Message, RunInfo, Session, SessionSummary
from ._batch import Batch, Pending, settle
from ._history_cache import DEFAULT_CACHED_MESSAGES, HistoryCache, Known, first_unknown, window_start
from ._lease import LeaseLock
from ._records import (
    decode_message,
    decode_metadata,
    encode_message,
    encode_metadata,
    from_micros,
    micros,
    split_options,
    stamp,
)
from .base import DEFAULT_PAGE_SIZE, OpenTurn, Page, RunEnd, decode_cursor, new_session_id, utcnow
from .journal import RunJournal, end_frames
from .sqlite_journal import SQLiteJournal

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")

APPLICATION_ID = 0x4F524254  # "ORBT": marks a file as ours

# Step N upgrades a file from user_version N to N + 1; never edit a released step.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            agent_name TEXT,
            metadata TEXT NOT NULL,
            message_count INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX sessions_by_created ON sessions (created_at, id)",
        "CREATE INDEX sessions_by_agent ON sessions (agent_name, created_at, id)",
        """CREATE TABLE messages (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE turn_locks (
            session_id TEXT PRIMARY KEY,
            token TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            process TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
    # sessions gain a title; rows of older files read as ""
    ("ALTER TABLE sessions ADD COLUMN title TEXT NOT NULL DEFAULT ''",),
    # the run journal (sqlite_journal.py): runs, and the SSE frames each one sent.
    # `runs` keeps its rowid: a record holds the run's whole output, too big a
    # row for WITHOUT ROWID; frames are clustered by run, so a resume reads
    # neighbouring pages.
    (
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            info TEXT NOT NULL,
            status TEXT NOT NULL,
            idempotency_key TEXT,
            fingerprint TEXT NOT NULL DEFAULT '',
            dropped INTEGER NOT NULL DEFAULT 0,
            count INTEGER NOT NULL DEFAULT 0,
            size INTEGER NOT NULL DEFAULT 0,
            lease_until INTEGER NOT NULL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            touched_at INTEGER NOT NULL DEFAULT 0,
            expires_at INTEGER NOT NULL
        )""",
        "CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (idempotency_key)",
        "CREATE INDEX runs_by_expiry ON runs (expires_at)",
        """CREATE TABLE run_frames (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            body BLOB NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_OPTIONS = ("timeout", "pool", "synchronous", "lock_ttl", "lock_wait", "run_lease", "history_cache")
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_CHECKPOINT_EVERY = 10_000  # rows changed on the loop's connection between WAL checkpoints (a WAL of some MB)
_SESSION_COLUMNS = "id, agent_name, title, metadata, message_count, created_at, updated_at"

_process_ids: dict[int, str] = {}

# what `begin_turn`'s transaction found: the session's incarnation (its
# `created_at`), its length, and messages `first` to that length
_Begun = tuple[int, int, int, list[Message]]


def _process_id() -> str:
    """Tells this process from an earlier one that had the same pid."""
    pid = os.getpid()
    if pid not in _process_ids:
        _process_ids[pid] = uuid.uuid4().hex
    return _process_ids[pid]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _path_of(url: str) -> str:
    rest = url.partition("://")[2].partition("?")[0]
    if not rest.startswith("/") or rest == "/":
        raise ValueError(
            f"SQLite URLs look like sqlite:///relative.db or sqlite:////abs.db, not {url!r}"
        )
    return rest[1:]


class _Row:
    """One `sessions` row, decoded."""

    __slots__ = ("agent_name", "created_at", "id", "message_count", "metadata", "title", "updated_at")

    def __init__(self, row: tuple[Any, ...]) -> None:
        (
            self.id,
            self.agent_name,
            self.title,
            metadata,
            self.message_count,
            created_at,
            updated_at,
        ) = row
        self.metadata = decode_metadata(metadata)
        self.created_at = from_micros(created_at)
        self.updated_at = from_micros(updated_at)

    def session(self, messages: list[Message]) -> Session:
        return Session(
            id=self.id,
            agent_name=self.agent_name,
            title=self.title,
            metadata=self.metadata,
            messages=messages,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def summary(self) -> SessionSummary:
        return SessionSummary(
            id=self.id,
            agent_name=self.agent_name,
            title=self.title,
            metadata=self.metadata,
            message_count=self.message_count,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


def _select_session(conn: sqlite3.Connection, session_id: str) -> _Row | None:
    row = conn.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,))
    found = row.fetchone()
    return _Row(found) if found is not None else None


def _select_messages(
    conn: sqlite3.Connection, session_id: str, first: int = 0, end: int | None = None
) -> list[Message]:
    """Messages `first` to `end` (the last, when None) of a history."""
    rows = conn.execute(
        "SELECT body FROM messages WHERE session_id = ? AND seq >= ? AND seq < ? ORDER BY seq",
        (session_id, first, end if end is not None else 2**62),
    ).fetchall()
    return [decode_message(body) for (body,) in rows]


def _insert_messages(conn: sqlite3.Connection, session_id: str, count: int, bodies: list[str]) -> None:
    conn.executemany(
        "INSERT INTO messages (session_id, seq, body) VALUES (?, ?, ?)",
        [(session_id, count + i, body) for i, body in enumerate(bodies)],
    )


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()


class _Transaction:
    """`with _Transaction(conn, immediate=True):` BEGIN ... COMMIT, ROLLBACK on error.

    Inside a transaction already open (a batch of writes, `_apply`) it adds
    nothing: the batch commits, or undoes, the work of all its calls.
    """

    __slots__ = ("conn", "mode", "nested")

    def __init__(self, conn: sqlite3.Connection, *, immediate: bool) -> None:
        self.conn = conn
        self.mode = "IMMEDIATE" if immediate else "DEFERRED"
        self.nested = False

    def __enter__(self) -> sqlite3.Connection:
        if self.conn.in_transaction:
            self.nested = True
        else:
            self.conn.execute(f"BEGIN {self.mode}")
        return self.conn

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if self.nested:
            return
        if kind is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.rollback()


class _Undone(Exception):
    """A call of a batch failed: the batch was rolled back, to be run call by call."""


def _apply(conn: sqlite3.Connection, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    """A batch of writes in one transaction; each call's result.

    Calls almost never fail (a session deleted under a turn, a reused
    idempotency key): when one does, the batch is undone and each call runs
    again in a transaction of its own, so one call's error undoes only its
    own work. That costs less than a savepoint around every call."""
    try:
        with _Transaction(conn, immediate=True):
            outcomes: list[Any] = []
            for fn, args in calls:
                try:
                    outcomes.append(fn(conn, *args))
                except (OrbiterError, msgspec.DecodeError) as exc:
                    raise _Undone from exc
            return outcomes
    except _Undone:
        pass
    outcomes = []
    for fn, args in calls:
        try:
            with _Transaction(conn, immediate=True):
                outcomes.append(fn(conn, *args))
        except (OrbiterError, msgspec.DecodeError) as exc:
            outcomes.append(exc)
    return outcomes


class SQLiteStore:
    """Sessions in one SQLite file, shared by the worker processes of one machine.

    Its run journal, `runs`, lives in the same file (`SQLiteJournal`).

    ```python
    app = create_app(store="sqlite:///orbiter.db")
    app = create_app(store=SQLiteStore("sqlite:///orbiter.db", timeout=10))
    ```

    Parameters:
        url: `sqlite:///relative.db` or `sqlite:////absolute.db`, options as query.
        timeout: seconds to wait for another process's write before a 503.
        pool: connections (and so threads) used at once.
        synchronous: `NORMAL` (survives process crashes) or `FULL` (also power loss).
        lock_ttl: seconds a crashed worker's turn lock outlives it at most.
        lock_wait: seconds a turn waits for a busy session before a 503.
        run_lease: seconds the lease of a run this process runs lasts
            unless renewed (every third of that); a run whose worker died is
            ended as `worker_lost` by a reader after at most that long.
        history_cache: messages of recent histories this process keeps, so
            a turn reads only the messages it has not seen (0: none).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None = None,
        pool: int | None = None,
        synchronous: str | None = None,
        lock_ttl: float | None = None,
        lock_wait: float | None = None,
        run_lease: float | None = None,
        history_cache: int | None = None,
    ) -> None:
        _, options = split_options(url, _OPTIONS)
        self.path = _path_of(url)
        self.timeout = float(timeout if timeout is not None else options.get("timeout", 5.0))
        self.pool_size = int(pool if pool is not None else options.get("pool", 4))
        self.synchronous = (synchronous or options.get("synchronous", "NORMAL")).upper()
        if self.synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be NORMAL, FULL or EXTRA")
        assert self.pool_size >= 1 and self.timeout >= 0
        self._idle: list[sqlite3.Connection] = []
        self._inline: sqlite3.Connection | None = None  # the loop's own: never waits for a lock
        self._checkpointed_at = 0  # its `total_changes` at the last checkpoint
        self._checkpoint: asyncio.Task[None] | None = None
        self._batch = Batch(self._serve)  # writes of one pass of the loop: one transaction
        self._tasks: set[asyncio.Task[None]] = set()  # batches waiting for a busy file
        cached = history_cache if history_cache is not None else options.get("history_cache")
        self._cache = HistoryCache(int(cached) if cached is not None else DEFAULT_CACHED_MESSAGES)
        self._limiter: anyio.CapacityLimiter | None = None
        self._generation = 0  # bumped by aclose: connections of older generations are closed
        self._host = socket.gethostname()
        self._lease = LeaseLock(
            self._try_lock,
            self._unlock,
            self._renew_locks,
            ttl=float(lock_ttl if lock_ttl is not None else options.get("lock_ttl", 30.0)),
            wait=float(lock_wait if lock_wait is not None else options.get("lock_wait", 300.0)),
        )
        lease = run_lease if run_lease is not None else options.get("run_lease")
        self._journal = SQLiteJournal(
            self._run, _Transaction, write=self._write, lease=float(lease) if lease is not None else None
        )
        self.runs: RunJournal = self._journal

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # --- connections ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._use_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        # Turning a new file to WAL takes a lock SQLite does not wait for (no busy
        # handler): workers opening the file at once get "database is locked". Retry
        # within the store's timeout, as the busy handler would have waited.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if version == SCHEMA_VERSION and app_id == APPLICATION_ID:
            return
        with _Transaction(conn, immediate=True):
            # read again under the write lock: another process may have just migrated
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id != APPLICATION_ID and (app_id != 0 or tables):
                raise StoreError(f"{self.path} is not an orbiter-asgi session database")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has session schema {version}, newer than this orbiter-asgi "
                    f"understands ({SCHEMA_VERSION}); upgrade orbiter-asgi"
                )
            for step in MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _call(
        self, conn: sqlite3.Connection | None, fn: Callable[..., T], args: tuple[Any, ...]
    ) -> tuple[sqlite3.Connection | None, T | BaseException]:
        """Runs in a worker thread: `fn(conn, *args)`, on a fresh connection if needed.

        Returns the connection to keep (None when it was closed) and the
        result or the exception, so the pool stays right whatever happened.
        """
        try:
            if conn is None:
                conn = self._connect()
            return conn, fn(conn, *args)
        except (OrbiterError, msgspec.DecodeError) as exc:
            return conn, exc
        except BaseException as exc:
            # a connection that saw a driver error may be unusable (file replaced, corrupt)
            if conn is not None:
                conn.close()
            return None, exc

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)` on the loop's connection; in a worker thread when
        the file is busy (or the loop's connection is not open yet)."""
        conn = self._inline
        if conn is not None:
            try:
                result = fn(conn, *args)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in _BUSY:
                    self._inline = None
                    conn.close()
                    raise StoreError(f"SQLite store {self.path} failed: {exc}") from exc
            except sqlite3.Error as exc:
                self._inline = None
                conn.close()
                raise StoreError(f"SQLite store {self.path} failed: {exc}") from exc
            except msgspec.DecodeError as exc:
                raise StoreError(f"SQLite store {self.path} holds unreadable data: {exc}") from None
            else:
                if conn.total_changes - self._checkpointed_at >= _CHECKPOINT_EVERY:
                    self._start_checkpoint(conn)
                return result
        result = await self._in_thread(fn, args)
        if self._inline is None and self._limiter is not None:
            await self._open_inline()
        return result

    async def _in_thread(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.pool_size)
        async with self._limiter:
            generation = self._generation
            conn = self._idle.pop() if self._idle else None
            kept, result = await anyio.to_thread.run_sync(self._call, conn, fn, args)
            if kept is not None:
                if generation == self._generation:
                    self._idle.append(kept)
                else:
                    kept.close()
        if isinstance(result, BaseException):
            if isinstance(result, sqlite3.Error):
                raise StoreError(f"SQLite store {self.path} failed: {result}") from result
            if isinstance(result, msgspec.DecodeError):
                raise StoreError(f"SQLite store {self.path} holds unreadable data: {result}")
            raise result
        return result

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)`, a write: with the others of this pass of the event
        loop, in one transaction (`_apply`), each in a savepoint of its own."""
        if self._inline is None:
            return await self._run(fn, *args)
        outcome: T = await self._batch.call((fn, args))
        return outcome

    def _serve(self, pending: Pending) -> None:
        calls = [item for item, _ in pending]
        conn = self._inline
        if conn is not None:
            try:
                outcomes = _apply(conn, calls)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in _BUSY:
                    self._drop_inline(conn)
                    settle(pending, [self._failure(exc)] * len(pending))
                    return
            except sqlite3.Error as exc:  # the file is gone, corrupt, full: none of it was written
                self._drop_inline(conn)
                settle(pending, [self._failure(exc)] * len(pending))
                return
            else:
                settle(pending, [self._failure(o) for o in outcomes])
                if conn.total_changes - self._checkpointed_at >= _CHECKPOINT_EVERY:
                    self._start_checkpoint(conn)
                return
        # the file is busy (or the loop's connection closed): wait for it in a worker thread
        self._background(self._serve_in_thread(pending, calls))

    async def _serve_in_thread(self, pending: Pending, calls: list[Any]) -> None:
        try:
            outcomes = await self._in_thread(_apply, (calls,))
        except Exception as exc:  # StoreError: the file stayed busy, or failed
            outcomes = [exc] * len(pending)
        settle(pending, [self._failure(o) for o in outcomes])

    def _failure(self, outcome: Any) -> Any:
        """A call's outcome as its caller gets it: driver errors as `StoreError`."""
        if isinstance(outcome, msgspec.DecodeError):
            return StoreError(f"SQLite store {self.path} holds unreadable data: {outcome}")
        if isinstance(outcome, sqlite3.Error):
            return StoreError(f"SQLite store {self.path} failed: {outcome}")
        return outcome

    def _drop_inline(self, conn: sqlite3.Connection) -> None:
        self._inline = None
        conn.close()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_inline(self) -> None:
        """Open the loop's connection, in a thread: opening may wait for a migration."""
        generation = self._generation
        try:
            conn = await anyio.to_thread.run_sync(self._connect_inline)
        except (sqlite3.Error, OrbiterError):
            return  # the thread path goes on serving, and tries again next time
        if generation != self._generation or self._inline is not None:
            conn.close()
        else:
            self._inline = conn
            self._checkpointed_at = conn.total_changes

    def _connect_inline(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    def _start_checkpoint(self, conn: sqlite3.Connection) -> None:
        self._checkpointed_at = conn.total_changes
        if self._checkpoint is None or self._checkpoint.done():
            self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint())

    async def _run_checkpoint(self) -> None:
        with contextlib.suppress(StoreError):  # the next one tries again; nothing waits for it
            await self._in_thread(_checkpoint, ())

    async def ping(self) -> None:
        """`SELECT 1` on a pooled connection: the file opens, and a thread is free."""
        await self._run(self._ping)

    @staticmethod
    def _ping(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT 1").fetchone()

    async def aclose(self) -> None:
        await self._journal.aclose()
        await self._lease.aclose()
        if self._checkpoint is not None and not self._checkpoint.done():
            await self._checkpoint
        self._generation += 1
        idle, self._idle = self._idle, []
        if self._inline is not None:
            idle.append(self._inline)
            self._inline = None
        for conn in idle:
            conn.close()
        self._cache.clear()

    # --- sessions --------------------------------------------------------------

    async def create(
        self,
        *,
        agent_name: str | None = None,
        title: str = "",
        metadata: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        session_id = session_id or new_session_id()
        now = micros(utcnow())
        row = (session_id, agent_name, title, encode_metadata(metadata or {}).decode(), 0, now, now)
        return await self._run(self._create, row)

    @staticmethod
    def _create(conn: sqlite3.Connection, row: tuple[Any, ...]) -> Session:
        try:
            conn.execute(f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?,?,?,?,?,?,?)", row)
        except sqlite3.IntegrityError:
            raise ConflictError(f"Session {row[0]!r} already exists") from None
        return _Row(row).session([])

    async def get(self, session_id: str) -> Session:
        return await self._run(self._get, session_id)

    @staticmethod
    def _get(conn: sqlite3.Connection, session_id: str) -> Session:
        with _Transaction(conn, immediate=False):  # one snapshot for the row and its messages
            row = _select_session(conn, session_id)
            if row is None:
                raise SessionNotFound.of(session_id)
            return row.session(_select_messages(conn, session_id))

    async def list(
        self,
        *,
        agent_name: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page:
        after = decode_cursor(cursor) if cursor else None
        key = (micros(after[0]), after[1]) if after else None
        rows = await self._run(self._list, agent_name, limit, key)
        items = [row.summary() for row in rows[:limit]]
        return Page.of(items, more=len(rows) > limit)

    @staticmethod
    def _list(
        conn: sqlite3.Connection, agent_name: str | None, limit: int, key: tuple[int, str] | None
    ) -> builtins.list[_Row]:
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if agent_name is not None:
            where.append("agent_name = ?")
            params.append(agent_name)
        if key is not None:
            where.append("(created_at, id) < (?, ?)")
            params.extend(key)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = conn.execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions {clause} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, limit + 1),
        ).fetchall()
        return [_Row(row) for row in rows]

    async def update(
        self,
        session_id: str,
        *,
        agent_name: str | msgspec.UnsetType | None = msgspec.UNSET,
        title: str | msgspec.UnsetType = msgspec.UNSET,
        metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET,
    ) -> Session:
        changes: dict[str, Any] = {"updated_at": micros(utcnow())}
        if agent_name is not msgspec.UNSET:
            changes["agent_name"] = agent_name
        if title is not msgspec.UNSET:
            changes["title"] = title
        if metadata is not msgspec.UNSET:
            changes["metadata"] = encode_metadata(metadata).decode()
        return await self._run(self._update, session_id, changes)

    @staticmethod
    def _update(conn: sqlite3.Connection, session_id: str, changes: dict[str, Any]) -> Session:
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with _Transaction(conn, immediate=True):
            cursor = conn.execute(
                f"UPDATE sessions SET {assignments} WHERE id = ?", (*changes.values(), session_id)
            )
            if cursor.rowcount == 0:
                raise SessionNotFound.of(session_id)
            row = _select_session(conn, session_id)
            assert row is not None
            return row.session(_select_messages(conn, session_id))

    async def delete(self, session_id: str) -> bool:
        return await self._run(self._delete, session_id)

    @staticmethod
    def _delete(conn: sqlite3.Connection, session_id: str) -> bool:
        with _Transaction(conn, immediate=True):
            deleted = conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount
            conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
        return deleted > 0

    # --- histories ---------------------------------------------------------------

    async def messages(self, session_id: str) -> builtins.list[Message]:
        return await self._run(self._messages, session_id)

    @staticmethod
    def _messages(conn: sqlite3.Connection, session_id: str) -> builtins.list[Message]:
        with _Transaction(conn, immediate=False):
            exists = conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if exists is None:
                raise SessionNotFound.of(session_id)
            return _select_messages(conn, session_id)

    async def history(self, session_id: str, *, agent_name: str | None) -> builtins.list[Message]:
        return await self._run(self._history, session_id, agent_name, micros(utcnow()))

    @staticmethod
    def _history(
        conn: sqlite3.Connection, session_id: str, agent_name: str | None, now: int
    ) -> builtins.list[Message]:
        with _Transaction(conn, immediate=False):
            exists = conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if exists is not None:
                return _select_messages(conn, session_id)
        # new session: create it, unless another process just did
        with _Transaction(conn, immediate=True):
            created = conn.execute(
                f"INSERT OR IGNORE INTO sessions ({_SESSION_COLUMNS}) VALUES (?,?,'','{{}}',0,?,?)",
                (session_id, agent_name, now, now),
            ).rowcount
            return [] if created else _select_messages(conn, session_id)

    async def append(self, session_id: str, messages: Sequence[Message]) -> builtins.list[Message]:
        stored, now = stamp(messages)
        bodies = [encode_message(m).decode() for m in stored]
        await self._run(self._append, session_id, bodies, micros(now))
        return stored

    @staticmethod
    def _append(
        conn: sqlite3.Connection, session_id: str, bodies: builtins.list[str], now: int
    ) -> None:
        with _Transaction(conn, immediate=True):
            row = conn.execute(
                "SELECT message_count FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise SessionNotFound.of(session_id)
            count = row[0]
            _insert_messages(conn, session_id, count, bodies)
            conn.execute(
                "UPDATE sessions SET message_count = ?, updated_at = ? WHERE id = ?",
                (count + len(bodies), now, session_id),
            )

    # --- a chat turn: two transactions ----------------------------------------------

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
        stored, now = stamp(messages)
        bodies = [encode_message(m).decode() for m in stored]
        planted, _ = stamp(seed)
        seed_bodies = [encode_message(m).decode() for m in planted]

        def attempt(token: str) -> Awaitable[_Begun | None]:
            lease = self._lock_row(session_id, token)
            # what the cache holds is read here, under the process's hold on the session
            known = self._cache.known(session_id)
            opening = (agent_name, bodies, seed_bodies, micros(now), known, window, run)
            return self._write(self._begin, lease, *opening)

        token, (incarnation, count, first, read) = await self._lease.acquire(session_id, attempt)
        cache = self._cache
        start = cache.read_from(session_id, incarnation, count, window)
        if start < first:  # the tail the transaction counted on was evicted since
            read = await self._run(_select_messages, session_id, start, first) + read
            first = start
        history = cache.history(session_id, incarnation, count, window, first, read)
        opening = stored
        if count == 0 and planted:  # stored before the opening messages, and shown
            history = planted[window_start(len(planted), window) :]
            opening = [*planted, *stored]
        cache.appended(session_id, incarnation, count, opening, window)
        end = count + len(opening)
        return OpenTurn(session_id, history, stored, token=(token, incarnation, window), end=end)

    def _begin(
        self,
        conn: sqlite3.Connection,
        lease: tuple[Any, ...],
        agent_name: str | None,
        bodies: builtins.list[str],
        seed: builtins.list[str],
        now: int,
        known: Known | None,
        window: int | None,
        run: RunInfo | None,
    ) -> _Begun | None:
        """Take the lease, create the session if new, read what the cache
        lacks, store the opening messages (and start `run`); None while
        another turn holds the session."""
        session_id = lease[0]
        with _Transaction(conn, immediate=True):
            if not self._take(conn, lease):
                return None
            if run is not None:
                self._journal.write_start(conn, run)
            # the history's version and the opening's place in one statement
            row = conn.execute(
                "UPDATE sessions SET message_count = message_count + ?, updated_at = ? WHERE id = ? "
                "RETURNING created_at, message_count",
                (len(bodies), now, session_id),
            ).fetchone()
            if row is None:
                conn.execute(
                    f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?,?,'','{{}}',?,?,?)",
                    (session_id, agent_name, len(seed) + len(bodies), now, now),
                )
                incarnation, count = now, 0
            else:
                incarnation, count = row[0], row[1] - len(bodies)
                if count == 0 and seed:
                    conn.execute(
                        "UPDATE sessions SET message_count = ? WHERE id = ?",
                        (len(seed) + len(bodies), session_id),
                    )
            first = first_unknown(known, incarnation, count, window)
            read = _select_messages(conn, session_id, first) if first < count else []
            if count == 0 and seed:
                bodies = seed + bodies
            _insert_messages(conn, session_id, count, bodies)
        return incarnation, count, first, read

    async def end_turn(
        self, turn: OpenTurn, messages: Sequence[Message], *, run: RunEnd | None = None
    ) -> builtins.list[Message]:
        token, incarnation, window = turn.token
        stored, now = stamp(messages)
        bodies = [encode_message(m).decode() for m in stored]
        session_id = turn.session_id
        if run is not None:
            self._journal.unwatch(run.info.id)  # first, as `finish` does
        try:
            count = await self._lease.release(
                session_id, lambda: self._write(self._end, session_id, token, bodies, micros(now), run)
            )
        except BaseException:
            self._cache.forget(session_id)
            raise
        if count < 0:
            self._cache.forget(session_id)
            raise SessionNotFound.of(session_id)
        if stored:
            self._cache.appended(session_id, incarnation, count, stored, window)
        return stored

    def _end(
        self,
        conn: sqlite3.Connection,
        session_id: str,
        token: str,
        bodies: builtins.list[str],
        now: int,
        run: RunEnd | None,
    ) -> int:
        """Store the turn's answer, drop its lease (and end `run`); the history's
        length before the answer, -1 when the session was deleted meanwhile."""
        with _Transaction(conn, immediate=True):
            if run is not None:
                frames = run.frames if run.frames is not None else end_frames(run.info, 2)
                self._journal.write_finish(conn, run.info, frames, run.max_bytes, run.retention)
            count = 0
            if bodies:
                row = conn.execute(
                    "UPDATE sessions SET message_count = message_count + ?, updated_at = ? WHERE id = ? "
                    "RETURNING message_count",
                    (len(bodies), now, session_id),
                ).fetchone()
                count = -1 if row is None else row[0] - len(bodies)
                if row is not None:
                    _insert_messages(conn, session_id, count, bodies)
            conn.execute(
                "DELETE FROM turn_locks WHERE session_id = ? AND token = ?", (session_id, token)
            )
        return count

    # --- the turn lock -------------------------------------------------------------

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """Serializes turns on one session across the processes sharing the file."""
        return self._lease.hold(session_id)

    def _lock_row(self, session_id: str, token: str) -> tuple[Any, ...]:
        expires = int((time.time() + self._lease.ttl) * 1_000_000)
        return (session_id, token, self._host, os.getpid(), _process_id(), expires)

    async def _try_lock(self, session_id: str, token: str) -> bool:
        return await self._run(self._take_lock, self._lock_row(session_id, token))

    def _take_lock(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> bool:
        with _Transaction(conn, immediate=True):
            return self._take(conn, row)

    def _take(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> bool:
        """In a write transaction: take the lease `row` unless a live turn holds it."""
        taken = conn.execute(
            "INSERT INTO turn_locks VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO NOTHING", row
        ).rowcount
        if taken:
            return True
        holder = conn.execute(
            "SELECT host, pid, process, expires_at FROM turn_locks WHERE session_id = ?",
            (row[0],),
        ).fetchone()
        if holder is not None and not self._stale(*holder):
            return False
        conn.execute("INSERT OR REPLACE INTO turn_locks VALUES (?, ?, ?, ?, ?, ?)", row)
        return True

    def _stale(self, host: str, pid: int, process: str, expires_at: int) -> bool:
        if expires_at < time.time() * 1_000_000:
            return True
        if host != self._host:
            return False  # another machine's process: only its expiry tells
        if pid == os.getpid():
            # our in-process lock is held, so a lease in our name is an earlier
            # process's that had our pid
            return process != _process_id()
        return not _alive(pid)

    async def _unlock(self, session_id: str, token: str) -> None:
        await self._run(self._delete_lock, session_id, token)

    @staticmethod
    def _delete_lock(conn: sqlite3.Connection, session_id: str, token: str) -> None:
        conn.execute(
            "DELETE FROM turn_locks WHERE session_id = ? AND token = ?", (session_id, token)
        )

    async def _renew_locks(self, held: Mapping[str, str]) -> None:
        expires = int((time.time() + self._lease.ttl) * 1_000_000)
        rows = [(expires, session_id, token) for session_id, token in held.items()]
        await self._run(self._extend_locks, rows)

    @staticmethod
    def _extend_locks(conn: sqlite3.Connection, rows: builtins.list[tuple[int, str, str]]) -> None:
        with _Transaction(conn, immediate=True):
            conn.executemany(
                "UPDATE turn_locks SET expires_at = ? WHERE session_id = ? AND token = ?", rows
            )

