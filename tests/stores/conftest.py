"""The `store` fixture: every store test runs on memory, SQLite and Redis.

Redis comes from `$ORBITER_TEST_REDIS_URL` (CI starts one), else from a
throwaway `redis-server` on a free port; without either the Redis cases
skip, saying why, unless `ORBITER_REQUIRE_REDIS=1` (CI), where they fail.
Each test gets its own key prefix and removes only its own keys.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
from store_helpers import BACKENDS, RedisServer, redis_unavailable_reason

from orbiter_asgi.stores import SessionStore, open_store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def skip_or_fail(reason: str) -> None:
    if os.environ.get("ORBITER_REQUIRE_REDIS") == "1":
        pytest.fail(f"ORBITER_REQUIRE_REDIS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("ORBITER_TEST_REDIS_URL")
    if url:
        yield url
        return
    reason = redis_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for stopping and pausing."""
    reason = redis_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


def _drop_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_store_url(redis_url: str, prefix: str) -> Iterator[str]:
    """A Redis store URL with a key prefix of this test's own, removed afterwards."""
    yield f"{redis_url}?prefix={prefix}"
    _drop_prefix(redis_url, prefix)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store URL: memory, an SQLite file of its own, or a Redis key prefix of its own."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    url: str = request.getfixturevalue("redis_store_url")
    return url


@pytest.fixture
async def open_stores(store_url: str) -> AsyncIterator[Callable[[], SessionStore]]:
    """Opens more stores on the same data (what another worker would see); closes them all."""
    opened: list[SessionStore] = []
    shared: SessionStore | None = None

    def make() -> SessionStore:
        nonlocal shared
        if store_url == "memory://":
            # a memory store is only shared within one process: hand out the same one
            if shared is None:
                shared = open_store(store_url)
                opened.append(shared)
            return shared
        store = open_store(store_url)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


@pytest.fixture
async def store(open_stores: Callable[[], SessionStore]) -> SessionStore:
    return open_stores()
