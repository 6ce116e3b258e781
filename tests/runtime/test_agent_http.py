"""The run loop end to end through `/chat`, `/stream` and `/ws/chat`, on both providers."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 under its TestClient; plain httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from orbiter_asgi import Agent, create_app
from orbiter_asgi.runtime import tool
from tests.fakes import (
    FAKES,
    Call,
    FakeModelServer,
    Hang,
    Raise,
    Raw,
    Status,
    Text,
    ToolCalls,
    make_provider,
)
from tests.helpers import assert_run_id, http_scope, sse_run

pytestmark = pytest.mark.anyio

MODELS = {"openai": "openai:gpt-4o", "anthropic": "anthropic:claude-3-5-sonnet-latest"}


def get_weather(city: str, unit: str = "celsius") -> str:
    """Current weather of a city.

    Args:
        city: The city name.
        unit: celsius or fahrenheit.
    """
    return f"{city}: 21 degrees {unit}, sunny"


async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"kaboom: {reason}")


def build(
    kind: str,
    fake: FakeModelServer,
    tools: list[Callable[..., Any]] | None = None,
    disconnect_grace: float = 5.0,
    **options: Any,
) -> Any:
    agent = Agent(
        name="assistant",
        model=MODELS[kind],
        instructions="You are terse.",
        tools=[get_weather, add, explode] if tools is None else tools,
        provider=make_provider(kind, fake, max_retries=options.pop("max_retries", 2)),
        **options,
    )
    return create_app(agents=[agent], disconnect_grace=disconnect_grace)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The events of a whole SSE run, `start` first, framing checked, without `[DONE]`."""
    _, events = sse_run(response)
    return events[:-1]  # type: ignore[return-value]


async def test_chat_runs_a_tool_and_answers(kind: str) -> None:
    fake = FAKES[kind](
        ToolCalls([Call("call_w1", "get_weather", '{"city": "Paris"}', pieces=4)], usage=(20, 7)),
        Text(["It is ", "sunny in Paris."], usage=(40, 6)),
    )
    async with client(build(kind, fake)) as http:
        response = await http.post("/chat", json={"input": "Weather in Paris?"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "output": "It is sunny in Paris.",
        "agent_name": "assistant",
        "session_id": None,
        "steps": 2,
        "usage": {"input_tokens": 60, "output_tokens": 13, "total_tokens": 73},
        "run_id": assert_run_id(response.headers["x-run-id"]),
    }
    assert len(fake.requests) == 2
    assert fake.system(0) == "You are terse."
    assert fake.tool_names(0) == ["get_weather", "add", "explode"]
    assert fake.user_texts(0) == ["Weather in Paris?"]
    assert fake.tool_results(0) == []
    assert fake.tool_calls(1) == [{"id": "call_w1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    [result] = fake.tool_results(1)
    assert result["id"] == "call_w1"
    assert result["content"] == "Paris: 21 degrees celsius, sunny"
    assert not result["is_error"]


async def test_stream_events_in_order(kind: str) -> None:
    fake = FAKES[kind](
        ToolCalls([Call("call_a", "add", '{"a": 2, "b": "3"}')], text=["Adding."]),
        Text(["5"]),
    )
    async with client(build(kind, fake)) as http:
        response = await http.get("/stream", params={"input": "2+3?"})
    events = sse_events(response)
    assert [e["type"] for e in events] == ["start", "text", "tool_call", "tool_result", "text", "done"]
    assert events[2] == {
        "type": "tool_call",
        "id": "call_a",
        "name": "add",
        "arguments": {"a": 2, "b": "3"},
    }
    assert events[3] == {
        "type": "tool_result",
        "id": "call_a",
        "name": "add",
        "content": "5",
        "is_error": False,
    }
    assert events[5]["output"] == "5" and events[5]["steps"] == 2


async def test_parallel_tool_calls_run_concurrently(kind: str) -> None:
    arrived = 0
    both_here = anyio.Event()

    async def rendezvous(name: str) -> str:
        """Waits until both calls of the step are running."""
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_here.set()
        with anyio.fail_after(5):  # sequential execution would never get here
            await both_here.wait()
        return f"hello {name}"

    fake = FAKES[kind](
        ToolCalls(
            [
                Call("call_1", "rendezvous", '{"name": "ada"}'),
                Call("call_2", "rendezvous", '{"name": "bob"}'),
            ]
        ),
        Text(["done"]),
    )
    async with client(build(kind, fake, tools=[rendezvous])) as http:
        response = await http.post("/chat", json={"input": "greet both"})
    assert response.status_code == 200, response.text
    assert [(r["id"], r["content"]) for r in fake.tool_results(1)] == [
        ("call_1", "hello ada"),
        ("call_2", "hello bob"),
    ]


async def test_sync_tools_run_in_a_worker_thread(kind: str) -> None:
    threads: list[int] = []

    def where() -> str:
        """Reports nothing useful."""
        threads.append(threading.get_ident())
        return "ok"

    fake = FAKES[kind](ToolCalls([Call("call_1", "where", "")]), Text(["fine"]))
    async with client(build(kind, fake, tools=[where])) as http:
        response = await http.post("/chat", json={"input": "where?"})
    assert response.status_code == 200
    assert threads and threads[0] != threading.get_ident()


async def test_tool_errors_go_back_to_the_model(kind: str) -> None:
    fake = FAKES[kind](
        ToolCalls(
            [
                Call("call_1", "explode", '{"reason": "test"}'),
                Call("call_2", "add", '{"a": "not a number", "b": 1}'),
                Call("call_3", "no_such_tool", "{}"),
            ]
        ),
        Text(["Sorry, that failed."]),
    )
    async with client(build(kind, fake)) as http:
        response = await http.get("/stream", params={"input": "try"})
    events = sse_events(response)
    results = [e for e in events if e["type"] == "tool_result"]
    assert [r["is_error"] for r in results] == [True, True, True]
    assert "RuntimeError: kaboom: test" in results[0]["content"]
    assert "Invalid arguments for add" in results[1]["content"]
    assert "Unknown tool 'no_such_tool'" in results[2]["content"]
    assert events[-1]["type"] == "done" and events[-1]["output"] == "Sorry, that failed."
    sent = fake.tool_results(1)
    assert [r["id"] for r in sent] == ["call_1", "call_2", "call_3"]
    assert "kaboom" in sent[0]["content"]
    if kind == "anthropic":
        assert [r["is_error"] for r in sent] == [True, True, True]


async def test_bad_json_arguments_go_back_as_an_error(kind: str) -> None:
    fake = FAKES[kind](
        ToolCalls([Call("call_1", "get_weather", '{"city": "Par')]),
        ToolCalls([Call("call_2", "get_weather", '{"city": "Paris"}')]),
        Text(["Sunny."]),
    )
    async with client(build(kind, fake)) as http:
        response = await http.get("/stream", params={"input": "weather"})
    events = sse_events(response)
    first = next(e for e in events if e["type"] == "tool_result")
    assert first["is_error"] and "not valid JSON" in first["content"]
    assert events[-1]["output"] == "Sunny." and events[-1]["steps"] == 3
    assert "not valid JSON" in fake.tool_results(1)[0]["content"]


async def test_max_steps_is_a_clear_502_and_error_event(kind: str) -> None:
    loop = [ToolCalls([Call(f"call_{i}", "add", '{"a": 1, "b": 1}')]) for i in range(4)]
    fake = FAKES[kind](*loop)
    app = build(kind, fake, max_steps=2)
    async with client(app) as http:
        response = await http.post("/chat", json={"input": "loop"})
        assert response.status_code == 502
        assert "step limit (max_steps=2)" in response.json()["detail"]
        assert len(fake.requests) == 2
        streamed = await http.get("/stream", params={"input": "loop"})
    events = sse_events(streamed)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "max_steps"


FAILURES = [
    (Status(401, "invalid key"), "provider_auth", "401"),
    (Status(403, "no access"), "provider_auth", "403"),
    (Status(404, "no such model"), "provider_error", "does not know model"),
    (Status(429, "slow down"), "rate_limited", "rate limiting"),
    (Status(500, "oops"), "provider_error", "failed with 500"),
    (Status(503, "oops"), "provider_error", "failed with 503"),
    (Raise(httpx.ReadTimeout("slow")), "provider_timeout", "did not answer in time"),
    (Raw(b"data: {not json\n\n"), "provider_error", "malformed"),
]


@pytest.mark.parametrize(
    ("turn", "code", "words"),
    FAILURES,
    ids=lambda v: getattr(v, "code", None) or type(v).__name__ if not isinstance(v, str) else v,
)
async def test_failures_are_502_and_error_events(kind: str, turn: Any, code: str, words: str) -> None:
    fake = FAKES[kind](*[turn] * 6)
    app = build(kind, fake, max_retries=1)
    async with client(app) as http:
        response = await http.post("/chat", json={"input": "hi"})
        streamed = await http.get("/stream", params={"input": "hi"})
    assert response.status_code == 502
    assert words in response.json()["detail"]
    run_id, events = sse_run(streamed)
    assert events == [
        {"type": "start", "run_id": run_id, "agent_name": "assistant", "session_id": None},
        {"type": "error", "run_id": run_id, "error": response.json()["detail"], "code": code},
        "[DONE]",
    ]


async def test_session_continues_on_the_other_provider() -> None:
    openai = FAKES["openai"](
        ToolCalls([Call("call_w1", "get_weather", '{"city": "Oslo"}')], usage=(5, 5)),
        Text(["Cold in Oslo."]),
    )
    anthropic = FAKES["anthropic"](Text(["Still cold."]))
    agents = [
        Agent(
            name="gpt",
            model=MODELS["openai"],
            tools=[get_weather],
            provider=make_provider("openai", openai),
        ),
        Agent(
            name="claude",
            model=MODELS["anthropic"],
            tools=[get_weather],
            provider=make_provider("anthropic", anthropic),
        ),
    ]
    async with client(create_app(agents=agents)) as http:
        first = await http.post("/chat", json={"agent_name": "gpt", "input": "Oslo?", "session_id": "s1"})
        assert first.json()["output"] == "Cold in Oslo."
        second = await http.post(
            "/chat", json={"agent_name": "claude", "input": "And now?", "session_id": "s1"}
        )
        assert second.status_code == 200 and second.json()["output"] == "Still cold."
        stored = (await http.get("/sessions/s1")).json()["messages"]
    assert [m["role"] for m in stored] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    body = anthropic.requests[0].body
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Oslo?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_w1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_w1",
                    "content": "Oslo: 21 degrees celsius, sunny",
                },
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Cold in Oslo."}]},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]


async def test_agent_detail_lists_tool_names(kind: str) -> None:
    @tool(name="weather_now", description="Weather, now.")
    def weather(city: str) -> str:
        return city

    async with client(build(kind, FAKES[kind](), tools=[weather, add])) as http:
        detail = (await http.get("/agents/assistant")).json()
    assert detail["tools"] == ["weather_now", "add"]
    assert detail["model"] == MODELS[kind] and detail["max_steps"] == 10


async def test_client_disconnect_closes_the_upstream_request(kind: str) -> None:
    fake = FAKES[kind](Hang(["partial "]))
    app = build(kind, fake, disconnect_grace=0)  # no grace: the run ends with its client
    gone = anyio.Event()
    bodies: list[bytes] = []

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            if b'"partial "' in message["body"]:
                gone.set()

    with anyio.fail_after(5):
        await app(http_scope("GET", "/stream", b"input=hi"), receive, send)
    assert fake.streams[0].closed
    assert b"[DONE]" not in b"".join(bodies)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_disconnect_during_post_chat_closes_upstream(kind: str, stream: bool) -> None:
    fake = FAKES[kind](Hang(["partial "]))
    app = build(kind, fake, disconnect_grace=0)
    messages = [{"type": "http.request", "body": json.dumps({"input": "hi", "stream": stream}).encode()}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        while not fake.streams:  # bounded by fail_after below
            await anyio.sleep(0.005)
        await fake.streams[0].started.wait()  # type: ignore[union-attr]
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = http_scope("POST", "/chat")
    with anyio.fail_after(5):
        await app(scope, receive, send)
    assert fake.streams[0].closed
    if not stream:
        assert sent == []  # nobody left to answer


def test_websocket_cancel_closes_the_upstream_request(kind: str) -> None:
    fake = FAKES[kind](Hang(["partial "]), Text(["next turn"]))
    app = build(kind, fake)
    with TestClient(app) as http, http.websocket_connect("/ws/chat") as ws:
        ws.send_json({"input": "hi"})
        start = ws.receive_json()
        run_id = assert_run_id(start["run_id"])
        assert start == {"type": "start", "run_id": run_id, "agent_name": "assistant", "session_id": None}
        assert ws.receive_json() == {"type": "text", "content": "partial "}
        ws.send_json({"type": "cancel"})
        error = ws.receive_json()
        assert error["code"] == "cancelled" and error["run_id"] == run_id
        done = ws.receive_json()  # what the cancelled turn produced
        assert done["type"] == "done" and done["output"] == "partial " and done["run_id"] == run_id
        assert fake.streams[0].closed
        ws.send_json({"input": "again"})
        again = ws.receive_json()
        assert again["type"] == "start" and assert_run_id(again["run_id"]) != run_id
        assert ws.receive_json() == {"type": "text", "content": "next turn"}
        done = ws.receive_json()
        assert done["type"] == "done" and done["run_id"] == again["run_id"]


async def test_python_api_run_returns_the_final_answer(kind: str) -> None:
    fake = FAKES[kind](
        ToolCalls([Call("call_1", "add", '{"a": 1, "b": 2}')], text=["Thinking."], usage=(3, 4)),
        Text(["Three."], usage=(5, 6)),
    )
    agent = Agent(name="calc", model=MODELS[kind], tools=[add], provider=make_provider(kind, fake))
    result = await agent.run("1+2?")
    assert result.output == "Three." and result.steps == 2
    assert (result.usage.input_tokens, result.usage.output_tokens) == (8, 10)
