"""`/healthz` and `/readyz`: liveness, readiness, the drain, and API keys.

Redis going away and coming back is in `tests/stores/test_health_stores.py`,
beside the redis-server fixtures.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from starlette.testclient import TestClient

from orbiter_asgi import Agent, create_app
from orbiter_asgi.security import DEFAULT_PUBLIC_PATHS
from orbiter_asgi.stores import MemoryStore
from tests.helpers import client_for

pytestmark = pytest.mark.anyio

STORE_UNAVAILABLE = {"detail": "The session store is unavailable", "status": "store_unavailable"}


def assert_not_ready(response: httpx.Response, body: dict[str, str]) -> None:
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == body


async def test_healthz_answers_ok() -> None:
    async with client_for(create_app(agents=[Agent("assistant")])) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_readyz_is_ready_on_a_store_that_answers(kind: str, tmp_path: Path) -> None:
    store = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'sessions.db'}"
    app = create_app(agents=[Agent("assistant")], store=store)
    async with client_for(app) as client:
        response = await client.get("/readyz")
    await app.store.aclose()
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_readyz_follows_an_sqlite_file_that_cannot_be_opened_until_it_can(tmp_path: Path) -> None:
    folder = tmp_path / "not-yet"
    app = create_app(agents=[Agent("assistant")], store=f"sqlite:///{folder / 'sessions.db'}")
    async with client_for(app) as client:
        missing = await client.get("/readyz")
        folder.mkdir()
        back = await client.get("/readyz")
    await app.store.aclose()
    assert_not_ready(missing, STORE_UNAVAILABLE)  # and no path of the server's in a public body
    assert back.status_code == 200


class _HangingStore(MemoryStore):
    async def ping(self) -> None:
        await anyio.sleep_forever()


async def test_readyz_does_not_wait_on_a_store_that_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orbiter_asgi.health.READY_TIMEOUT", 0.05)
    async with client_for(create_app(agents=[Agent("assistant")], store=_HangingStore())) as client:
        with anyio.fail_after(2):
            response = await client.get("/readyz")
    assert_not_ready(
        response, {"detail": "The session store did not answer within 0.05 s", "status": "store_unavailable"}
    )


def test_readyz_is_503_while_draining_and_ready_when_the_app_starts_again() -> None:
    app = create_app(agents=[Agent("assistant")], drain_on_signal=False)
    with TestClient(app) as client:
        before = client.get("/readyz")
        client.portal.call(app.drain)  # type: ignore[union-attr]
        draining = client.get("/readyz")
        alive = client.get("/healthz")
    with TestClient(app) as client:  # a new lifespan admits turns again
        again = client.get("/readyz")
    assert before.status_code == 200
    assert draining.status_code == 503 and draining.headers["retry-after"] == "1"
    assert draining.json() == {"detail": "The server is shutting down", "status": "draining"}
    assert alive.status_code == 200  # draining is no reason to restart
    assert again.status_code == 200 and again.json() == {"status": "ready"}


async def test_health_checks_are_public_when_keys_are_on() -> None:
    secured = create_app(agents=[Agent("assistant")], api_keys=["k"])
    async with client_for(secured) as client:
        alive = await client.get("/healthz")
        ready = await client.get("/readyz")
        agents = await client.get("/agents")
    assert (alive.status_code, ready.status_code, agents.status_code) == (200, 200, 401)
    assert ready.json() == {"status": "ready"}


async def test_public_paths_of_your_own_replace_the_defaults() -> None:
    locked = create_app(agents=[Agent("assistant")], api_keys=["k"], public_paths=())
    extended = create_app(
        agents=[Agent("assistant")], api_keys=["k"], public_paths=[*DEFAULT_PUBLIC_PATHS, "/agents"]
    )
    async with client_for(locked) as client:
        assert (await client.get("/healthz")).status_code == 401
        assert (await client.get("/readyz")).status_code == 401
        assert (await client.get("/readyz", headers={"X-API-Key": "k"})).status_code == 200
    async with client_for(extended) as client:
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/agents")).status_code == 200


async def test_openapi_documents_both_under_health() -> None:
    async with client_for(create_app(agents=[Agent("assistant")])) as client:
        spec = (await client.get("/openapi.json")).json()
    healthz, readyz = spec["paths"]["/healthz"]["get"], spec["paths"]["/readyz"]["get"]
    assert healthz["tags"] == readyz["tags"] == ["health"]
    assert set(readyz["responses"]) == {"200", "503"}
    not_ready = readyz["responses"]["503"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][not_ready.rsplit("/", 1)[1]]
    assert schema["properties"]["status"] == {"enum": ["draining", "store_unavailable"]}
