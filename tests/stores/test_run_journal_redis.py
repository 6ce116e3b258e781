"""The Redis run journal: what the shared suite cannot show from outside.

A lapsed lease is forced by writing the run's hash directly, and the keys'
expiry is read with a client of our own.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from orbiter_asgi.models import RunInfo
from orbiter_asgi.stores.journal import JournalSlice
from orbiter_asgi.stores.redis import RedisStore

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

MiB = 1 << 20


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def stores(redis_store_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    one, two = RedisStore(redis_store_url), RedisStore(redis_store_url)
    yield one, two
    await one.aclose()
    await two.aclose()


def _info() -> RunInfo:
    return RunInfo(id=secrets.token_urlsafe(16), agent_name="assistant", session_id="s")


def _frame(run_id: str, n: int) -> bytes:
    return b'id: %b:%d\ndata: {"type":"text","content":"w"}\n\n' % (run_id.encode(), n)


async def test_a_run_whose_lease_lapsed_ends_as_worker_lost(
    stores: tuple[RedisStore, RedisStore], raw: aioredis.Redis, prefix: str
) -> None:
    owner, other = stores
    info = _info()
    await owner.runs.start(info)
    await owner.runs.append(info.id, [_frame(info.id, 2), _frame(info.id, 3)], max_bytes=MiB)
    await raw.hset(f"{prefix}r:{info.id}", "lease", 0)  # its worker stopped renewing long ago

    # many readers at once: one ends the run, all read the same end
    ended: list[RunInfo | None] = []
    slices: list[JournalSlice | None] = []

    async def get(store: RedisStore) -> None:
        ended.append(await store.runs.get(info.id))

    async def read(store: RedisStore) -> None:
        slices.append(await store.runs.read(info.id, 3, wait=1))

    async with anyio.create_task_group() as group:
        for store in (owner, other):
            group.start_soon(get, store)
            group.start_soon(read, store)
    run = ended[0]
    assert run is not None and run == ended[1]
    assert run.status == "failed" and run.error is not None and run.error.code == "worker_lost"
    assert run.ended_at is not None
    for piece in slices:
        assert piece is not None and piece.ended and piece.first == 4
        error, done = piece.frames
        assert error.startswith(b"id: %b:4\n" % info.id.encode()) and b'"code":"worker_lost"' in error
        assert done.startswith(b"id: %b:5\n" % info.id.encode()) and b"[DONE]" in done

    # the worker, alive after all, writes no more into an ended run
    await owner.runs.append(info.id, [_frame(info.id, 4)], max_bytes=MiB)
    late = await other.runs.read(info.id, 0, wait=0)
    assert late is not None and len(late.frames) == 5 and late.frames[-1] == done
    assert await raw.pttl(f"{prefix}r:{info.id}") > 500_000  # kept the default retention


async def test_every_key_of_a_run_expires_after_finish(
    stores: tuple[RedisStore, RedisStore], raw: aioredis.Redis, prefix: str
) -> None:
    store, _ = stores
    info = _info()
    await store.runs.start(info, idempotency_key="k", fingerprint="f")
    await store.runs.append(info.id, [_frame(info.id, 2)], max_bytes=MiB)
    keys = [f"{prefix}r:{info.id}", f"{prefix}rf:{info.id}", f"{prefix}ik:k"]
    for key in keys:  # while it runs: its lease, then the longest retention
        assert await raw.pttl(key) > 600_000
    ended = RunInfo(id=info.id, agent_name="assistant", status="completed")
    await store.runs.finish(ended, [_frame(info.id, 3)], max_bytes=MiB, retention=30)
    for key in keys:
        assert 0 < await raw.pttl(key) <= 30_000


async def test_a_blocked_reader_wakes_when_the_run_finishes(stores: tuple[RedisStore, RedisStore]) -> None:
    owner, follower = stores
    info = _info()
    await owner.runs.start(info)
    got: list[JournalSlice | None] = []

    async def follow() -> None:
        got.append(await follower.runs.read(info.id, 1, wait=10))

    started = time.monotonic()
    async with anyio.create_task_group() as group:
        group.start_soon(follow)
        await anyio.sleep(0.2)
        ended = RunInfo(id=info.id, agent_name="assistant", status="completed")
        await owner.runs.finish(ended, [b"final\n\n", b"done\n\n"], max_bytes=MiB, retention=60)
    assert time.monotonic() - started < 2
    [piece] = got
    assert piece is not None and piece.frames == [b"final\n\n", b"done\n\n"] and piece.ended


async def test_a_wait_longer_than_the_socket_timeout_is_no_error(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url, timeout=1)
    try:
        info = _info()
        await store.runs.start(info)
        started = time.monotonic()
        piece = await store.runs.read(info.id, 1, wait=2.2)
        assert piece is not None and piece.frames == [] and not piece.ended
        assert 2.2 <= time.monotonic() - started < 4
    finally:
        await store.aclose()


async def test_the_poller_runs_only_while_runs_are_watched(stores: tuple[RedisStore, RedisStore]) -> None:
    owner, other = stores
    info = _info()
    await owner.runs.start(info)
    calls: list[str] = []
    owner.runs.watch(info.id, lambda: calls.append(info.id))
    poller = owner._journal._watch.task
    assert poller is not None and not poller.done()
    await other.runs.cancel(info.id)
    await other.runs.cancel(info.id)
    await anyio.sleep(0.6)
    assert calls == [info.id]  # once, however often it is cancelled
    owner.runs.unwatch(info.id)
    await anyio.sleep(0.4)
    assert poller.done()
