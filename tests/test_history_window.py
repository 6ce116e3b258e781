"""`Agent(history_limit=N)`: what a session turn shows the model, on the wire to
the provider, and that the stored history stays whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orbiter_asgi import Agent, create_app
from tests.fakes import make_provider
from tests.fakes._base import Call, Text, ToolCalls
from tests.fakes.openai_fake import OpenAIFake
from tests.helpers import client_for

pytestmark = pytest.mark.anyio


def get_weather(city: str) -> str:
    """Current weather of a city.

    Args:
        city: The city name.
    """
    return f"{city}: sunny"


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 's.db'}"


def _shown(fake: OpenAIFake) -> list[tuple[str, str | None]]:
    """The conversation the last model call was sent: role, and the text or the tool call's id."""
    messages = fake.requests[-1].body["messages"]
    return [
        (m["role"], m.get("tool_call_id") or m.get("content") or m["tool_calls"][0]["id"]) for m in messages
    ]


async def _two_turns(store_url: str, limit: int | None) -> tuple[OpenAIFake, list[dict[str, Any]]]:
    """Turn 1 calls a tool, then answers; turn 2 is a plain question."""
    fake = OpenAIFake(
        ToolCalls([Call("call_1", "get_weather", '{"city": "Paris"}')]),
        Text(["Sunny."]),
        Text(["Tomorrow too."]),
    )
    agent = Agent(
        "weather",
        model="openai:gpt-4o",
        tools=[get_weather],
        provider=make_provider("openai", fake),
        history_limit=limit,
    )
    async with client_for(create_app(agents=[agent], store=store_url)) as client:
        for text in ("Weather?", "And tomorrow?"):
            reply = await client.post("/chat", json={"input": text, "session_id": "s"})
            assert reply.status_code == 200, reply.text
        stored = (await client.get("/sessions/s/messages")).json()
    return fake, stored


FIRST_TURN = [
    ("user", "Weather?"),
    ("assistant", "call_1"),
    ("tool", "call_1"),
    ("assistant", "Sunny."),
]


@pytest.mark.parametrize(
    ("limit", "shown"),
    [
        (None, FIRST_TURN),  # the default: all of it
        (4, FIRST_TURN),  # a history that fits is shown whole
        (3, FIRST_TURN[1:]),  # no user message left: it starts at the call, with its result
        (2, FIRST_TURN[3:]),  # the result alone would lose its call: both go
        (0, []),
    ],
)
async def test_a_turn_shows_the_model_a_window_that_keeps_calls_with_their_results(
    store_url: str, limit: int | None, shown: list[tuple[str, str]]
) -> None:
    fake, stored = await _two_turns(store_url, limit)
    assert _shown(fake) == [*shown, ("user", "And tomorrow?")]
    # the stored history stays whole
    assert [(m["role"], m.get("content")) for m in stored] == [
        ("user", "Weather?"),
        ("assistant", None),
        ("tool", "Paris: sunny"),
        ("assistant", "Sunny."),
        ("user", "And tomorrow?"),
        ("assistant", "Tomorrow too."),
    ]


async def test_a_window_starts_at_its_first_user_message(store_url: str) -> None:
    fake = OpenAIFake(*(Text([f"answer {i}"]) for i in range(4)))
    agent = Agent("chat", model="openai:gpt-4o", provider=make_provider("openai", fake), history_limit=3)
    async with client_for(create_app(agents=[agent], store=store_url)) as client:
        for i in range(4):
            await client.post("/chat", json={"input": f"question {i}", "session_id": "s"})
    # 6 messages before the last turn; the last 3 open with an answer, cut to start at a question
    assert _shown(fake) == [("user", "question 2"), ("assistant", "answer 2"), ("user", "question 3")]


async def test_an_agent_of_its_own_declares_its_window() -> None:
    seen: list[list[str]] = []

    class Recorder:
        name = "recorder"
        history_limit = 2

        async def stream(self, input: str, *, messages: Any = ()) -> Any:
            seen.append([m.content for m in messages])
            yield f"re: {input}"

    async with client_for(create_app(agents=[Recorder()])) as client:
        for text in ("a", "b", "c"):
            await client.post("/chat", json={"input": text, "session_id": "s"})
    assert seen == [[], ["a", "re: a"], ["b", "re: b"]]
