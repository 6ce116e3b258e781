"""Redis session store: `redis://host:6379/0`, shared by every worker of every machine.

Layout under a key prefix (default `orbiter:`): a hash per session
(`s:{id}`), a list per history (`m:{id}`, appended with RPUSH), a sorted
set of all sessions scored by creation time (`idx`) and one per agent
(`a:{agent}`), and the turn lease of a busy session (`lock:{id}`). Every
call is one round trip: reads are a MULTI pipeline, writes a Lua script
that checks and changes in one atomic step, so concurrent appends from
many processes never interleave within a call and never read and rewrite
a whole history. Runs and their frames live beside the sessions, in the
store's `runs` (`redis_journal.py`). Scripts name some keys they compute,
so this wants a single Redis (or a primary with replicas), not Redis Cluster.

Writes carry a token that makes them safe to repeat: a command retried
after a dropped connection is not applied twice.

URL options: `?prefix=orbiter:`, `?timeout=5` (socket timeouts),
`?lock_ttl=30`, `?lock_wait=300`, `?run_lease=10` (seconds a run whose
worker died stays `running` at most, before a reader ends it as
`worker_lost`), `?history_cache=100000` (messages of recent histories kept
in this process; 0 keeps none); other query options go to redis-py.

A chat turn is two scripts: `begin_turn` takes the lease, reads only the
messages this process's history cache lacks and stores the user's message;
`end_turn` stores the answer and drops the lease.
"""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import msgspec

from ..exceptions import ConflictError, SessionNotFound, StoreError
from ..models import Message, RunInfo, Session, SessionSummary
from ._batch import Batch, Pending, settle
from ._history_cache import DEFAULT_CACHED_MESSAGES, HistoryCache, window_start
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
from .redis_journal import SCRIPTS as RUN_SCRIPTS
from .redis_journal import RedisJournal, ScriptCall

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The Redis session store needs the redis package: pip install 'orbiter-asgi[redis]'"
    ) from exc

__all__ = ["RedisStore"]

T = TypeVar("T")

_OPTIONS = ("prefix", "timeout", "lock_ttl", "lock_wait", "run_lease", "history_cache")
_FIELDS = ("agent", "metadata", "created_at", "updated_at", "title")
_RETRY_DEDUPE_MS = 120_000

# KEYS: hash, index
# ARGV: id, agent ('' = none), agent index key ('' = none), metadata, now, token, title
# A title is written only when there is one: hashes without it (and those of
# stores older than titles) read as "".
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'token') == ARGV[6] and 1 or 0
end
redis.call('HSET', KEYS[1], 'metadata', ARGV[4], 'created_at', ARGV[5], 'updated_at', ARGV[5],
  'token', ARGV[6])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'agent', ARGV[2]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'title', ARGV[7]) end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', ARGV[3], ARGV[5], ARGV[1]) end
return 1
"""

# KEYS: hash, messages, index; ARGV: id, agent, agent index key, now, token
_HISTORY = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('LRANGE', KEYS[2], 0, -1)
end
redis.call('HSET', KEYS[1], 'metadata', '{}', 'created_at', ARGV[4], 'updated_at', ARGV[4],
  'token', ARGV[5])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'agent', ARGV[2]) end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', ARGV[3], ARGV[4], ARGV[1]) end
return {}
"""

# KEYS: hash, messages, dedupe key; ARGV: now, dedupe ttl ms, message...
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if not redis.call('SET', KEYS[3], 1, 'NX', 'PX', ARGV[2]) then
  return redis.call('LLEN', KEYS[2])
end
for i = 3, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
return redis.call('LLEN', KEYS[2])
"""

# KEYS: hash, messages
# ARGV: agent index prefix, id, now, set agent?, agent, set metadata?, metadata, set title?, title
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[4] == '1' then
  local old = redis.call('HGET', KEYS[1], 'agent')
  local created = redis.call('HGET', KEYS[1], 'created_at')
  if old then redis.call('ZREM', ARGV[1] .. old, ARGV[2]) end
  if ARGV[5] == '' then
    redis.call('HDEL', KEYS[1], 'agent')
  else
    redis.call('HSET', KEYS[1], 'agent', ARGV[5])
    redis.call('ZADD', ARGV[1] .. ARGV[5], created, ARGV[2])
  end
end
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'metadata', ARGV[7]) end
if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'title', ARGV[9]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
return {redis.call('HMGET', KEYS[1], 'agent', 'metadata', 'created_at', 'updated_at', 'title'),
  redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# KEYS: hash, messages, index; ARGV: agent index prefix, id
_DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local agent = redis.call('HGET', KEYS[1], 'agent')
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if agent then redis.call('ZREM', ARGV[1] .. agent, ARGV[2]) end
return 1
"""

# KEYS: index; ARGV: key prefix, max score, cursor id ('' = none), how many
# Newest first: score (created_at) descending, then id descending, as ZREVRANGEBYSCORE orders;
# ids compare byte by byte, as Redis orders members, not by the server's locale.
_LIST = """
local function below(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local want = tonumber(ARGV[4])
local after_score = tonumber(ARGV[2])
local out = {}
local offset = 0
local batch = want + 16
while #out < want do
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], '-inf', 'WITHSCORES',
    'LIMIT', offset, batch)
  for i = 1, #page, 2 do
    local id = page[i]
    if ARGV[3] == '' or tonumber(page[i + 1]) ~= after_score or below(id, ARGV[3]) then
      local row = redis.call('HMGET', ARGV[1] .. 's:' .. id, 'agent', 'metadata', 'created_at',
        'updated_at', 'title')
      if row[3] then
        out[#out + 1] = {id, row[1], row[2], row[3], row[4],
          redis.call('LLEN', ARGV[1] .. 'm:' .. id), row[5]}
        if #out == want then break end
      end
    end
  end
  if #page < 2 * batch then break end
  offset = offset + batch
end
return out
"""

# A chat turn's first step: take the lease, create the session when new, read
# what the caller's history cache lacks (the rule of `_history_cache.first_unknown`),
# store the seed (into an empty history only) and the opening messages.
# KEYS: hash, messages, index, lease
# ARGV: token, ttl ms, id, agent, agent index key, now,
#       cached incarnation ('' = none), cached start, cached end, window ('' = all),
#       seed count, seed bodies..., opening bodies...
# Returns nil while another turn holds the lease, else {incarnation, length, first, bodies}.
# A retry of a call whose reply was lost finds its own token: it writes nothing
# again and answers from the length it saw (`turn_count`).
_BEGIN_TURN = """
local holder = redis.call('GET', KEYS[4])
local retry = holder == ARGV[1]
if holder and not retry then return false end
local created = redis.call('HGET', KEYS[1], 'created_at')
if not created then
  created = ARGV[6]
  redis.call('HSET', KEYS[1], 'metadata', '{}', 'created_at', created, 'updated_at', created,
    'token', ARGV[1])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'agent', ARGV[4]) end
  redis.call('ZADD', KEYS[3], created, ARGV[3])
  if ARGV[5] ~= '' then redis.call('ZADD', ARGV[5], created, ARGV[3]) end
end
local count
if retry then
  count = tonumber(redis.call('HGET', KEYS[1], 'turn_count'))
else
  count = redis.call('LLEN', KEYS[2])
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2])
  redis.call('HSET', KEYS[1], 'turn_count', count)
end
local want = 0
if ARGV[10] ~= '' then want = math.max(0, count - tonumber(ARGV[10])) end
local first = want
if ARGV[7] == created and tonumber(ARGV[8]) <= want and tonumber(ARGV[9]) <= count then
  first = tonumber(ARGV[9])
end
local read = {}
if first < count then read = redis.call('LRANGE', KEYS[2], first, count - 1) end
if not retry then
  local from = 12
  if count > 0 then from = 12 + tonumber(ARGV[11]) end
  for i = from, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[6])
end
return {created, count, first, read}
"""

# A chat turn's last step: store the answer, drop the lease.
# KEYS: hash, messages, lease, dedupe key; ARGV: token, now, dedupe ttl ms, bodies...
# Returns the history's length before the answer (-1: the session is gone).
_END_TURN = """
local count = redis.call('LLEN', KEYS[2])
if #ARGV > 3 then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    count = -1
  elseif redis.call('SET', KEYS[4], 1, 'NX', 'PX', ARGV[3]) then
    for i = 4, #ARGV, 1000 do
      redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
    end
    redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
  else
    count = count - (#ARGV - 3)
  end
end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return count
"""

# KEYS: lease; ARGV: token, ttl ms
_TAKE_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: leases; ARGV: tokens, then ttl ms ('' to release)
_LEASES = """
local ttl = ARGV[#ARGV]
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    if ttl == '' then redis.call('DEL', KEYS[i]) else redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
return 1
"""


def _unavailable(exc: BaseException) -> StoreError:
    if isinstance(exc, RedisError):
        return StoreError(f"Redis store unavailable: {str(exc) or type(exc).__name__}")
    return StoreError(f"Redis store unavailable: {type(exc).__name__}: {exc}")


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


class RedisStore:
    """Sessions in Redis, shared by any number of workers and machines.

    ```python
    app = create_app(store="redis://localhost:6379/0?prefix=myapp:")
    app = create_app(store=RedisStore("redis://localhost:6379/0", prefix="myapp:"))
    ```

    Parameters:
        url: `redis://[user:password@]host:port/db` or `rediss://` for TLS.
        prefix: namespace of every key this store writes.
        timeout: seconds to wait for Redis (connect and each reply) before a 503.
        lock_ttl: seconds a crashed worker's turn lock outlives it at most.
        lock_wait: seconds a turn waits for a busy session before a 503.
        run_lease: seconds the lease of a run this process runs lasts
            unless renewed (every third of that); a run whose worker died is
            ended as `worker_lost` by a reader after at most that long.
        history_cache: messages of recent histories this process keeps, so
            a turn reads only the messages it has not seen (0: none).
        options: passed to `redis.asyncio.Redis.from_url`.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        timeout: float | None = None,
        lock_ttl: float | None = None,
        lock_wait: float | None = None,
        run_lease: float | None = None,
        history_cache: int | None = None,
        **options: Any,
    ) -> None:
        self.url, ours = split_options(url, _OPTIONS)
        cached = history_cache if history_cache is not None else ours.get("history_cache")
        self._cache = HistoryCache(int(cached) if cached is not None else DEFAULT_CACHED_MESSAGES)
        self.prefix = prefix if prefix is not None else ours.get("prefix", "orbiter:")
        self.timeout = float(timeout if timeout is not None else ours.get("timeout", 5.0))
        self._options = options
        self._client: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}
        self._batch = Batch(self._serve)  # scripts called in one pass of the loop: one pipeline
        self._sending: set[asyncio.Task[None]] = set()
        self._lease = LeaseLock(
            self._try_lock,
            self._unlock,
            self._renew_locks,
            ttl=float(lock_ttl if lock_ttl is not None else ours.get("lock_ttl", 30.0)),
            wait=float(lock_wait if lock_wait is not None else ours.get("lock_wait", 300.0)),
        )
        self._index = self.prefix + "idx"
        self._agents = self.prefix + "a:"
        lease = run_lease if run_lease is not None else ours.get("run_lease")
        self._journal = RedisJournal(
            self._call,
            self._script,
            prefix=self.prefix,
            timeout=self.timeout,
            lease=float(lease) if lease is not None else None,
        )
        self.runs: RunJournal = self._journal

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"

    # --- the connection ---------------------------------------------------------

    def _redis(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            options: dict[str, Any] = {
                "socket_timeout": self.timeout,
                "socket_connect_timeout": self.timeout,
                # writes are idempotent (tokens), so a dropped connection may be retried
                "retry": Retry(
                    ExponentialBackoff(cap=0.2, base=0.02),
                    2,
                    supported_errors=(RedisConnectionError,),
                ),
                **self._options,
            }
            self._client = aioredis.Redis.from_url(self.url, **options)
            self._loop = loop
            self._scripts = {
                name: self._client.register_script(source)
                for name, source in (
                    ("create", _CREATE),
                    ("history", _HISTORY),
                    ("append", _APPEND),
                    ("update", _UPDATE),
                    ("delete", _DELETE),
                    ("list", _LIST),
                    ("take_lock", _TAKE_LOCK),
                    ("begin_turn", _BEGIN_TURN),
                    ("end_turn", _END_TURN),
                    ("leases", _LEASES),
                    *RUN_SCRIPTS,
                )
            }
        return self._client

    async def _call(self, work: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        client = self._redis()
        try:
            return await work(client)
        except (RedisError, TimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script with the others called in this pass of the event loop:
        one pipeline, one write to the socket (`_send`)."""
        return await self._batch.call((name, keys, args))

    def _serve(self, pending: Pending) -> None:
        task = asyncio.get_running_loop().create_task(self._send(pending))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, pending: Pending) -> None:
        try:
            client = self._redis()
            pipe = client.pipeline(transaction=False)
            for (name, keys, args), _ in pending:
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
            for index, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):  # Redis restarted, or flushed its scripts
                    replies[index] = await self._script_alone(*pending[index][0])
                elif isinstance(reply, RedisError):
                    replies[index] = StoreError(f"Redis store failed: {reply}")
        except (RedisError, TimeoutError, OSError, StoreError) as exc:
            failure = exc if isinstance(exc, StoreError) else _unavailable(exc)
            replies = [failure] * len(pending)
        settle(pending, replies)

    async def _script_alone(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script on its own: loads it into Redis when Redis does not know it."""

        async def work(client: aioredis.Redis) -> Any:
            return await self._scripts[name](keys=list(keys), args=list(args))

        return await self._call(work)

    async def ping(self) -> None:
        """`PING`, with the store's timeouts and retries; `StoreError` when Redis is away."""

        async def work(client: aioredis.Redis) -> None:
            await client.ping()

        await self._call(work)

    async def aclose(self) -> None:
        await self._journal.aclose()
        await self._lease.aclose()
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()
        self._loop = None
        self._cache.clear()

    def _keys(self, session_id: str) -> tuple[str, str]:
        return f"{self.prefix}s:{session_id}", f"{self.prefix}m:{session_id}"

    def _agent_key(self, agent_name: str | None) -> str:
        return self._agents + agent_name if agent_name else ""

    # --- sessions ------------------------------------------------------------------

    async def create(
        self,
        *,
        agent_name: str | None = None,
        title: str = "",
        metadata: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        session_id = session_id or new_session_id()
        now = utcnow()
        metadata = dict(metadata or {})
        session_key, _ = self._keys(session_id)
        args = (
            session_id,
            agent_name or "",
            self._agent_key(agent_name),
            encode_metadata(metadata),
            micros(now),
            uuid.uuid4().hex,
            title,
        )
        if not await self._script("create", (session_key, self._index), args):
            raise ConflictError(f"Session {session_id!r} already exists")
        return Session(
            id=session_id,
            agent_name=agent_name,
            title=title,
            metadata=metadata,
            messages=[],
            created_at=now,
            updated_at=now,
        )

    async def get(self, session_id: str) -> Session:
        session_key, messages_key = self._keys(session_id)

        async def work(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.hmget(session_key, _FIELDS)
            pipe.lrange(messages_key, 0, -1)
            result: list[Any] = await pipe.execute()
            return result

        row, bodies = await self._call(work)
        return self._session(session_id, row, bodies)

    def _session(self, session_id: str, row: list[bytes | None], bodies: list[bytes]) -> Session:
        agent, metadata, created_at, updated_at, title = row
        if created_at is None or metadata is None or updated_at is None:
            raise SessionNotFound.of(session_id)
        return Session(
            id=session_id,
            agent_name=_text(agent),
            title=_text(title) or "",
            metadata=self._decode(decode_metadata, metadata),
            messages=[self._decode(decode_message, body) for body in bodies],
            created_at=from_micros(int(created_at)),
            updated_at=from_micros(int(updated_at)),
        )

    @staticmethod
    def _decode(decode: Callable[[bytes], T], raw: bytes) -> T:
        try:
            return decode(raw)
        except msgspec.DecodeError as exc:
            raise StoreError(f"Redis store holds unreadable data: {exc}") from None

    async def list(
        self,
        *,
        agent_name: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page:
        if cursor:
            created_at, after_id = decode_cursor(cursor)
            max_score: str = str(micros(created_at))
        else:
            max_score, after_id = "+inf", ""
        index = self._agent_key(agent_name) if agent_name else self._index
        rows = await self._script("list", (index,), (self.prefix, max_score, after_id, limit + 1))
        items = [
            SessionSummary(
                id=raw_id.decode(),
                agent_name=_text(agent),
                title=_text(title) or "",
                metadata=self._decode(decode_metadata, metadata),
                message_count=int(count),
                created_at=from_micros(int(created)),
                updated_at=from_micros(int(updated)),
            )
            for raw_id, agent, metadata, created, updated, count, title in rows[:limit]
        ]
        return Page.of(items, more=len(rows) > limit)

    async def update(
        self,
        session_id: str,
        *,
        agent_name: str | msgspec.UnsetType | None = msgspec.UNSET,
        title: str | msgspec.UnsetType = msgspec.UNSET,
        metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET,
    ) -> Session:
        keys = self._keys(session_id)
        set_agent = agent_name is not msgspec.UNSET
        set_metadata = metadata is not msgspec.UNSET
        set_title = title is not msgspec.UNSET
        args = (
            self._agents,
            session_id,
            micros(utcnow()),
            "1" if set_agent else "0",
            (agent_name or "") if set_agent else "",
            "1" if set_metadata else "0",
            encode_metadata(metadata) if set_metadata else b"",  # type: ignore[arg-type]
            "1" if set_title else "0",
            title if set_title else "",
        )
        result = await self._script("update", keys, args)
        if result is None:
            raise SessionNotFound.of(session_id)
        row, bodies = result
        return self._session(session_id, row, bodies)

    async def delete(self, session_id: str) -> bool:
        args = (self._agents, session_id)
        return bool(await self._script("delete", (*self._keys(session_id), self._index), args))

    # --- histories --------------------------------------------------------------------

    async def messages(self, session_id: str) -> builtins.list[Message]:
        session_key, messages_key = self._keys(session_id)

        async def work(client: aioredis.Redis) -> builtins.list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.exists(session_key)
            pipe.lrange(messages_key, 0, -1)
            result: builtins.list[Any] = await pipe.execute()
            return result

        exists, bodies = await self._call(work)
        if not exists:
            raise SessionNotFound.of(session_id)
        return [self._decode(decode_message, body) for body in bodies]

    async def history(self, session_id: str, *, agent_name: str | None) -> builtins.list[Message]:
        keys = (*self._keys(session_id), self._index)
        args = (
            session_id,
            agent_name or "",
            self._agent_key(agent_name),
            micros(utcnow()),
            uuid.uuid4().hex,
        )
        bodies = await self._script("history", keys, args)
        return [self._decode(decode_message, body) for body in bodies]

    async def append(self, session_id: str, messages: Sequence[Message]) -> builtins.list[Message]:
        stored, now = stamp(messages)
        if not stored:
            await self.messages(session_id)  # still a 404 for a missing session
            return stored
        session_key, messages_key = self._keys(session_id)
        dedupe = f"{self.prefix}op:{uuid.uuid4().hex}"
        args = (micros(now), _RETRY_DEDUPE_MS, *(encode_message(m) for m in stored))
        if await self._script("append", (session_key, messages_key, dedupe), args) < 0:
            raise SessionNotFound.of(session_id)
        return stored

    # --- a chat turn: two scripts ---------------------------------------------------------

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
        planted, _ = stamp(seed)
        keys = (*self._keys(session_id), self._index, self._lock_key(session_id))
        starting = run  # started with the first attempt, in the same pipeline
        start_failed: BaseException | None = None
        ttl_ms = int(self._lease.ttl * 1000)
        head = (ttl_ms, session_id, agent_name or "", self._agent_key(agent_name), micros(now))
        tail = (
            "" if window is None else window,
            len(planted),
            *(encode_message(m) for m in planted),
            *(encode_message(m) for m in stored),
        )

        async def attempt(token: str) -> builtins.list[Any] | None:
            # what the cache holds is read here, under the process's hold on the session
            known = self._cache.known(session_id)
            args = (token, *head, *(("", 0, 0) if known is None else known), *tail)
            begin: ScriptCall = ("begin_turn", keys, args)
            nonlocal starting, start_failed
            if starting is None:
                begun: builtins.list[Any] | None = await self._script(*begin)
                return begun
            started, begun = await self._batch.call_many((self._journal.start_script(starting), begin))
            if isinstance(begun, BaseException):
                raise begun
            if isinstance(started, BaseException):
                start_failed = started
            starting = None
            return begun

        token, (created, count, first, bodies) = await self._lease.acquire(session_id, attempt)
        if start_failed is not None:  # the turn began, but its run was not recorded: undo the hold
            await self.end_turn(OpenTurn(session_id, [], [], token=(token, None, window)), ())
            raise start_failed
        incarnation = created.decode()
        read = [self._decode(decode_message, body) for body in bodies]
        start = self._cache.read_from(session_id, incarnation, count, window)
        if start < first:  # the tail the script counted on was evicted since
            read = await self._slice(session_id, start, first) + read
            first = start
        history = self._cache.history(session_id, incarnation, count, window, first, read)
        opening = stored
        if count == 0 and planted:  # stored before the opening messages, and shown
            history = planted[window_start(len(planted), window) :]
            opening = [*planted, *stored]
        self._cache.appended(session_id, incarnation, count, opening, window)
        end = count + len(opening)
        return OpenTurn(session_id, history, stored, token=(token, incarnation, window), end=end)

    async def _slice(self, session_id: str, first: int, end: int) -> builtins.list[Message]:
        """Messages `first` to `end` of a history."""
        messages_key = self._keys(session_id)[1]

        async def work(client: aioredis.Redis) -> builtins.list[Any]:
            bodies: builtins.list[Any] = await client.lrange(messages_key, first, end - 1)
            return bodies

        return [self._decode(decode_message, body) for body in await self._call(work)]

    async def end_turn(
        self, turn: OpenTurn, messages: Sequence[Message], *, run: RunEnd | None = None
    ) -> builtins.list[Message]:
        token, incarnation, window = turn.token
        stored, now = stamp(messages)
        session_id = turn.session_id
        keys = (*self._keys(session_id), self._lock_key(session_id), f"{self.prefix}op:{token}")
        args = (token, micros(now), _RETRY_DEDUPE_MS, *(encode_message(m) for m in stored))
        end: ScriptCall = ("end_turn", keys, args)

        async def step() -> int:
            if run is None:
                count: int = await self._script(*end)
                return count
            # the answer first, then the run's end: one pipeline
            finish = self._journal.finish_script(
                run.info, run.frames, max_bytes=run.max_bytes, retention=run.retention
            )
            for outcome in (outcomes := await self._batch.call_many((end, finish))):
                if isinstance(outcome, BaseException):
                    raise outcome
            result: int = outcomes[0]
            return result

        try:
            count = await self._lease.release(session_id, step)
        except BaseException:
            self._cache.forget(session_id)
            raise
        if count < 0:
            self._cache.forget(session_id)
            raise SessionNotFound.of(session_id)
        if stored:
            self._cache.appended(session_id, incarnation, count, stored, window)
        return stored

    # --- the turn lock --------------------------------------------------------------------

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """Serializes turns on one session across every worker using this Redis."""
        return self._lease.hold(session_id)

    def _lock_key(self, session_id: str) -> str:
        return f"{self.prefix}lock:{session_id}"

    async def _try_lock(self, session_id: str, token: str) -> bool:
        ttl_ms = int(self._lease.ttl * 1000)
        return bool(await self._script("take_lock", (self._lock_key(session_id),), (token, ttl_ms)))

    async def _unlock(self, session_id: str, token: str) -> None:
        await self._script("leases", (self._lock_key(session_id),), (token, ""))

    async def _renew_locks(self, held: Mapping[str, str]) -> None:
        keys = [self._lock_key(session_id) for session_id in held]
        await self._script("leases", keys, (*held.values(), int(self._lease.ttl * 1000)))
