"""The playground page: where it is served, its headers, and who may load it."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest

from orbiter_asgi import Agent, create_app
from orbiter_asgi.playground import _csp
from tests.helpers import client_for

KEY = "sk-test-0123456789"


def _page() -> str:
    return files("orbiter_asgi.playground").joinpath("index.html").read_text(encoding="utf-8")


def test_the_page_is_package_data_with_no_external_url() -> None:
    page = _page()
    assert "<script>" in page and "<style>" in page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)=["']?//""", page)  # no protocol-relative URL either


@pytest.mark.anyio
async def test_playground_is_served_with_a_strict_csp() -> None:
    async with client_for(create_app(agents=[Agent("assistant")])) as client:
        response = await client.get("/playground")
        head = await client.head("/playground")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == _page()
    csp = response.headers["content-security-policy"]
    assert csp == _csp(_page())
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]{44}'(;|$)", csp)
    assert re.search(r"style-src 'sha256-[A-Za-z0-9+/=]{44}'(;|$)", csp)
    assert "http" not in csp
    assert head.status_code == 200 and head.content == b""


@pytest.mark.anyio
async def test_root_serves_the_playground_when_no_route_does() -> None:
    async with client_for(create_app(agents=[Agent("assistant")])) as client:
        root = await client.get("/")
        posted = await client.post("/")
        other = await client.get("/nowhere")
    assert root.status_code == 200 and root.text == _page()
    assert "content-security-policy" in root.headers
    assert posted.status_code == 404
    assert other.status_code == 404 and other.json() == {"detail": "Not Found"}


@pytest.mark.anyio
async def test_a_user_root_route_added_after_create_app_wins() -> None:
    app = create_app(agents=[Agent("assistant")], api_keys=[KEY])

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"hello": "world"}

    async with client_for(app) as client:
        locked = await client.get("/")
        root = await client.get("/", headers={"Authorization": f"Bearer {KEY}"})
        page = await client.get("/playground")
    assert locked.status_code == 401  # `/` is public only while it is the playground
    assert root.json() == {"hello": "world"}
    assert page.status_code == 200


@pytest.mark.anyio
async def test_playground_false_turns_both_off() -> None:
    async with client_for(create_app(agents=[Agent("assistant")], playground=False)) as client:
        page = await client.get("/playground")
        root = await client.get("/")
    assert page.status_code == 404
    assert root.status_code == 404


@pytest.mark.anyio
async def test_the_page_is_public_under_api_keys_and_the_api_is_not() -> None:
    async with client_for(create_app(agents=[Agent("assistant")], api_keys=[KEY])) as client:
        page = await client.get("/playground")
        root = await client.get("/")
        agents = await client.get("/agents")
    assert page.status_code == 200
    assert root.status_code == 200 and root.text == page.text
    assert agents.status_code == 401


@pytest.mark.anyio
async def test_public_paths_can_lock_the_page() -> None:
    app = create_app(agents=[Agent("assistant")], api_keys=[KEY], public_paths=())
    async with client_for(app) as client:
        page = await client.get("/playground")
        root = await client.get("/")
    assert page.status_code == 401
    assert root.status_code == 401


@pytest.mark.anyio
async def test_the_playground_is_not_in_the_openapi_document() -> None:
    async with client_for(create_app(agents=[Agent("assistant")])) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/playground" not in paths and "/" not in paths
