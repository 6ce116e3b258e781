"""A target file for `orbiter-asgi serve` in the playground's browser tests: a plain
echo agent, one that says a word every 50 ms, to watch an answer stream, and
one that calls a tool, to watch its cards appear as the run streams."""

from collections.abc import AsyncIterator

import anyio

from orbiter_asgi import Agent
from orbiter_asgi.models import ToolCallEvent, ToolResultEvent


async def weather(input: str) -> AsyncIterator[object]:
    """Looks the weather up with its tool, then answers (no model: the tool run is scripted)."""
    yield ToolCallEvent(id="c1", name="get_weather", arguments={"city": "Paris"})
    await anyio.sleep(0.2)
    yield ToolResultEvent(id="c1", name="get_weather", content="sunny")
    await anyio.sleep(0.2)
    yield "It is sunny."


agents = [
    Agent("assistant", description="echo"),
    Agent("slow", model="echo?delay=0.05", description="one word every 50 ms"),
    weather,
]
