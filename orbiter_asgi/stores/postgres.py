"""PostgreSQL session store: `postgresql://user:pass@host:5432/db`, shared by every worker of every machine.

psycopg 3 on asyncio, with a `psycopg_pool.AsyncConnectionPool` of
autocommit connections. Every call is one statement (a server-side
function where it must check and change), so atomic; a chat turn is two:
`begin_turn` (which also starts a JSON turn's run) and `end_turn` (which
also ends it). The statements called in one pass of the event loop go
out together on one pooled connection in pipeline mode (`_exchange`):
one write and one read for all of them, each followed by a Sync of its
own, so each is still its own transaction. Run followers and cancels
travel by LISTEN/NOTIFY on one connection of the store's own
(`postgres_journal.py`).

Tables live in one Postgres schema, `orbiter` unless `?schema=` names
another (created when missing), so they never meet an application's own
tables in `public`. The schema is versioned (`schema_version`) and upgraded
in place under an advisory lock, so workers starting at once migrate once;
a schema newer than this code, or a schema holding other tables, is
refused with a 503. Timestamps are integer microseconds, as in SQLite;
JSON (metadata, messages, runs) and titles are `bytea`, kept byte for byte
whatever the database encoding, and with the NUL characters that Postgres
`text` and `jsonb` refuse. Ids and agent names are `text` in the "C"
collation, so listings order ties by bytes, as the other stores do; they
cannot hold NUL (a 400).

URL options: `?schema=orbiter`, `?pool=N` (or `?pool_min=2&pool_max=10`),
`?timeout=5` (seconds to connect, to get a pooled connection, and for a
statement, before a 503), `?lock_ttl=30` and `?lock_wait=300` (turn lock),
`?run_lease=10` (seconds a run whose worker died stays `running` at most),
`?history_cache=100000` (messages of recent histories kept in this
process, so a turn reads only what changed; 0 keeps none). Other query
options (`sslmode=require`, `application_name=...`) go to libpq.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import math
import re
import select
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple, TypeVar

import anyio
import msgspec

from ..exceptions import ConflictError, OrbiterError, RequestError, SessionNotFound, StoreError
from ..models import Message, RunInfo, Session, SessionSummary
from ._batch import Batch, Pending, settle
from ._history_cache import DEFAULT_CACHED_MESSAGES, HistoryCache, Known
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
from .journal import RunJournal
from .postgres_journal import JOURNAL_MIGRATION, Params, PostgresJournal

try:
    import psycopg
    from psycopg import generators, pq
    from psycopg.abc import PQGen
    from psycopg.abc import Transformer as Adapting
    from psycopg.adapt import PyFormat, Transformer
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq.abc import PGconn, PGresult
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The PostgreSQL session store needs psycopg: pip install 'orbiter-asgi[postgres]'"
    ) from exc

__all__ = ["DEFAULT_SCHEMA", "MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]

T = TypeVar("T")

DEFAULT_SCHEMA = "orbiter"

# Step N upgrades a schema from version N to N + 1; never edit a released step.
# `{s}` is the quoted schema, `{channel}` the quoted NOTIFY channel.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # lease times come from the server's clock, so workers' clocks may disagree
        """CREATE FUNCTION {s}.now_us() RETURNS bigint LANGUAGE sql VOLATILE AS
        $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint $$""",
        """CREATE TABLE {s}.sessions (
            id text COLLATE "C" PRIMARY KEY,
            agent_name text COLLATE "C",
            title bytea NOT NULL,
            metadata bytea NOT NULL,
            message_count integer NOT NULL DEFAULT 0,
            created_at bigint NOT NULL,
            updated_at bigint NOT NULL
        )""",
        # listing is keyset pagination, newest first: a backward scan of one of these
        "CREATE INDEX sessions_by_created ON {s}.sessions (created_at, id)",
        "CREATE INDEX sessions_by_agent ON {s}.sessions (agent_name, created_at, id)",
        """CREATE TABLE {s}.messages (
            session_id text COLLATE "C" NOT NULL,
            seq integer NOT NULL,
            body bytea NOT NULL,
            PRIMARY KEY (session_id, seq)
        )""",
        """CREATE TABLE {s}.turn_locks (
            session_id text COLLATE "C" PRIMARY KEY,
            token text NOT NULL,
            expires_at bigint NOT NULL
        )""",
        # A turn's opening in one round trip. A function rather than one statement of
        # CTEs: the steps depend on each other (nothing happens unless the lease is
        # taken; the seed goes in only when the history, read after a possible create,
        # is empty; what is read depends on the length found), and a statement's CTEs
        # all run on one snapshot, blind to each other's writes. The cache's tail
        # (`p_tail_*`, its incarnation, first and end) is judged here as
        # `HistoryCache.read_from` judges it, so only missing messages come back.
        # With `p_run_id`, the turn's run is started too, as `run_start` without a
        # key (made by the journal's step; PL/pgSQL looks functions up when called):
        # if that fails, so does the turn, and no lease is left behind.
        """CREATE FUNCTION {s}.begin_turn(
            p_id text, p_agent text, p_token text, p_ttl bigint, p_now bigint, p_window integer,
            p_tail_of bigint, p_tail_start integer, p_tail_end integer,
            p_seed bytea[], p_messages bytea[],
            p_run_id text, p_run_info bytea, p_run_start bytea, p_run_lease bigint, p_run_keep bigint,
            p_run_sweep integer,
            OUT o_taken boolean, OUT o_created bigint, OUT o_count integer, OUT o_seeded boolean,
            OUT o_first integer, OUT o_bodies bytea[])
        LANGUAGE plpgsql AS $$
        DECLARE
            v_want integer; v_next integer;
        BEGIN
            INSERT INTO {s}.turn_locks AS l (session_id, token, expires_at)
                VALUES (p_id, p_token, {s}.now_us() + p_ttl)
                ON CONFLICT (session_id) DO UPDATE
                SET token = excluded.token, expires_at = excluded.expires_at
                WHERE l.expires_at < {s}.now_us() OR l.token = excluded.token;
            o_taken := FOUND;
            IF NOT o_taken THEN
                RETURN;
            END IF;
            IF p_run_id IS NOT NULL THEN
                PERFORM {s}.run_start(p_run_id, p_run_info, NULL, '', p_run_start,
                                      p_run_lease, p_run_keep, p_run_sweep);
            END IF;
            SELECT message_count, created_at INTO o_count, o_created
                FROM {s}.sessions WHERE id = p_id FOR UPDATE;
            IF NOT FOUND THEN
                INSERT INTO {s}.sessions (id, agent_name, title, metadata, created_at, updated_at)
                    VALUES (p_id, p_agent, ''::bytea, '\\x7b7d'::bytea, p_now, p_now)
                    ON CONFLICT (id) DO NOTHING;
                SELECT message_count, created_at INTO STRICT o_count, o_created
                    FROM {s}.sessions WHERE id = p_id FOR UPDATE;
            END IF;
            o_seeded := o_count = 0 AND cardinality(p_seed) > 0;
            IF o_seeded THEN
                INSERT INTO {s}.messages (session_id, seq, body)
                    SELECT p_id, u.n - 1, u.body FROM unnest(p_seed) WITH ORDINALITY AS u(body, n);
                v_next := cardinality(p_seed);
                o_first := 0;  -- the history is the seed, which the caller holds
            ELSE
                v_next := o_count;
                v_want := CASE WHEN p_window IS NULL THEN 0 ELSE greatest(0, o_count - p_window) END;
                IF p_tail_of IS NOT DISTINCT FROM o_created
                        AND p_tail_start <= v_want AND p_tail_end <= o_count THEN
                    o_first := p_tail_end;
                ELSE
                    o_first := v_want;
                END IF;
                IF o_first < o_count THEN
                    o_bodies := ARRAY(SELECT body FROM {s}.messages
                        WHERE session_id = p_id AND seq >= o_first AND seq < o_count ORDER BY seq);
                END IF;
            END IF;
            IF o_seeded OR cardinality(p_messages) > 0 THEN
                INSERT INTO {s}.messages (session_id, seq, body)
                    SELECT p_id, v_next + u.n - 1, u.body
                    FROM unnest(p_messages) WITH ORDINALITY AS u(body, n);
                UPDATE {s}.sessions SET message_count = v_next + cardinality(p_messages), updated_at = p_now
                    WHERE id = p_id;
            END IF;
        END $$""",
        # A turn's end: its messages appended after whatever is there, its lease
        # released, and with `p_run_id` its run ended (`run_finish`), in one round trip
        # and one transaction: an answer not stored leaves the run running, for its
        # caller to end as failed. o_count NULL: the session was deleted meanwhile.
        """CREATE FUNCTION {s}.end_turn(
            p_id text, p_token text, p_now bigint, p_messages bytea[],
            p_run_id text, p_run_info bytea, p_run_status text, p_run_frames bytea[],
            p_run_max_bytes bigint, p_run_keep bigint,
            OUT o_count integer, OUT o_created bigint)
        LANGUAGE plpgsql AS $$
        BEGIN
            IF cardinality(p_messages) > 0 THEN
                UPDATE {s}.sessions
                    SET message_count = message_count + cardinality(p_messages), updated_at = p_now
                    WHERE id = p_id
                    RETURNING message_count - cardinality(p_messages), created_at INTO o_count, o_created;
                IF FOUND THEN
                    INSERT INTO {s}.messages (session_id, seq, body)
                        SELECT p_id, o_count + u.n - 1, u.body
                        FROM unnest(p_messages) WITH ORDINALITY AS u(body, n);
                END IF;
            END IF;
            DELETE FROM {s}.turn_locks WHERE session_id = p_id AND token = p_token;
            IF p_run_id IS NOT NULL THEN
                PERFORM {s}.run_finish(p_run_id, p_run_info, p_run_status, p_run_frames,
                                       p_run_max_bytes, p_run_keep);
            END IF;
        END $$""",
    ),
    # the run journal (postgres_journal.py): runs, and the SSE frames each one sent
    JOURNAL_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)

_OPTIONS = (
    "schema",
    "pool",
    "pool_min",
    "pool_max",
    "timeout",
    "lock_ttl",
    "lock_wait",
    "run_lease",
    "history_cache",
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_GRACE = 0.25  # the client's deadline trails the server's statement_timeout, which ends cleaner
_STALE_RETRIES = 8

_NO_RUN_START = (None,) * 6  # `begin_turn()`'s run arguments when it starts none
_NO_RUN_END = (None,) * 6  # `end_turn()`'s, when it ends none

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")
_BINARY = pq.Format.BINARY
_BINARY_LIST = PyFormat.BINARY
_AUTO = PyFormat.AUTO
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR

_SESSION_COLUMNS = "id, agent_name, title, metadata, message_count, created_at, updated_at"
_HISTORY = "ARRAY(SELECT m.body FROM {s}.messages m WHERE m.session_id = s.id ORDER BY m.seq)"
_SQL: dict[str, str] = {
    "create": f"""INSERT INTO {{s}}.sessions ({_SESSION_COLUMNS}) VALUES (%s, %s, %s, %s, 0, %s, %s)
        ON CONFLICT (id) DO NOTHING RETURNING id""",
    "get": f"SELECT {_SESSION_COLUMNS}, {_HISTORY} FROM {{s}}.sessions s WHERE id = %s",
    "messages": f"SELECT {_HISTORY} FROM {{s}}.sessions s WHERE id = %s",
    "update": f"""UPDATE {{s}}.sessions s SET
            agent_name = CASE WHEN %(set_agent)s THEN %(agent)s::text ELSE agent_name END,
            title = CASE WHEN %(set_title)s THEN %(title)s::bytea ELSE title END,
            metadata = CASE WHEN %(set_metadata)s THEN %(metadata)s::bytea ELSE metadata END,
            updated_at = %(now)s
        WHERE id = %(id)s RETURNING {_SESSION_COLUMNS}, {_HISTORY}""",
    "delete": """WITH gone AS (DELETE FROM {s}.sessions WHERE id = %(id)s RETURNING id),
            history AS (DELETE FROM {s}.messages WHERE session_id = %(id)s)
        SELECT count(*) FROM gone""",
    # a new session is made; a concurrent maker wins harmlessly (DO NOTHING)
    "history": f"""WITH made AS (
            INSERT INTO {{s}}.sessions ({_SESSION_COLUMNS})
            VALUES (%(id)s, %(agent)s, ''::bytea, '\\x7b7d'::bytea, 0, %(now)s, %(now)s)
            ON CONFLICT (id) DO NOTHING)
        SELECT ARRAY(SELECT body FROM {{s}}.messages WHERE session_id = %(id)s ORDER BY seq)""",
    # the row lock of the UPDATE orders concurrent appends; each numbers on from the last
    "append": """WITH s AS (
            UPDATE {s}.sessions SET message_count = message_count + cardinality(%(bodies)s::bytea[]),
                updated_at = %(now)s
            WHERE id = %(id)s RETURNING message_count - cardinality(%(bodies)s::bytea[]) AS first),
        added AS (
            INSERT INTO {s}.messages (session_id, seq, body)
            SELECT %(id)s, s.first + u.n - 1, u.body
            FROM s, unnest(%(bodies)s::bytea[]) WITH ORDINALITY AS u(body, n))
        SELECT first FROM s""",
    "slice": """SELECT body FROM {s}.messages
        WHERE session_id = %s AND seq >= %s AND seq < %s ORDER BY seq""",
    "list": f"SELECT {_SESSION_COLUMNS} FROM {{s}}.sessions ORDER BY created_at DESC, id DESC LIMIT %s",
    "list_after": f"""SELECT {_SESSION_COLUMNS} FROM {{s}}.sessions WHERE (created_at, id) < (%s, %s)
        ORDER BY created_at DESC, id DESC LIMIT %s""",
    "list_agent": f"""SELECT {_SESSION_COLUMNS} FROM {{s}}.sessions WHERE agent_name = %s
        ORDER BY created_at DESC, id DESC LIMIT %s""",
    "list_agent_after": f"""SELECT {_SESSION_COLUMNS} FROM {{s}}.sessions
        WHERE agent_name = %s AND (created_at, id) < (%s, %s)
        ORDER BY created_at DESC, id DESC LIMIT %s""",
    "take_lock": """INSERT INTO {s}.turn_locks AS l (session_id, token, expires_at)
        VALUES (%(id)s, %(token)s, {s}.now_us() + %(ttl)s::bigint)
        ON CONFLICT (session_id) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at
        WHERE l.expires_at < {s}.now_us() OR l.token = excluded.token
        RETURNING 1""",
    "release_lock": "DELETE FROM {s}.turn_locks WHERE session_id = %s AND token = %s",
    "renew_locks": """UPDATE {s}.turn_locks SET expires_at = {s}.now_us() + %s::bigint
        WHERE (session_id, token) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
    "begin_turn": """SELECT * FROM {s}.begin_turn(%s::text, %s::text, %s::text, %s::bigint, %s::bigint,
        %s::integer, %s::bigint, %s::integer, %s::integer, %s::bytea[], %s::bytea[],
        %s::text, %s::bytea, %s::bytea, %s::bigint, %s::bigint, %s::integer)""",
    "end_turn": """SELECT * FROM {s}.end_turn(%s::text, %s::text, %s::bigint, %s::bytea[],
        %s::text, %s::bytea, %s::text, %s::bytea[], %s::bigint, %s::bigint)""",
}


def _quote(identifier: str) -> str:
    escaped = identifier.replace('"', '""')
    return f'"{escaped}"'


def _channel(schema: str) -> str:
    # a channel name is an identifier: 63 bytes at most
    name = f"orbiter.{schema}"
    return name if len(name.encode()) <= 63 else "orbiter." + hashlib.sha1(name.encode()).hexdigest()


def _tail_params(known: Known | None) -> tuple[int | None, int, int]:
    """What the cache holds (`HistoryCache.known`), as the arguments of `begin_turn()` in SQL,
    which judges it by `first_unknown`'s rule."""
    if known is None or not isinstance(known[0], int):
        return None, 0, 0
    return known[0], known[1], known[2]


class _Statement(NamedTuple):
    text: bytes  # numbered placeholders: `$1`
    names: tuple[str, ...] | None  # the parameters' names in order, when given by name


async def _exchange(
    conn: psycopg.AsyncConnection[Any], calls: Sequence[tuple[_Statement, Params]]
) -> builtins.list[Any]:
    """Each statement's rows, or its error as a value: all sent in pipeline mode in
    one write, each followed by a Sync of its own, so each is its own transaction
    as in autocommit, and one's error neither undoes nor aborts the others."""
    pgconn = conn.pgconn
    tx: Adapting = Transformer(conn)
    outcomes: builtins.list[Any] = [None] * len(calls)
    sent: builtins.list[int] = []
    pgconn.enter_pipeline_mode()
    try:
        for index, (statement, params) in enumerate(calls):
            if statement.names is None:
                values: Sequence[Any] = params  # type: ignore[assignment]
            else:
                values = [params[name] for name in statement.names]  # type: ignore[call-overload]
            # lists of bytes (bytea[]) in binary: no escaping; the rest as psycopg chooses,
            # so a NUL in a text value fails here, before anything is sent
            formats = [
                _BINARY_LIST if type(v) is list and v and type(v[0]) is bytes else _AUTO
                for v in values
            ]
            try:
                dumped = tx.dump_sequence(values, formats)
            except psycopg.Error as exc:
                outcomes[index] = exc
                continue
            pgconn.send_query_params(statement.text, dumped, tx.types, tx.formats, _BINARY)
            pgconn.pipeline_sync()
            sent.append(index)
        replies = await conn.wait(_replies(pgconn, len(sent)))
    except BaseException:
        await conn.close()  # stopped half-way through the pipeline: the pool drops it
        raise
    pgconn.exit_pipeline_mode()
    encoding = conn.info.encoding
    for index, results in zip(sent, replies, strict=True):
        outcomes[index] = _rows(tx, results, encoding)
    return outcomes


def _replies(pgconn: PGconn, count: int) -> PQGen[builtins.list[builtins.list[PGresult]]]:
    """Flush what was sent, then read the results of `count` statements, each followed by a Sync."""
    yield from generators.send(pgconn)
    replies = []
    for _ in range(count):
        replies.append((yield from generators.fetch_many(pgconn)))
        yield from generators.fetch_many(pgconn)  # its Sync's
    return replies


def _rows(tx: Adapting, results: Sequence[PGresult], encoding: str) -> Any:
    """A statement's rows, or its error."""
    for result in results:
        if result.status == _FATAL_ERROR:
            return psycopg.errors.error_from_result(result, encoding=encoding)
    result = results[-1]
    try:
        if result.status == _TUPLES_OK:
            tx.set_pgresult(result)
            return tx.load_rows(0, result.ntuples, tuple)
    except psycopg.Error as exc:
        return exc
    if result.status == _COMMAND_OK:
        return []
    return psycopg.OperationalError(f"unexpected result: {pq.ExecStatus(result.status).name}")


def _stale(conn: psycopg.AsyncConnection[Any]) -> bool:
    """An idle connection with something to read was closed by the server (a
    restart, an idle timeout): found without a round trip, before it fails a call."""
    if conn.closed or conn.broken:
        return True
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    return bool(readable)


class _Row:
    """One `sessions` row, decoded."""

    __slots__ = ("agent_name", "created_at", "id", "message_count", "metadata", "title", "updated_at")

    def __init__(self, row: Sequence[Any]) -> None:
        self.id, self.agent_name, title, metadata, self.message_count, created_at, updated_at = row[:7]
        self.title = bytes(title).decode()
        self.metadata = decode_metadata(bytes(metadata))
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


def _decode_all(bodies: Sequence[bytes] | None) -> list[Message]:
    return [decode_message(body) for body in bodies or ()]


def _decoded(decode: Callable[[], T]) -> T:
    try:
        return decode()
    except msgspec.DecodeError as exc:
        raise StoreError(f"PostgreSQL store holds unreadable data: {exc}") from None


class PostgresStore:
    """Sessions in PostgreSQL, shared by any number of workers and machines.

    Its run journal, `runs`, lives in the same schema (`PostgresJournal`).

    ```python
    app = create_app(store="postgresql://app:secret@db:5432/app?schema=orbiter&pool=10")
    app = create_app(store=PostgresStore("postgresql://app@db/app", timeout=10))
    ```

    Parameters:
        url: `postgresql://` (or `postgres://`) URL, options as query; others go to libpq.
        schema: the Postgres schema of the tables, created when missing.
        pool_min, pool_max: connections the pool keeps open at least, and at most
            (`?pool=N` sets both).
        timeout: seconds to connect, to wait for a pooled connection and for
            a statement, before a 503.
        lock_ttl: seconds a crashed worker's turn lock outlives it at most.
        lock_wait: seconds a turn waits for a busy session before a 503.
        run_lease: seconds the lease of a run this process runs lasts
            unless renewed (every third of that); a run whose worker died is
            ended as `worker_lost` by a reader after at most that long.
        history_cache: messages of recent histories kept in this process; 0 keeps none.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_min: int | None = None,
        pool_max: int | None = None,
        timeout: float | None = None,
        lock_ttl: float | None = None,
        lock_wait: float | None = None,
        run_lease: float | None = None,
        history_cache: int | None = None,
    ) -> None:
        url, options = split_options(url, _OPTIONS)
        self.schema = schema if schema is not None else options.get("schema", DEFAULT_SCHEMA)
        if not _IDENTIFIER.fullmatch(self.schema):
            raise ValueError(f"schema must be a plain identifier (letters, digits, _), not {self.schema!r}")
        pool = options.get("pool")
        self.pool_min = int(pool_min if pool_min is not None else options.get("pool_min", pool or 2))
        self.pool_max = int(pool_max if pool_max is not None else options.get("pool_max", pool or 10))
        self.pool_max = max(self.pool_max, self.pool_min)
        self.timeout = float(timeout if timeout is not None else options.get("timeout", 5.0))
        assert self.pool_min >= 1 and self.timeout > 0
        self._params = self._connection_params(url)
        cached = history_cache if history_cache is not None else options.get("history_cache")
        self._cache = HistoryCache(int(cached) if cached is not None else DEFAULT_CACHED_MESSAGES)
        quoted = _quote(self.schema)
        channel = _channel(self.schema)
        self._channel_literal = f"'{channel}'"  # a plain identifier, no quote to escape
        self._sql = {name: text.replace("{s}", quoted) for name, text in _SQL.items()}
        self._lease = LeaseLock(
            self._try_lock,
            self._unlock,
            self._renew_locks,
            ttl=float(lock_ttl if lock_ttl is not None else options.get("lock_ttl", 30.0)),
            wait=float(lock_wait if lock_wait is not None else options.get("lock_wait", 300.0)),
        )
        self._pool: AsyncConnectionPool | None = None
        self._opening: asyncio.Task[AsyncConnectionPool] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # retired pools, closing
        self._batch = Batch(self._serve)  # statements of one pass of the loop: one pipeline
        self._sending: set[asyncio.Task[None]] = set()
        self._statements: dict[str, _Statement] = {}
        lease = run_lease if run_lease is not None else options.get("run_lease")
        self._journal = PostgresJournal(
            self._fetch,
            self._listen_connection,
            schema=quoted,
            channel=channel,
            timeout=self.timeout,
            lease=float(lease) if lease is not None else None,
        )
        self.runs: RunJournal = self._journal

    def __repr__(self) -> str:
        where = f"{self._params.get('host', '')}/{self._params.get('dbname', '')}"
        return f"PostgresStore({where!r}, schema={self.schema!r})"

    # --- connections ---------------------------------------------------------------

    def _connection_params(self, url: str) -> dict[str, Any]:
        params: dict[str, Any] = conninfo_to_dict(url)
        params.setdefault("connect_timeout", max(1, math.ceil(self.timeout)))
        params.setdefault("application_name", "orbiter-asgi")
        statement_timeout = f"-c statement_timeout={max(1, round(self.timeout * 1000))}"
        params["options"] = f"{params.get('options', '')} {statement_timeout}".strip()
        return params

    async def _listen_connection(self) -> psycopg.AsyncConnection[Any]:
        with anyio.fail_after(self.timeout):
            return await psycopg.AsyncConnection.connect(**self._params, autocommit=True)

    async def _open(self) -> AsyncConnectionPool:
        """The pool, opened and the schema migrated on first use (once, whoever asks)."""
        loop = asyncio.get_running_loop()
        task = self._opening
        if (
            task is None
            or task.get_loop() is not loop
            or (task.done() and (task.cancelled() or task.exception() is not None))
        ):
            task = self._opening = loop.create_task(self._start())
        # shielded: a caller that gives up must not cancel the opening for the others
        return await asyncio.shield(task)

    async def _start(self) -> AsyncConnectionPool:
        pool = AsyncConnectionPool(
            kwargs={**self._params, "autocommit": True, "prepare_threshold": 0},
            min_size=self.pool_min,
            max_size=self.pool_max,
            timeout=self.timeout,
            open=False,
            name=f"orbiter-{self.schema}",
        )
        await pool.open(wait=False)
        try:
            async with pool.connection(timeout=self.timeout) as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return pool

    def _ddl(self, statement: str) -> str:
        return statement.replace("{s}", _quote(self.schema)).replace("{channel}", self._channel_literal)

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        version = await self._version(conn)
        if version == SCHEMA_VERSION:
            return  # one read, and no CREATE privilege needed, when up to date
        async with conn.transaction():
            # read again under the lock: another worker may have just migrated
            lock = "SELECT pg_advisory_xact_lock(hashtext(%s))"
            await conn.execute(lock, (f"orbiter-asgi schema {self.schema}",), prepare=False)
            cur = await conn.execute(
                "SELECT to_regnamespace(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
                (_quote(self.schema), f"{_quote(self.schema)}.schema_version"),
                prepare=False,
            )
            has_schema, has_version = await cur.fetchone() or (False, False)
            if not has_schema:
                await conn.execute(self._ddl("CREATE SCHEMA {s}"), prepare=False)
            if has_version:
                cur = await conn.execute(self._ddl("SELECT version FROM {s}.schema_version"), prepare=False)
                version = ((await cur.fetchone()) or (0,))[0]
            else:
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s",
                    (self.schema,),
                    prepare=False,
                )
                if ((await cur.fetchone()) or (0,))[0]:
                    raise StoreError(f"Schema {self.schema!r} is not an orbiter-asgi session schema")
                await conn.execute(
                    self._ddl("CREATE TABLE {s}.schema_version (version integer NOT NULL)"), prepare=False
                )
                await conn.execute(self._ddl("INSERT INTO {s}.schema_version VALUES (0)"), prepare=False)
                version = 0
            self._check_version(version)
            for step in MIGRATIONS[version:]:
                for statement in step:
                    await conn.execute(self._ddl(statement), prepare=False)
            await conn.execute(
                self._ddl("UPDATE {s}.schema_version SET version = %s"), (SCHEMA_VERSION,), prepare=False
            )

    async def _version(self, conn: psycopg.AsyncConnection[Any]) -> int | None:
        try:
            cur = await conn.execute(self._ddl("SELECT version FROM {s}.schema_version"), prepare=False)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return None
        row = await cur.fetchone()
        version = int(row[0]) if row is not None else None
        if version is not None:
            self._check_version(version)
        return version

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"Schema {self.schema!r} has session schema {version}, newer than this orbiter-asgi "
                f"understands ({SCHEMA_VERSION}); upgrade orbiter-asgi"
            )

    async def _run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """`work(conn)` on a pooled connection, within the store's timeout; driver errors
        become `StoreError` (a NUL in an id, which Postgres text cannot hold, a 400)."""
        try:
            with anyio.fail_after(self.timeout + _GRACE):
                pool = await self._open()
                for _ in range(_STALE_RETRIES):
                    async with pool.connection(timeout=self.timeout) as conn:
                        if _stale(conn):
                            await conn.close()  # the pool drops it and opens another
                            continue
                        return await work(conn)
                raise StoreError("PostgreSQL store unavailable: every pooled connection was closed")
        except PoolTimeout:
            self._retire()
            raise StoreError(
                f"PostgreSQL store unavailable: no connection within {self.timeout:g}s (timeout)"
            ) from None
        except (TimeoutError, psycopg.Error, OSError) as exc:
            raise self._failure(exc) from exc

    def _failure(self, outcome: Any) -> Any:
        """A call's outcome as its caller gets it: driver errors as `StoreError`, a
        NUL that Postgres text cannot hold as `RequestError` (a 400)."""
        if not isinstance(outcome, BaseException) or isinstance(outcome, OrbiterError):
            return outcome
        failure: OrbiterError
        if isinstance(outcome, TimeoutError):
            failure = StoreError(f"PostgreSQL store did not answer within {self.timeout:g}s (timeout)")
        elif isinstance(outcome, psycopg.errors.QueryCanceled):
            failure = StoreError(f"PostgreSQL store timed out: {outcome}")
        elif isinstance(outcome, psycopg.DataError) and "NUL" in str(outcome):
            failure = RequestError(f"PostgreSQL cannot store this value: {outcome}")
        elif isinstance(outcome, psycopg.DataError):
            failure = StoreError(f"PostgreSQL store failed: {outcome}")
        elif isinstance(outcome, psycopg.Error):
            detail = str(outcome).strip() or type(outcome).__name__
            failure = StoreError(f"PostgreSQL store unavailable: {detail}")
        elif isinstance(outcome, OSError):
            failure = StoreError(f"PostgreSQL store unavailable: {type(outcome).__name__}: {outcome}")
        else:
            return outcome
        failure.__cause__ = outcome
        return failure

    def _retire(self) -> None:
        """Drops a pool that found no connection: it retries connecting with a backoff
        of seconds, while a new one connects at once when the server is back."""
        task, pool = self._opening, self._pool
        if task is None or pool is None or not task.done() or task.cancelled() or task.exception():
            return
        if task.result() is pool:
            self._opening = self._pool = None
            closing = asyncio.get_running_loop().create_task(pool.close(timeout=1))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _fetch(self, query: str, params: Params) -> builtins.list[tuple[Any, ...]]:
        """One statement, its rows: with the others called in this pass of the event
        loop, on one pooled connection in one write (`_send`)."""
        rows: builtins.list[tuple[Any, ...]] = await self._batch.call((query, params))
        return rows

    def _serve(self, pending: Pending) -> None:
        task = asyncio.get_running_loop().create_task(self._send(pending))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, pending: Pending) -> None:
        calls = [(self._compile(query), params) for (query, params), _ in pending]
        try:
            outcomes = await self._run(lambda conn: _exchange(conn, calls))
        except Exception as exc:  # the batch as a whole: no connection, no answer in time
            outcomes = [exc] * len(pending)
        except BaseException:  # cancelled, the loop closing: nobody is left waiting
            settle(pending, [StoreError("PostgreSQL store closed")] * len(pending))
            raise
        settle(pending, [self._failure(outcome) for outcome in outcomes])

    def _compile(self, query: str) -> _Statement:
        """`query` with `$n` for its `%s` (or `%(name)s`) placeholders, made once."""
        statement = self._statements.get(query)
        if statement is None:
            names: dict[str, str] = {}
            count = 0

            def number(match: re.Match[str]) -> str:
                nonlocal count
                name = match[1]
                if name is None:
                    count += 1
                    return f"${count}"
                return names.setdefault(name, f"${len(names) + 1}")

            text = _PLACEHOLDER.sub(number, query)
            assert not (count and names), "placeholders are all %s or all %(name)s"
            statement = self._statements[query] = _Statement(text.encode(), tuple(names) or None)
        return statement

    async def ping(self) -> None:
        """`SELECT 1` on a pooled connection, within the store's timeout."""
        await self._fetch("SELECT 1", ())

    async def aclose(self) -> None:
        await self._journal.aclose()
        await self._lease.aclose()
        task, self._opening = self._opening, None
        pool, self._pool = self._pool, None
        loop = asyncio.get_running_loop()
        if task is not None and not task.done() and task.get_loop() is loop:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for sending in list(self._sending):  # batches under way end before their pool
            if sending.get_loop() is loop:
                with contextlib.suppress(BaseException):
                    await sending
        if pool is not None and task is not None and task.get_loop() is loop:
            await pool.close()
        for closing in list(self._closing):
            if closing.get_loop() is loop:
                await closing
        self._cache.clear()

    # --- sessions ----------------------------------------------------------------------

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
        row = (session_id, agent_name, title.encode(), encode_metadata(metadata or {}), now, now)
        if not await self._fetch(self._sql["create"], row):
            raise ConflictError(f"Session {session_id!r} already exists")
        return _decoded(lambda: _Row((*row[:4], 0, now, now)).session([]))

    async def get(self, session_id: str) -> Session:
        rows = await self._fetch(self._sql["get"], (session_id,))
        if not rows:
            raise SessionNotFound.of(session_id)
        return _decoded(lambda: _Row(rows[0]).session(_decode_all(rows[0][7])))

    async def list(
        self,
        *,
        agent_name: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page:
        after = decode_cursor(cursor) if cursor else None
        key: tuple[Any, ...] = (micros(after[0]), after[1]) if after else ()
        name = "list" if agent_name is None else "list_agent"
        params: tuple[Any, ...] = (*(() if agent_name is None else (agent_name,)), *key, limit + 1)
        rows = await self._fetch(self._sql[name + ("_after" if after else "")], params)
        items = _decoded(lambda: [_Row(row).summary() for row in rows[:limit]])
        return Page.of(items, more=len(rows) > limit)

    async def update(
        self,
        session_id: str,
        *,
        agent_name: str | msgspec.UnsetType | None = msgspec.UNSET,
        title: str | msgspec.UnsetType = msgspec.UNSET,
        metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET,
    ) -> Session:
        params = {
            "id": session_id,
            "now": micros(utcnow()),
            "set_agent": agent_name is not msgspec.UNSET,
            "agent": agent_name if agent_name is not msgspec.UNSET else None,
            "set_title": title is not msgspec.UNSET,
            "title": title.encode() if not isinstance(title, msgspec.UnsetType) else None,
            "set_metadata": metadata is not msgspec.UNSET,
            "metadata": encode_metadata(metadata) if not isinstance(metadata, msgspec.UnsetType) else None,
        }
        rows = await self._fetch(self._sql["update"], params)
        if not rows:
            raise SessionNotFound.of(session_id)
        return _decoded(lambda: _Row(rows[0]).session(_decode_all(rows[0][7])))

    async def delete(self, session_id: str) -> bool:
        self._cache.forget(session_id)
        ((deleted,),) = await self._fetch(self._sql["delete"], {"id": session_id})
        return bool(deleted)

    # --- histories ---------------------------------------------------------------------

    async def messages(self, session_id: str) -> builtins.list[Message]:
        rows = await self._fetch(self._sql["messages"], (session_id,))
        if not rows:
            raise SessionNotFound.of(session_id)
        return _decoded(lambda: _decode_all(rows[0][0]))

    async def history(self, session_id: str, *, agent_name: str | None) -> builtins.list[Message]:
        params = {"id": session_id, "agent": agent_name, "now": micros(utcnow())}
        ((bodies,),) = await self._fetch(self._sql["history"], params)
        return _decoded(lambda: _decode_all(bodies))

    async def append(self, session_id: str, messages: Sequence[Message]) -> builtins.list[Message]:
        stored, now = stamp(messages)
        params = {"id": session_id, "bodies": [encode_message(m) for m in stored], "now": micros(now)}
        if not await self._fetch(self._sql["append"], params):
            raise SessionNotFound.of(session_id)
        return stored

    # --- turns -------------------------------------------------------------------------

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
        # started with the turn, once its lease is taken: a failed start fails the turn
        starting = self._journal.start_args(run) if run is not None else _NO_RUN_START
        both, now = stamp([*seed, *messages])
        planted, stored = both[: len(seed)], both[len(seed) :]
        seed_bodies = [encode_message(m) for m in planted]
        bodies = [encode_message(m) for m in stored]

        async def attempt(token: str) -> tuple[Any, ...] | None:
            # what the cache holds is read here, under the process's hold on the session
            tail_of, tail_start, tail_end = _tail_params(self._cache.known(session_id))
            params = (
                session_id, agent_name, token, self._ttl(), micros(now), window,
                tail_of, tail_start, tail_end, seed_bodies, bodies, *starting,
            )  # fmt: skip
            ((taken, *begun),) = await self._fetch(self._sql["begin_turn"], params)
            return tuple(begun) if taken else None

        token, (incarnation, count, seeded, first, bodies_read) = await self._lease.acquire(
            session_id, attempt
        )
        try:
            cache = self._cache
            if seeded:  # stored before the opening messages, and shown
                length = len(planted)
                history = cache.history(session_id, incarnation, length, window, 0, planted)
            else:
                length = count
                read = _decoded(lambda: _decode_all(bodies_read))
                start = cache.read_from(session_id, incarnation, count, window)
                if start < first:  # the tail the server counted on was evicted since
                    rows = await self._fetch(self._sql["slice"], (session_id, start, first))
                    read = _decoded(lambda: _decode_all([body for (body,) in rows])) + read
                    first = start
                history = cache.history(session_id, incarnation, count, window, first, read)
            cache.appended(session_id, incarnation, length, stored, window)
        except BaseException:
            self._cache.forget(session_id)
            await self._lease.release(session_id, lambda: self._unlock_quietly(session_id, token))
            raise
        return OpenTurn(
            session_id, history, stored, token=(token, incarnation, window), end=length + len(stored)
        )

    async def end_turn(
        self, turn: OpenTurn, messages: Sequence[Message], *, run: RunEnd | None = None
    ) -> builtins.list[Message]:
        token, _, window = turn.token  # the incarnation written to comes back from the server
        stored, now = stamp(messages)
        session_id = turn.session_id
        ending = _NO_RUN_END
        if run is not None:  # unwatched first, as `finish` does
            ending = self._journal.finish_args(
                run.info, run.frames, max_bytes=run.max_bytes, retention=run.retention
            )
        params = (session_id, token, micros(now), [encode_message(m) for m in stored], *ending)
        try:
            ((count, created),) = await self._lease.release(
                session_id, lambda: self._fetch(self._sql["end_turn"], params)
            )
        except BaseException:
            self._cache.forget(session_id)
            raise
        if stored and count is None:  # deleted during the turn
            self._cache.forget(session_id)
            raise SessionNotFound.of(session_id)
        if stored:
            self._cache.appended(session_id, created, count, stored, window)
        return stored

    # --- the turn lock -----------------------------------------------------------------

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """Serializes turns on one session across every worker using this database."""
        return self._lease.hold(session_id)

    def _ttl(self) -> int:
        return round(self._lease.ttl * 1_000_000)

    async def _try_lock(self, session_id: str, token: str) -> bool:
        params = {"id": session_id, "token": token, "ttl": self._ttl()}
        return bool(await self._fetch(self._sql["take_lock"], params))

    async def _unlock(self, session_id: str, token: str) -> None:
        await self._fetch(self._sql["release_lock"], (session_id, token))

    async def _unlock_quietly(self, session_id: str, token: str) -> None:
        with contextlib.suppress(StoreError):  # the lease then lapses
            await self._unlock(session_id, token)

    async def _renew_locks(self, held: Mapping[str, str]) -> None:
        await self._fetch(self._sql["renew_locks"], (self._ttl(), list(held), list(held.values())))
