from __future__ import annotations

import os
from pathlib import Path

import pytest

from orbiter_asgi import Agent, create_app
from tests.helpers import client_for

pytestmark = pytest.mark.anyio


def get_weather(city: str, unit: str = "celsius") -> str:
    """Current weather of a city.

    Args:
        city: The city name.
        unit: celsius or fahrenheit.
    """
    return f"sunny in {city}"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "notes").mkdir(parents=True)
    (root / "report.md").write_text("# Report\n")
    (root / "notes" / "a.txt").write_text("0123456789")
    (root / "data.json").write_text('{"x": 1}')
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, root / "escape.txt")
    os.symlink(tmp_path, root / "up")
    return root


@pytest.fixture
def workspace_app(workspace: Path):  # type: ignore[no-untyped-def]
    return create_app(
        agents=[
            Agent(
                "assistant",
                model="openai:gpt-4o",
                instructions="You are a helpful assistant.",
                description="A helpful assistant",
                tools=[get_weather],
                max_steps=7,
                workspace=workspace,
            ),
            Agent("bare"),
        ]
    )


async def test_list_agents(workspace_app) -> None:  # type: ignore[no-untyped-def]
    async with client_for(workspace_app) as client:
        response = await client.get("/agents")
    assert response.status_code == 200
    assert response.json() == [
        {"name": "assistant", "model": "openai:gpt-4o", "description": "A helpful assistant"},
        {"name": "bare", "model": "echo", "description": ""},
    ]


async def test_agent_detail_lists_tools_and_limits(workspace_app) -> None:  # type: ignore[no-untyped-def]
    async with client_for(workspace_app) as client:
        response = await client.get("/agents/assistant")
        missing = await client.get("/agents/nobody")
    assert response.json() == {
        "name": "assistant",
        "model": "openai:gpt-4o",
        "description": "A helpful assistant",
        "instructions": "You are a helpful assistant.",
        "tools": ["get_weather"],
        "max_steps": 7,
        "is_default": True,
        "handoffs": [],
        "temperature": None,
        "max_tokens": None,
    }
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Agent 'nobody' not found"}


async def test_workspace_listing_stays_inside(workspace_app) -> None:  # type: ignore[no-untyped-def]
    async with client_for(workspace_app) as client:
        response = await client.get("/agents/assistant/workspace")
    files = response.json()
    assert [f["path"] for f in files] == ["data.json", "notes/a.txt", "report.md"]
    assert files[1]["size"] == 10
    assert files[1]["modified_at"].endswith("Z")


async def test_workspace_file_with_media_type_and_range(workspace_app) -> None:  # type: ignore[no-untyped-def]
    async with client_for(workspace_app) as client:
        whole = await client.get("/agents/assistant/workspace/data.json")
        part = await client.get("/agents/assistant/workspace/notes/a.txt", headers={"Range": "bytes=2-5"})
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "application/json"
    assert whole.text == '{"x": 1}'
    assert part.status_code == 206
    assert part.text == "2345"
    assert part.headers["content-range"] == "bytes 2-5/10"


@pytest.mark.parametrize(
    "path",
    [
        "../secret.txt",
        "notes/../../secret.txt",
        "%2e%2e/secret.txt",
        "%2E%2E%2Fsecret.txt",
        "escape.txt",
        "up/secret.txt",
        "notes",
        "missing.txt",
        "notes//a.txt",
        "%00",
        "..%5csecret.txt",
    ],
)
async def test_workspace_never_leaves_its_directory(workspace_app, path: str) -> None:  # type: ignore[no-untyped-def]
    async with client_for(workspace_app) as client:
        response = await client.get(f"/agents/assistant/workspace/{path}")
    assert response.status_code == 404
    assert "top secret" not in response.text
    assert response.json()["detail"]


async def test_workspace_of_agent_without_one_is_404(workspace_app) -> None:  # type: ignore[no-untyped-def]
    async with client_for(workspace_app) as client:
        response = await client.get("/agents/bare/workspace")
    assert response.status_code == 404
    assert response.json() == {"detail": "Agent 'bare' has no workspace"}
