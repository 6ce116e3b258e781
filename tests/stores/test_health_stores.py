"""`SessionStore.ping()` on every backend, and `/readyz` while a real Redis
goes away, hangs and comes back (and a real PostgreSQL goes away and comes
back), under one app that is never restarted."""

from __future__ import annotations

import time

import anyio
import pytest
from store_helpers import PostgresServer, RedisServer, with_option

from orbiter_asgi import Agent, create_app
from orbiter_asgi.exceptions import StoreError
from tests.helpers import client_for

pytestmark = pytest.mark.anyio

STORE_UNAVAILABLE = {"detail": "The session store is unavailable", "status": "store_unavailable"}


async def test_every_store_answers_a_ping_and_is_ready(store_url: str) -> None:
    app = create_app(agents=[Agent("assistant")], store=store_url)
    try:
        await app.store.ping()  # answers: raises nothing
        async with client_for(app) as client:
            response = await client.get("/readyz")
    finally:
        await app.store.aclose()
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.mark.redis
async def test_readyz_follows_a_redis_that_stops_and_starts_again(redis_server: RedisServer) -> None:
    app = create_app(agents=[Agent("assistant")], store=f"{redis_server.url}?timeout=1")
    try:
        async with client_for(app) as client:
            up = await client.get("/readyz")
            redis_server.stop()
            down = await client.get("/readyz")
            with pytest.raises(StoreError):
                await app.store.ping()
            alive = await client.get("/healthz")
            redis_server.start()
            back = await client.get("/readyz")
    finally:
        await app.store.aclose()
    assert up.status_code == 200
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    assert down.json() == STORE_UNAVAILABLE
    assert alive.status_code == 200
    assert back.status_code == 200 and back.json() == {"status": "ready"}


@pytest.mark.redis
async def test_readyz_on_a_hung_redis_answers_within_the_store_timeout(redis_server: RedisServer) -> None:
    app = create_app(agents=[Agent("assistant")], store=f"{redis_server.url}?timeout=0.2")
    try:
        async with client_for(app) as client:
            assert (await client.get("/readyz")).status_code == 200
            redis_server.pause()  # the connection stays open; PING gets no answer
            try:
                started = time.monotonic()
                with anyio.fail_after(5):
                    hung = await client.get("/readyz")
                waited = time.monotonic() - started
            finally:
                redis_server.resume()
            back = await client.get("/readyz")
    finally:
        await app.store.aclose()
    assert hung.status_code == 503 and hung.json() == STORE_UNAVAILABLE
    assert waited < 2  # the store's own timeout, not the probe's
    assert back.status_code == 200


@pytest.mark.redis
async def test_readyz_gives_up_on_a_hung_redis_and_its_client_recovers(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orbiter_asgi.health.READY_TIMEOUT", 0.2)  # below the store's own 5 s
    app = create_app(agents=[Agent("assistant")], store=redis_server.url)
    try:
        async with client_for(app) as client:
            assert (await client.get("/readyz")).status_code == 200
            redis_server.pause()
            try:
                with anyio.fail_after(5):
                    hung = await client.get("/readyz")
            finally:
                redis_server.resume()
            back = await client.get("/readyz")  # the PING cut short left no stray reply behind
            session = await app.store.create(title="after")
            read = await app.store.get(session.id)
    finally:
        await app.store.aclose()
    assert hung.status_code == 503
    assert hung.json() == {
        "detail": "The session store did not answer within 0.2 s",
        "status": "store_unavailable",
    }
    assert back.status_code == 200
    assert read.title == "after"


@pytest.mark.postgres
async def test_readyz_follows_a_postgres_that_stops_and_starts_again(postgres_server: PostgresServer) -> None:
    app = create_app(agents=[Agent("assistant")], store=with_option(postgres_server.url, "timeout=1"))
    try:
        async with client_for(app) as client:
            up = await client.get("/readyz")
            postgres_server.stop()
            down = await client.get("/readyz")
            with pytest.raises(StoreError):
                await app.store.ping()
            alive = await client.get("/healthz")
            postgres_server.start()
            back = await client.get("/readyz")
    finally:
        await app.store.aclose()
    assert up.status_code == 200
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    assert down.json() == STORE_UNAVAILABLE
    assert alive.status_code == 200
    assert back.status_code == 200 and back.json() == {"status": "ready"}
