"""The run journal of `redis://`: any worker on any machine follows, resumes and cancels a run.

Layout under the store's prefix: a hash per run (`r:{id}`) with its record
(`info`, msgspec JSON), `status`, frame counters (`count` numbered so far,
`dropped` from the head, `size` of those kept, the last `max_bytes`), its
`lease` expiry and `retention` (milliseconds), the `cancel` flag, the
`touched` time and the name of its idempotency key; a Stream per run
(`rf:{id}`) whose entry ids are the frame numbers (`n-0`), so `XRANGE`
from `after + 1` and `XREAD` from `after` need no index of their own; and
an idempotency key (`ik:{key}`) holding the fingerprint and the run id.

Every write that checks and changes is one Lua script. Times that decide
a lease come from the Redis server's clock, so workers' clocks may
disagree. A lease lasts the store's `?run_lease=` (default `LEASE_TTL`)
and is renewed every third of that. While a run runs its keys expire `retention` after its lease
would, so a run whose worker died and that nobody reads is not kept
forever; `finish` (or the reader that finds the lease lapsed) sets them
to expire `retention` after the end.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import msgspec

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

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["SCRIPTS", "RedisJournal"]

T = TypeVar("T")

POLL_INTERVAL = 0.2
"""Seconds between two looks at the cancel flags of the runs watched here."""

DEFAULT_RETENTION = 600.0
"""Seconds a run ended by a lapsed lease is kept: `finish` never told its retention."""

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# add(hash, stream, max bytes or nil for the run's last, first ARGV index of the frames)
# Frames are numbered on from `count` as stream ids `n-0`; the oldest are
# dropped past max bytes, always keeping the newest one.
_ADD = """
local function add(hash, stream, max_bytes, from)
  local row = redis.call('HMGET', hash, 'count', 'dropped', 'size', 'max_bytes')
  local count, dropped, size = tonumber(row[1]), tonumber(row[2]), tonumber(row[3])
  max_bytes = tonumber(max_bytes or row[4])
  for i = from, #ARGV do
    count = count + 1
    redis.call('XADD', stream, count .. '-0', 'f', ARGV[i])
    size = size + #ARGV[i]
  end
  if #ARGV >= from and redis.call('PTTL', stream) == -1 then
    local ttl = redis.call('PTTL', hash)
    if ttl > 0 then redis.call('PEXPIRE', stream, ttl) end
  end
  if max_bytes and size > max_bytes and count - dropped > 1 then
    while size > max_bytes and count - dropped > 1 do
      local batch = redis.call('XRANGE', stream, (dropped + 1) .. '-0', '+', 'COUNT', 64)
      if #batch == 0 then break end
      for _, entry in ipairs(batch) do
        if size <= max_bytes or count - dropped <= 1 then break end
        size = size - #entry[2][2]
        dropped = dropped + 1
      end
    end
    redis.call('XTRIM', stream, 'MINID', (dropped + 1) .. '-0')
  end
  redis.call('HSET', hash, 'count', count, 'dropped', dropped, 'size', size)
  if max_bytes then redis.call('HSET', hash, 'max_bytes', max_bytes) end
end
"""

# keep(hash, stream, ttl ms): every key of the run expires after ttl
_KEEP = """
local function keep(hash, stream, ttl)
  redis.call('PEXPIRE', hash, ttl)
  redis.call('PEXPIRE', stream, ttl)
  local key = redis.call('HGET', hash, 'key')
  if key and key ~= '' then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS: hash, stream[, idempotency key]
# ARGV: run id, info, fingerprint, lease ms, retention ms, run hash prefix, start frame
# {0}: the key names a kept run with another fingerprint; {1, info}: that run (or this
# one, when a retried call already made it); {2}: made.
_START = (
    _NOW
    + _KEEP
    + """
if #KEYS == 3 then
  local seen = redis.call('HMGET', KEYS[3], 'fp', 'run')
  if seen[2] then
    local info = redis.call('HGET', ARGV[6] .. seen[2], 'info')
    if info then
      if seen[1] ~= ARGV[3] then return {0} end
      return {1, info}
    end
  end
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], 'fp', ARGV[3], 'run', ARGV[1])
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, redis.call('HGET', KEYS[1], 'info')} end
redis.call('HSET', KEYS[1], 'info', ARGV[2], 'status', 'running', 'count', 1, 'dropped', 0,
  'size', #ARGV[7], 'lease', now + tonumber(ARGV[4]), 'retention', ARGV[5], 'cancel', 0,
  'touched', 0, 'key', KEYS[3] or '')
redis.call('XADD', KEYS[2], '1-0', 'f', ARGV[7])
keep(KEYS[1], KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[5]))
return {2}
"""
)

# KEYS: hash, stream; ARGV: token, max bytes, frames...
# The token of the last append makes a call retried after a lost reply a no-op;
# a run that ended (its lease lapsed meanwhile) takes no more frames.
_APPEND = (
    _ADD
    + """
local row = redis.call('HMGET', KEYS[1], 'status', 'op')
if row[1] ~= 'running' or row[2] == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'op', ARGV[1])
add(KEYS[1], KEYS[2], ARGV[2], 3)
return 1
"""
)

# KEYS: hash, stream; ARGV: info, status, retention ms, max bytes, frames...
_FINISH = (
    _ADD
    + _KEEP
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
add(KEYS[1], KEYS[2], ARGV[4], 5)
redis.call('HSET', KEYS[1], 'info', ARGV[1], 'status', ARGV[2])
keep(KEYS[1], KEYS[2], ARGV[3])
return 1
"""
)

# KEYS: hash, stream; ARGV: ended info, the count its frames follow, frames...
# Only while the run still runs with its lease lapsed and no frame came since
# the caller looked: of many readers, one ends it.
_LOST = (
    _NOW
    + _ADD
    + _KEEP
    + """
local row = redis.call('HMGET', KEYS[1], 'status', 'lease', 'count', 'retention')
if row[1] ~= 'running' or tonumber(row[2]) >= now or tonumber(row[3]) ~= tonumber(ARGV[2]) then
  return 0
end
add(KEYS[1], KEYS[2], nil, 3)
redis.call('HSET', KEYS[1], 'info', ARGV[1], 'status', 'failed')
keep(KEYS[1], KEYS[2], row[4])
return 1
"""
)

# KEYS: hash, stream; ARGV: after ('' = no frames), cancel ('1' sets the flag)
# nil when unknown; else {status, info, lease lapsed, count, dropped, frames after `after`}
_STATE = (
    _NOW
    + """
local row = redis.call('HMGET', KEYS[1], 'status', 'info', 'lease', 'count', 'dropped')
if not row[1] then return false end
local lapsed = (row[1] == 'running' and tonumber(row[3]) < now) and 1 or 0
if ARGV[2] == '1' and row[1] == 'running' then redis.call('HSET', KEYS[1], 'cancel', 1) end
local frames = {}
if ARGV[1] ~= '' and tonumber(ARGV[1]) >= tonumber(row[5]) then
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], (tonumber(ARGV[1]) + 1) .. '-0', '+')) do
    frames[#frames + 1] = entry[2][2]
  end
end
return {row[1], row[2], lapsed, tonumber(row[4]), tonumber(row[5]), frames}
"""
)

# KEYS: hash, stream of each watched run; ARGV: lease ms ('' = only look)
# The cancel flag of each run; renews the leases (and the keys' expiry) of those running.
_POLL = (
    _NOW
    + _KEEP
    + """
local flags = {}
for i = 1, #KEYS, 2 do
  local row = redis.call('HMGET', KEYS[i], 'status', 'cancel', 'retention')
  flags[#flags + 1] = row[2] == '1' and 1 or 0
  if ARGV[1] ~= '' and row[1] == 'running' then
    redis.call('HSET', KEYS[i], 'lease', now + tonumber(ARGV[1]))
    keep(KEYS[i], KEYS[i + 1], tonumber(ARGV[1]) + tonumber(row[3]))
  end
end
return flags
"""
)

# KEYS: hash; ARGV: now (seconds since the epoch)
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'touched', ARGV[1]) end
return 1
"""

SCRIPTS: tuple[tuple[str, str], ...] = (
    ("run_start", _START),
    ("run_append", _APPEND),
    ("run_finish", _FINISH),
    ("run_lost", _LOST),
    ("run_state", _STATE),
    ("run_poll", _POLL),
    ("run_touch", _TOUCH),
)
"""The journal's Lua scripts, by name, for the store to register with its others."""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RunInfo).decode


class Call(Protocol):
    def __call__(self, work: Callable[[aioredis.Redis], Awaitable[T]]) -> Awaitable[T]: ...


Script = Callable[[str, Sequence[str], Sequence[Any]], Awaitable[Any]]
ScriptCall = tuple[str, Sequence[str], Sequence[Any]]
"""A script's name, keys and arguments."""


class _State(NamedTuple):
    status: bytes
    info: bytes
    lapsed: int
    last: int  # the number of the last frame
    dropped: int
    frames: list[bytes]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisJournal:
    """Runs in Redis, beside the sessions of a `RedisStore` (its `runs`).

    Parameters:
        call: runs a piece of work on the store's client, errors made `StoreError`.
        script: runs one of `SCRIPTS` by name, as the store registered it.
        prefix: the store's key prefix.
        timeout: the store's socket timeout; a blocking read waits less than that at a time.
        lease: seconds the lease of a run this process runs lasts unless
            renewed; None: `LEASE_TTL`.
    """

    def __init__(
        self, call: Call, script: Script, *, prefix: str, timeout: float, lease: float | None = None
    ) -> None:
        assert lease is None or lease > 0
        self._call = call
        self._script = script
        self._prefix = prefix
        self._lease = lease
        # a BLOCK as long as the socket timeout would read as a dead connection
        self._block = max(0.05, min(timeout - 1.0, timeout / 2))
        self._watch = CancelWatch(self._poll, lease=lambda: self.lease, interval=POLL_INTERVAL)

    @property
    def lease(self) -> float:
        # read when used, not copied at construction: `LEASE_TTL` is patched in tests
        return self._lease if self._lease is not None else LEASE_TTL

    def _keys(self, run_id: str) -> tuple[str, str]:
        return f"{self._prefix}r:{run_id}", f"{self._prefix}rf:{run_id}"

    def _decode(self, raw: bytes) -> RunInfo:
        try:
            return _decode(raw)
        except msgspec.DecodeError as exc:
            raise StoreError(f"Redis store holds an unreadable run: {exc}") from None

    # --- writes by the process running the run -------------------------------------

    async def start(
        self, info: RunInfo, *, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> RunInfo:
        result = await self._script(*self.start_script(info, idempotency_key, fingerprint))
        if result[0] == 0:
            raise IdempotencyMismatch("This Idempotency-Key was used with another request body")
        return self._decode(result[1]) if result[0] == 1 else info

    def start_script(
        self, info: RunInfo, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> ScriptCall:
        """The script call of `start`, for a caller that sends it with others."""
        keys: tuple[str, ...] = self._keys(info.id)
        if idempotency_key is not None:
            keys = (*keys, f"{self._prefix}ik:{idempotency_key}")
        args = (
            info.id,
            _encode(info),
            fingerprint,
            _ms(self.lease),
            _ms(DEFAULT_RETENTION),
            f"{self._prefix}r:",
            start_frame(info),
        )
        return "run_start", keys, args

    async def append(self, run_id: str, frames: Sequence[bytes], *, max_bytes: int) -> None:
        if frames:
            args = (uuid.uuid4().hex, max_bytes, *frames)
            await self._script("run_append", self._keys(run_id), args)

    async def append_chunk(self, run_id: str, chunk: bytes, count: int, *, max_bytes: int) -> None:
        # one stream entry a frame keeps reads, trims and XREAD's wake-up exact;
        # splitting here costs far less than the round trip it rides on
        await self.append(run_id, split_frames(chunk), max_bytes=max_bytes)

    async def finish(
        self, info: RunInfo, frames: Sequence[bytes] | None, *, max_bytes: int, retention: float
    ) -> None:
        await self._script(*self.finish_script(info, frames, max_bytes=max_bytes, retention=retention))

    def finish_script(
        self, info: RunInfo, frames: Sequence[bytes] | None, *, max_bytes: int, retention: float
    ) -> ScriptCall:
        """The script call of `finish`, for a caller that sends it with others;
        the run is unwatched now, as `finish` does first."""
        if frames is None:
            frames = end_frames(info, 2)
        args = (_encode(info), info.status, _ms(retention), max_bytes, *frames)
        # forgotten first, so the poller cannot take the end for a cancel from elsewhere
        self.unwatch(info.id)
        return "run_finish", self._keys(info.id), args

    # --- reads, by any process ------------------------------------------------------------

    async def _state(self, run_id: str, after: int | None, *, cancel: bool = False) -> _State | None:
        """The run as it is; a run whose lease lapsed is ended first, as `worker_lost`."""
        keys = self._keys(run_id)
        args = ("" if after is None else after, "1" if cancel else "0")
        while True:
            raw = await self._script("run_state", keys, args)
            if raw is None:
                return None
            state = _State(*raw)
            if not state.lapsed:
                return state
            ended, frames = worker_lost(self._decode(state.info), state.last + 1)
            # one reader wins; every one of them then reads the run as it ended
            await self._script("run_lost", keys, (_encode(ended), state.last, *frames))

    async def get(self, run_id: str) -> RunInfo | None:
        state = await self._state(run_id, None)
        return self._decode(state.info) if state is not None else None

    async def read(self, run_id: str, after: int, *, wait: float) -> JournalSlice | None:
        deadline = time.monotonic() + wait
        while True:
            state = await self._state(run_id, after)
            if state is None:
                return None
            if after < state.dropped:
                raise JournalGone(
                    f"Events {after + 1} to {state.dropped} of run {run_id!r} were dropped to keep "
                    "its journal within max_run_journal_bytes"
                )
            ended = state.status != b"running"
            left = deadline - time.monotonic()
            if state.frames or ended or left <= 0:
                return JournalSlice(state.frames, after + 1, ended)
            await self._block_for(run_id, after, min(left, self._block))

    async def _block_for(self, run_id: str, after: int, seconds: float) -> None:
        # returns at once when frames after `after` exist already, so none is missed
        # between the look above and this wait; `finish` adds frames, which wakes it
        stream = self._keys(run_id)[1]

        async def work(client: aioredis.Redis) -> object:
            return await client.xread({stream: f"{after}-0"}, count=1, block=_ms(seconds))

        await self._call(work)

    # --- cancels and leases -------------------------------------------------------------------

    async def cancel(self, run_id: str) -> RunInfo | None:
        state = await self._state(run_id, None, cancel=True)
        if state is None:
            return None
        self._watch.fire(run_id)
        return self._decode(state.info)

    def watch(self, run_id: str, on_cancel: Callable[[], None]) -> None:
        self._watch.watch(run_id, on_cancel)

    def unwatch(self, run_id: str) -> None:
        self._watch.unwatch(run_id)

    async def _poll(self, run_ids: list[str], renew: bool) -> list[str]:
        keys = [key for run_id in run_ids for key in self._keys(run_id)]
        flags = await self._script("run_poll", keys, (_ms(self.lease) if renew else "",))
        return [run_id for run_id, flag in zip(run_ids, flags, strict=True) if flag]

    async def aclose(self) -> None:
        await self._watch.aclose()

    # --- clients following ------------------------------------------------------------------------

    async def touch(self, run_id: str) -> None:
        await self._script("run_touch", self._keys(run_id)[:1], (repr(time.time()),))

    async def touched_since(self, run_id: str, moment: float) -> bool:
        key = self._keys(run_id)[0]

        async def work(client: aioredis.Redis) -> Any:
            return await client.hget(key, "touched")

        touched = await self._call(work)
        return touched is not None and float(touched) >= moment
