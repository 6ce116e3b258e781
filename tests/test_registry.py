from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from orbiter_asgi import Agent, Message, TextEvent, create_app, register_agent, registered_agents
from tests.helpers import client_for

pytestmark = pytest.mark.anyio


class StreamingAgent:
    name = "streamer"
    model = "custom:v1"
    description = "streams events"

    async def stream(self, input: str, *, messages: Sequence[Message]) -> AsyncIterator[object]:
        yield TextEvent("from ")
        yield "stream"


class RunningAgent:
    name = "runner"

    async def run(self, input: str, *, messages: Sequence[Message]) -> object:
        class Result:
            output = f"ran {input} after {len(messages)}"

        return Result()


async def plain_function(input: str) -> str:
    """Answers in upper case."""
    return input.upper()


async def generator(input: str, messages: Sequence[Message] = ()) -> AsyncIterator[str]:
    for word in ("gen", "erated"):
        yield word


@pytest.mark.parametrize(
    ("agent", "name", "output"),
    [
        (StreamingAgent(), "streamer", "from stream"),
        (RunningAgent(), "runner", "ran hi after 0"),
        (plain_function, "plain_function", "HI"),
        (generator, "generator", "generated"),
        (Agent("builtin"), "builtin", "hi"),
    ],
)
async def test_every_agent_form_is_served(agent: object, name: str, output: str) -> None:
    async with client_for(create_app(agents=[agent])) as client:
        response = await client.post("/chat", json={"input": "hi"})
        listed = (await client.get("/agents")).json()
    assert response.status_code == 200
    assert response.json()["output"] == output
    assert response.json()["agent_name"] == name
    assert listed[0]["name"] == name


async def test_metadata_comes_from_the_object_or_docstring() -> None:
    app = create_app(agents=[StreamingAgent(), plain_function])
    async with client_for(app) as client:
        assert (await client.get("/agents")).json() == [
            {"name": "streamer", "model": "custom:v1", "description": "streams events"},
            {"name": "plain_function", "model": "custom", "description": "Answers in upper case."},
        ]


async def test_bad_yield_is_a_502_not_a_500() -> None:
    async def weird(input: str) -> AsyncIterator[object]:
        yield 42

    async with client_for(create_app(agents={"weird": weird})) as client:
        response = await client.post("/chat", json={"input": "x"})
    assert response.status_code == 502
    assert "int" in response.json()["detail"]


def test_things_that_are_not_agents_are_refused() -> None:
    with pytest.raises(TypeError, match="Cannot serve"):
        register_agent("nope", object())
    with pytest.raises(TypeError, match="Cannot serve"):
        register_agent(lambda x: x)  # a sync function cannot stream

    class Nameless:
        async def run(self, input: str) -> str:
            return input

    with pytest.raises(TypeError, match="needs a name"):
        register_agent(Nameless())
    assert "nope" not in registered_agents


async def test_module_registry_before_and_after_create_app() -> None:
    register_agent("assistant", Agent(name="assistant"))
    app = create_app()
    register_agent("coder", Agent(name="coder", instructions="You write code."))
    async with client_for(app) as client:
        names = [a["name"] for a in (await client.get("/agents")).json()]
        coder = await client.post("/chat", json={"agent_name": "coder", "input": "x"})
    assert names == ["assistant", "coder"]
    assert coder.status_code == 200
    assert len(registered_agents) == 2
    assert registered_agents["coder"].instructions == "You write code."


async def test_register_on_an_app_with_default() -> None:
    app = create_app(agents=[Agent("first")])
    register_agent(app, Agent("chosen"), default=True)
    async with client_for(app) as client:
        response = await client.post("/chat", json={"input": "x"})
    assert response.json()["agent_name"] == "chosen"
    assert "chosen" not in registered_agents


async def test_agent_listing_follows_changes_and_apps() -> None:
    # the encoded listing is cached; every change, and every other app, must show through
    first = create_app(agents=[Agent("a")])
    second = create_app(agents=[Agent("b")])
    async with client_for(first) as one, client_for(second) as two:
        before = [a["name"] for a in (await one.get("/agents")).json()]
        other = [a["name"] for a in (await two.get("/agents")).json()]
        register_agent(first, Agent("c", model="echo?delay=0"))
        added = (await one.get("/agents")).json()
        first.agents.unregister("a")
        removed = [a["name"] for a in (await one.get("/agents")).json()]
    assert before == ["a"] and other == ["b"] and removed == ["c"]
    assert [(a["name"], a["model"]) for a in added] == [("a", "echo"), ("c", "echo?delay=0")]
