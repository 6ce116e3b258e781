"""A store that is down, goes away, times out or holds bad data: a clear 503, then recovery."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from store_helpers import PostgresServer, RedisServer, with_option

from orbiter_asgi import Agent, create_app
from orbiter_asgi.exceptions import RequestError
from orbiter_asgi.models import Message
from orbiter_asgi.stores import SessionStore, open_store
from orbiter_asgi.stores import postgres as postgres_store
from orbiter_asgi.stores import sqlite as sqlite_store
from orbiter_asgi.stores._records import encode_message, micros
from orbiter_asgi.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """`serve(store, agents)` → a client of an app over that store; all closed afterwards."""
    opened: list[tuple[httpx.AsyncClient, SessionStore]] = []

    def make(store: SessionStore, agents: Any = None) -> httpx.AsyncClient:
        app = create_app(agents=agents or [Agent("assistant")], store=store)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        opened.append((client, store))
        return client

    yield make
    for client, store in opened:
        await client.aclose()
        await store.aclose()


def _assert_503(response: httpx.Response, *fragments: str) -> str:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for fragment in fragments:
        assert fragment in detail
    return detail


# --- Redis ---------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_down_then_back(
    redis_server: RedisServer, serve: Callable[..., httpx.AsyncClient]
) -> None:
    client = serve(open_store(f"{redis_server.url}?prefix=down:&timeout=2"))
    assert (await client.post("/sessions", json={})).status_code == 201
    redis_server.stop()
    _assert_503(await client.post("/sessions", json={}), "Redis store unavailable")
    _assert_503(await client.get("/sessions"), "Redis store unavailable")
    _assert_503(await client.post("/chat", json={"input": "hi", "session_id": "s"}))
    # a chat without a session needs the store too: its run is journaled there
    _assert_503(await client.post("/chat", json={"input": "hi"}), "Redis store unavailable")
    redis_server.start()
    assert (await client.post("/sessions", json={})).status_code == 201
    response = await client.post("/chat", json={"input": "back", "session_id": "s"})
    assert response.status_code == 200
    assert [m["content"] for m in (await client.get("/sessions/s")).json()["messages"]] == [
        "back",
        "back",
    ]


@pytest.mark.redis
async def test_redis_goes_away_mid_request(
    redis_server: RedisServer, serve: Callable[..., httpx.AsyncClient]
) -> None:
    async def vanishing(input: str) -> str:
        await anyio.to_thread.run_sync(redis_server.stop)
        return input

    store = open_store(f"{redis_server.url}?prefix=mid:&timeout=2")
    client = serve(store, {"assistant": Agent("assistant"), "vanishing": vanishing})
    body = {"input": "lost", "session_id": "s", "agent_name": "vanishing"}
    _assert_503(await client.post("/chat", json=body), "Redis store unavailable")

    redis_server.start()
    streamed = await client.post("/chat", json={**body, "stream": True})
    assert streamed.status_code == 200
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "store_unavailable"

    redis_server.start()
    response = await client.post("/chat", json={"input": "fine", "session_id": "t"})
    assert response.status_code == 200
    assert (await client.get("/sessions/t/messages")).status_code == 200


@pytest.mark.redis
async def test_redis_timeout_then_recovery(
    redis_server: RedisServer, serve: Callable[..., httpx.AsyncClient]
) -> None:
    client = serve(open_store(f"{redis_server.url}?prefix=slow:&timeout=0.3"))
    assert (await client.post("/sessions", json={"id": "s"})).status_code == 201
    redis_server.pause()
    try:
        _assert_503(await client.get("/sessions/s"), "Redis store unavailable", "imeout")
    finally:
        redis_server.resume()
    assert (await client.get("/sessions/s")).status_code == 200


# --- SQLite ----------------------------------------------------------------------------


async def test_sqlite_corrupted_file_then_replaced(
    tmp_path: Path, serve: Callable[..., httpx.AsyncClient]
) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database, just some bytes " * 200)
    client = serve(open_store(f"sqlite:///{path}"))
    _assert_503(await client.get("/sessions"), str(path), "not a database")
    _assert_503(await client.post("/chat", json={"input": "x", "session_id": "s"}))
    path.unlink()
    assert (await client.get("/sessions")).status_code == 200
    assert (await client.post("/chat", json={"input": "x", "session_id": "s"})).status_code == 200


async def test_sqlite_foreign_file(tmp_path: Path, serve: Callable[..., httpx.AsyncClient]) -> None:
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    conn.close()
    client = serve(open_store(f"sqlite:///{path}"))
    _assert_503(await client.get("/sessions"), "not an orbiter-asgi session database")
    with sqlite3.connect(path) as conn:  # left as found
        assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]
    conn.close()


async def test_sqlite_newer_schema(tmp_path: Path, serve: Callable[..., httpx.AsyncClient]) -> None:
    path = tmp_path / "newer.db"
    store = open_store(f"sqlite:///{path}")
    await store.create(session_id="old")
    await store.aclose()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {sqlite_store.SCHEMA_VERSION + 1}")
    conn.close()
    client = serve(open_store(f"sqlite:///{path}"))
    _assert_503(await client.get("/sessions/old"), "newer", "upgrade orbiter-asgi")


async def test_sqlite_busy_file_times_out_then_recovers(
    tmp_path: Path, serve: Callable[..., httpx.AsyncClient]
) -> None:
    path = tmp_path / "busy.db"
    client = serve(open_store(f"sqlite:///{path}?timeout=0.2"))
    assert (await client.post("/sessions", json={"id": "s"})).status_code == 201
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        _assert_503(await client.post("/sessions", json={}), "locked")
        _assert_503(await client.post("/sessions/s/messages", json={"role": "user"}))
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert (await client.post("/sessions/s/messages", json={"role": "user"})).status_code == 201


async def test_sqlite_upgrades_an_older_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    store = open_store(url)
    session = await store.create(session_id="kept", metadata={"a": 1})
    await store.aclose()
    future = (*sqlite_store.MIGRATIONS, ("ALTER TABLE sessions ADD COLUMN pinned INTEGER",))
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", future)
    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", len(future))
    upgraded = open_store(url)
    try:
        assert await upgraded.get("kept") == session
    finally:
        await upgraded.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(future),)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(sessions)")]
        assert "pinned" in columns
    conn.close()


async def test_sqlite_upgrades_a_version_1_file_to_titles(tmp_path: Path) -> None:
    # a file as orbiter-asgi wrote it before sessions had titles
    path = tmp_path / "v1.db"
    written = Message(role="user", content="from v1", created_at=datetime(2024, 5, 6, tzinfo=UTC))
    created = micros(datetime(2024, 5, 6, tzinfo=UTC))
    with sqlite3.connect(path) as conn:
        for statement in sqlite_store.MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {sqlite_store.APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO sessions (id, agent_name, metadata, message_count, created_at, updated_at) "
            "VALUES ('old', 'assistant', '{\"k\": 1}', 1, ?, ?)",
            (created, created),
        )
        conn.execute(
            "INSERT INTO messages (session_id, seq, body) VALUES ('old', 0, ?)",
            (encode_message(written).decode(),),
        )
    conn.close()
    store = SQLiteStore(f"sqlite:///{path}")
    try:
        session = await store.get("old")
        assert (session.agent_name, session.title, session.metadata) == ("assistant", "", {"k": 1})
        assert session.messages == [written]
        assert [(i.id, i.title, i.message_count) for i in (await store.list()).items] == [("old", "", 1)]
        titled = await store.update("old", title="Named at last")
        assert titled.title == "Named at last"
        assert titled.messages == [written]
        assert (await store.get("old")).title == "Named at last"
        await store.append("old", [Message(role="assistant", content="after")])
        assert [m.content for m in await store.messages("old")] == ["from v1", "after"]
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (sqlite_store.SCHEMA_VERSION,)
    conn.close()


async def test_busy_session_is_a_503(tmp_path: Path, serve: Callable[..., httpx.AsyncClient]) -> None:
    url = f"sqlite:///{tmp_path / 'turns.db'}?lock_wait=0.2"
    holder = open_store(url)
    client = serve(open_store(url))
    try:
        turn = {"input": "x", "session_id": "s"}
        async with holder.lock("s"):
            _assert_503(await client.post("/chat", json=turn), "busy")
        assert (await client.post("/chat", json=turn)).status_code == 200
    finally:
        await holder.aclose()


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_down_then_back(
    postgres_server: PostgresServer, serve: Callable[..., httpx.AsyncClient]
) -> None:
    client = serve(open_store(with_option(postgres_server.url, "timeout=1")))
    assert (await client.post("/sessions", json={})).status_code == 201
    postgres_server.stop()
    _assert_503(await client.post("/sessions", json={}), "PostgreSQL store")
    _assert_503(await client.get("/sessions"), "PostgreSQL store")
    _assert_503(await client.post("/chat", json={"input": "hi", "session_id": "s"}))
    _assert_503(await client.post("/chat", json={"input": "hi"}), "PostgreSQL store")
    postgres_server.start()
    # the pooled connections the restart closed are dropped, not handed out
    assert (await client.post("/sessions", json={})).status_code == 201
    response = await client.post("/chat", json={"input": "back", "session_id": "s"})
    assert response.status_code == 200
    assert [m["content"] for m in (await client.get("/sessions/s")).json()["messages"]] == ["back", "back"]


@pytest.mark.postgres
async def test_postgres_statement_timeout_then_recovery(
    postgres_store_url: str, serve: Callable[..., httpx.AsyncClient]
) -> None:
    client = serve(open_store(with_option(postgres_store_url, "timeout=0.3")))
    assert (await client.post("/sessions", json={"id": "s"})).status_code == 201
    schema = postgres_store_url.rpartition("schema=")[2]
    async with await psycopg.AsyncConnection.connect(postgres_store_url.partition("?")[0]) as other:
        await other.execute(f'LOCK TABLE "{schema}".sessions IN ACCESS EXCLUSIVE MODE')
        _assert_503(await client.get("/sessions/s"), "PostgreSQL store")
        await other.rollback()
    assert (await client.get("/sessions/s")).status_code == 200


@pytest.mark.postgres
async def test_postgres_newer_schema(
    postgres_store_url: str, serve: Callable[..., httpx.AsyncClient]
) -> None:
    store = open_store(postgres_store_url)
    await store.create(session_id="old")
    await store.aclose()
    schema = postgres_store_url.rpartition("schema=")[2]
    async with await psycopg.AsyncConnection.connect(postgres_store_url.partition("?")[0]) as conn:
        await conn.execute(f'UPDATE "{schema}".schema_version SET version = version + 1')
    client = serve(open_store(postgres_store_url))
    _assert_503(await client.get("/sessions/old"), "newer", "upgrade orbiter-asgi")


@pytest.mark.postgres
async def test_postgres_foreign_schema(
    postgres_store_url: str, serve: Callable[..., httpx.AsyncClient]
) -> None:
    schema = postgres_store_url.rpartition("schema=")[2]
    async with await psycopg.AsyncConnection.connect(postgres_store_url.partition("?")[0]) as conn:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f"CREATE TABLE \"{schema}\".users (name text)")
    client = serve(open_store(postgres_store_url))
    _assert_503(await client.get("/sessions"), "not an orbiter-asgi session schema")


@pytest.mark.postgres
async def test_postgres_upgrades_an_older_schema_once_for_many_workers(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(postgres_store_url)
    session = await store.create(session_id="kept", metadata={"a": 1})
    await store.aclose()
    future = (*postgres_store.MIGRATIONS, ("ALTER TABLE {s}.sessions ADD COLUMN pinned boolean",))
    monkeypatch.setattr(postgres_store, "MIGRATIONS", future)
    monkeypatch.setattr(postgres_store, "SCHEMA_VERSION", len(future))
    workers = [open_store(postgres_store_url) for _ in range(6)]
    try:
        found: list[object] = []

        async def read(worker: SessionStore) -> None:
            found.append(await worker.get("kept"))

        async with anyio.create_task_group() as group:  # all migrate at once: one does
            for worker in workers:
                group.start_soon(read, worker)
        assert found == [session] * 6
    finally:
        for worker in workers:
            await worker.aclose()
    schema = postgres_store_url.rpartition("schema=")[2]
    async with await psycopg.AsyncConnection.connect(postgres_store_url.partition("?")[0]) as conn:
        version = await (await conn.execute(f'SELECT version FROM "{schema}".schema_version')).fetchall()
        assert version == [(len(future),)]
        columns = await conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (schema, "sessions"),
        )
        assert ("pinned",) in await columns.fetchall()


@pytest.mark.postgres
async def test_postgres_busy_session_is_a_503(
    postgres_store_url: str, serve: Callable[..., httpx.AsyncClient]
) -> None:
    url = with_option(postgres_store_url, "lock_wait=0.2")
    holder = open_store(url)
    client = serve(open_store(url))
    try:
        turn = {"input": "x", "session_id": "s"}
        async with holder.lock("s"):
            _assert_503(await client.post("/chat", json=turn), "busy")
        assert (await client.post("/chat", json=turn)).status_code == 200
    finally:
        await holder.aclose()


@pytest.mark.postgres
async def test_postgres_nul_in_an_id_is_a_400_and_in_a_title_is_kept(postgres_store_url: str) -> None:
    store = open_store(postgres_store_url)
    try:
        with pytest.raises(RequestError):
            await store.create(session_id="a\x00b")
        created = await store.create(title="nul \x00 inside")
        assert (await store.get(created.id)).title == "nul \x00 inside"
    finally:
        await store.aclose()
