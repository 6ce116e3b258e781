"""Every code example of the guide, renamed, runs."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orbiter_asgi import registered_agents
from tests.helpers import client_for
from tests.servers import running_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / name))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(["--store", "memory://"], env={"OPENAI_API_KEY": ""}) as url:
        yield url


@pytest.mark.anyio
async def test_basic_usage_serves_the_openai_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    app = run_example("basic_usage.py")["app"]
    async with client_for(app) as client:
        agents = (await client.get("/agents")).json()
        chat = await client.post("/chat", json={"input": "What is Python?"})
    assert agents == [{"name": "assistant", "model": "openai:gpt-4o", "description": ""}]
    assert chat.status_code == 502  # no key here: a clear error, never a request without one
    assert "OPENAI_API_KEY" in chat.json()["detail"]


@pytest.mark.anyio
async def test_creating_the_app_has_every_route() -> None:
    app = run_example("creating_the_app.py")["app"]
    paths = {getattr(r, "path", None) for r in app.routes}
    assert {"/chat", "/agents", "/sessions", "/stream", "/ws/chat"} <= paths


def test_registering_agents() -> None:
    run_example("registering_agents.py")
    assert list(registered_agents) == ["assistant", "coder", "researcher"]
    assert registered_agents["researcher"].model == "anthropic:claude-3-5-sonnet"


def test_chat_request() -> None:
    request = run_example("chat_request.py")["request"]
    assert (request.agent_name, request.input, request.session_id, request.stream) == (
        "assistant",
        "What is Python?",
        "session-123",
        False,
    )


@pytest.mark.anyio
async def test_custom_middleware() -> None:
    registered_agents.register(echo_agent())
    app = run_example("custom_middleware.py")["app"]
    async with client_for(app) as client:
        denied = await client.post("/chat", json={"input": "hi"})
        allowed = await client.post("/chat", json={"input": "hi"}, headers={"X-API-Key": "k"})
    assert denied.status_code == 401 and denied.json() == {"error": "Missing API key"}
    assert allowed.json()["output"] == "hi"


@pytest.mark.anyio
async def test_multiple_agents() -> None:
    app = run_example("multiple_agents.py")["app"]
    async with client_for(app) as client:
        outputs = [
            (await client.post("/chat", json={"agent_name": name, "input": name})).json()["agent_name"]
            for name in ("general", "coder", "analyst")
        ]
    assert outputs == ["general", "coder", "analyst"]


@pytest.mark.anyio
async def test_health_check() -> None:
    registered_agents.register(echo_agent())
    app = run_example("health_check.py")["app"]
    async with client_for(app) as client:
        assert (await client.get("/health")).json() == {"status": "ok", "agents": 1}


def echo_agent() -> Any:
    from orbiter_asgi import Agent

    return Agent("assistant")


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("chat_streaming_client.py", '"output":"Explain decorators"'),
        ("sse_client.py", '"output":"Tell me a story"'),
        ("websocket_client.py", "Hello!"),
    ],
)
@pytest.mark.e2e
def test_client_examples_against_a_real_server(server: str, example: str, expected: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example)],
        env={**os.environ, "ORBITER_URL": server},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
