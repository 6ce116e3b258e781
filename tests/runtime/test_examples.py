"""The examples import offline and work against the fakes."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes import FAKES, Call, Text, ToolCalls, make_provider

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).parents[2] / "examples"


def load(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / name))  # builds the app; does not serve


@pytest.mark.parametrize(
    ("name", "kind", "call", "expected"),
    [
        ("openai_tools.py", "openai", Call("c1", "calculate", '{"expression": "17 * 23"}'), "391"),
        (
            "openai_tools.py",
            "openai",
            Call("c1", "get_weather", '{"city": "Oslo"}'),
            '"temperature":9',
        ),
        ("anthropic_agent.py", "anthropic", Call("t1", "local_time", '{"city": "Tokyo"}'), " on "),
        ("local_ollama.py", "openai", Call("c1", "roll_dice", '{"count": 2, "sides": 1}'), "[1,1]"),
    ],
)
async def test_example_runs_its_tool(name: str, kind: str, call: Call, expected: str) -> None:
    module = load(name)
    fake = FAKES[kind](ToolCalls([call]), Text(["Done."]))
    module["agent"].provider = make_provider(kind, fake)
    transport = httpx.ASGITransport(app=module["app"])
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post("/chat", json={"input": "go"})
    assert response.status_code == 200 and response.json()["output"] == "Done."
    [result] = fake.tool_results(1)
    assert expected in result["content"] and not result["is_error"]
