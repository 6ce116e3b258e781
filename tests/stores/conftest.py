"""The `store` fixture: every store test runs on memory, SQLite, Redis and PostgreSQL.

Redis comes from `$ORBITER_TEST_REDIS_URL` (CI starts one), else from a
throwaway `redis-server` on a free port; without either the Redis cases
skip, saying why, unless `ORBITER_REQUIRE_REDIS=1` (CI), where they fail.
Each test gets its own key prefix and removes only its own keys.

PostgreSQL likewise: `$ORBITER_TEST_POSTGRES_URL`, else a throwaway cluster
(initdb + pg_ctl into a temp dir, loopback only), else a skip unless
`ORBITER_REQUIRE_POSTGRES=1`. Each test gets a Postgres schema of its own
(`?schema=`), dropped afterwards.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
from store_helpers import (
    BACKENDS,
    PostgresServer,
    RedisServer,
    drop_schemas,
    postgres_unavailable_reason,
    redis_unavailable_reason,
    with_option,
)

from orbiter_asgi.stores import SessionStore, open_store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def skip_or_fail(reason: str, *, required_by: str = "ORBITER_REQUIRE_REDIS") -> None:
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but {reason}")
    pytest.skip(reason)


def _postgres_skip_or_fail(reason: str) -> None:
    skip_or_fail(reason, required_by="ORBITER_REQUIRE_POSTGRES")


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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = os.environ.get("ORBITER_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    reason = postgres_unavailable_reason()
    if reason is not None:
        _postgres_skip_or_fail(reason)
    try:
        server = PostgresServer()
        server.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _postgres_skip_or_fail(f"could not start a throwaway PostgreSQL: {exc}")
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own, for stopping and starting again."""
    reason = postgres_unavailable_reason()
    if reason is not None:
        _postgres_skip_or_fail(reason)
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_store_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL store URL with a schema of this test's own, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield with_option(postgres_url, f"schema={schema}")
    drop_schemas(postgres_url, schema)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store URL: memory, an SQLite file of its own, a Redis key prefix
    of its own, or a Postgres schema of its own."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    url: str = request.getfixturevalue(f"{request.param}_store_url")
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
