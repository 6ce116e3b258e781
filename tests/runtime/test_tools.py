"""Tools: schemas from hints and docstrings, the decorator, argument checks."""

from __future__ import annotations

from typing import Literal

import msgspec
import pytest

from orbiter_asgi import Agent
from orbiter_asgi.runtime import Tool, ToolArgumentError, tool

pytestmark = pytest.mark.anyio


class Point(msgspec.Struct):
    x: float
    y: float


def forecast(city: str, days: int = 3, unit: Literal["c", "f"] = "c", near: Point | None = None) -> str:
    """Get the forecast of a city.

    Uses the fake weather service; this paragraph is not the summary.

    Args:
        city: The city name,
            with its country if ambiguous.
        days (int): How many days.

    Returns:
        The forecast text.
    """
    return f"{city} {days} {unit} {near}"


def test_schema_from_hints_and_google_docstring() -> None:
    spec = Tool(forecast).spec
    assert spec.name == "forecast"
    assert spec.description == "Get the forecast of a city."
    params = spec.parameters
    assert params["type"] == "object" and params["required"] == ["city"]
    assert params["properties"]["city"] == {
        "type": "string",
        "description": "The city name, with its country if ambiguous.",
    }
    assert params["properties"]["days"] == {
        "type": "integer",
        "default": 3,
        "description": "How many days.",
    }
    assert params["properties"]["unit"] == {"enum": ["c", "f"], "default": "c"}
    assert params["$defs"]["Point"]["required"] == ["x", "y"]


def test_sphinx_docstring() -> None:
    def scale(value: float, factor: float = 2.0) -> float:
        """Scale a number.

        :param value: the number
        :param float factor: how much
        :returns: the product
        """
        return value * factor

    spec = Tool(scale).spec
    assert spec.description == "Scale a number."
    assert spec.parameters["properties"]["value"]["description"] == "the number"
    assert spec.parameters["properties"]["factor"]["description"] == "how much"


def test_decorator_renames_and_describes() -> None:
    @tool(name="lookup", description="Look a word up.")
    async def find(word: str) -> str:
        return word

    @tool
    def plain(x: int) -> int:
        """Plain."""
        return x

    agent = Agent(name="a", tools=[find, plain])
    assert agent.tools == ["lookup", "plain"]
    assert agent.tool_map["lookup"].spec.description == "Look a word up."
    assert agent.tool_map["plain"].is_async is False


def test_bad_tool_names_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="must match"):
        Tool(forecast, name="has spaces")


async def test_arguments_are_validated_and_converted() -> None:
    t = Tool(forecast)
    assert await t({"city": "Rome", "days": "2", "near": {"x": 1, "y": 2}}) == (
        "Rome 2 c Point(x=1.0, y=2.0)"
    )
    with pytest.raises(ToolArgumentError, match="Invalid arguments for forecast"):
        t.validate({"days": 1})
    with pytest.raises(ToolArgumentError):
        t.validate({"city": "Rome", "unknown": 1})
    with pytest.raises(ToolArgumentError):
        t.validate({"city": "Rome", "unit": "kelvin"})
