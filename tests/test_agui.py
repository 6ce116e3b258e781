"""AG-UI (`POST /agents/{name}/ag-ui`), judged by `ag_ui.core`'s own models.

Every event must validate as AG-UI's pydantic event model *and* carry no
field that model does not declare (the models allow extra fields, which
would let a misspelled one through), and the stream must keep AG-UI's
order: `RUN_STARTED` first, one `RUN_FINISHED` or `RUN_ERROR` last, text
messages and tool calls opened and closed properly, results tied to calls.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from ag_ui import core as agui
from pydantic import TypeAdapter

from orbiter_asgi import Agent, create_app
from tests.fakes import Call, Text, ToolCalls, make_provider
from tests.fakes.openai_fake import OpenAIFake
from tests.helpers import assert_run_id, client_for

pytestmark = pytest.mark.anyio

EVENT = TypeAdapter(agui.Event)


def user(content: Any, id: str = "u1") -> dict[str, Any]:
    return {"id": id, "role": "user", "content": content}


def run_input(*messages: dict[str, Any], thread: str = "thread-1", run: str = "run-1", **extra: Any) -> Any:
    return {"threadId": thread, "runId": run, "messages": list(messages), **extra}


def agui_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The events of an AG-UI stream, each checked against its `ag_ui.core` model."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        [line] = lines  # one `data:` line a frame, nothing else
        assert line.startswith("data: "), line
        raw = json.loads(line.removeprefix("data: "))
        model = type(EVENT.validate_python(raw))
        declared = {field.alias or name for name, field in model.model_fields.items()}
        assert set(raw) <= declared, (raw, declared)
        events.append(raw)
    return events


def assert_protocol(events: list[dict[str, Any]], thread: str = "thread-1", run: str = "run-1") -> None:
    """AG-UI's order: boundaries, text messages and tool calls nested, results after their calls."""
    first, *middle, last = events
    assert first["type"] == "RUN_STARTED" and (first["threadId"], first["runId"]) == (thread, run)
    assert last["type"] in ("RUN_FINISHED", "RUN_ERROR")
    if last["type"] == "RUN_FINISHED":
        assert (last["threadId"], last["runId"]) == (thread, run)
    text: str | None = None  # the open text message
    call: str | None = None  # the open tool call
    seen: set[str] = set()  # message ids used
    ended: set[str] = set()  # tool calls closed, waiting for their result
    for event in middle:
        kind = event["type"]
        assert kind not in ("RUN_STARTED", "RUN_FINISHED", "RUN_ERROR"), event
        if kind == "TEXT_MESSAGE_START":
            assert text is None and call is None and event["messageId"] not in seen, event
            assert event["role"] == "assistant"
            text = event["messageId"]
            seen.add(text)
        elif kind in ("TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END"):
            assert event["messageId"] == text, event
            if kind == "TEXT_MESSAGE_CONTENT":
                assert event["delta"], event
            else:
                text = None
        elif kind == "TOOL_CALL_START":
            assert text is None and call is None, event  # text is closed before a call
            call = event["toolCallId"]
        elif kind in ("TOOL_CALL_ARGS", "TOOL_CALL_END"):
            assert event["toolCallId"] == call, event
            if kind == "TOOL_CALL_END":
                ended.add(call)
                call = None
        else:
            assert kind == "TOOL_CALL_RESULT" and text is None and call is None, event
            assert event["role"] == "tool" and event["messageId"] not in seen, event
            seen.add(event["messageId"])
            ended.remove(event["toolCallId"])  # a result answers a call that was made
    assert text is None and call is None and not ended, (text, call, ended)


def get_weather(city: str, unit: str = "celsius") -> str:
    """Current weather of a city.

    Args:
        city: The city name.
        unit: celsius or fahrenheit.
    """
    return f"{city}: 21 degrees {unit}, sunny"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async def broken(input: str) -> AsyncIterator[str]:
        yield ""  # AG-UI has no empty deltas: it is not sent
        yield "partial "
        raise RuntimeError("model exploded")

    app = create_app(agents={"assistant": Agent("assistant"), "broken": broken}, drain_on_signal=False)
    async with client_for(app) as http:
        yield http


async def test_a_text_run_is_one_assistant_message_between_the_run_boundaries(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/agents/assistant/ag-ui", json=run_input(user("hello there world")))
    events = agui_events(response)
    assert_protocol(events)
    assert [e["type"] for e in events] == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        *["TEXT_MESSAGE_CONTENT"] * 3,
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert "".join(e["delta"] for e in events[2:5]) == "hello there world"
    # the client's run id is echoed; ours is the header, and the raw `start` of RUN_STARTED
    run_id = assert_run_id(response.headers["x-run-id"])
    assert events[0]["rawEvent"] == {
        "type": "start",
        "run_id": run_id,
        "agent_name": "assistant",
        "session_id": "thread-1",
    }
    assert events[-1] == {"type": "RUN_FINISHED", "threadId": "thread-1", "runId": "run-1"}
    record = (await client.get(f"/runs/{run_id}")).json()
    assert (record["status"], record["output"]) == ("completed", "hello there world")


async def test_a_tool_run_ties_calls_to_their_messages_and_results() -> None:
    fake = OpenAIFake(
        ToolCalls([Call("call_1", "get_weather", '{"city": "Paris"}')], text=["Let me ", "check."]),
        ToolCalls(  # a step without text: two calls under one message
            [
                Call("call_2", "get_weather", '{"city": "Rome"}'),
                Call("call_3", "get_weather", '{"city": "Oslo", "unit": "fahrenheit"}'),
            ]
        ),
        Text(["Sunny ", "everywhere."]),
    )
    agent = Agent(
        name="weather", model="openai:gpt-4o", tools=[get_weather], provider=make_provider("openai", fake)
    )
    frontend_tool = {"name": "confirm", "description": "Ask the user", "parameters": {"type": "object"}}
    body = run_input(user("Weather?"), tools=[frontend_tool], context=[], state={}, forwardedProps={})
    async with client_for(create_app(agents=[agent], drain_on_signal=False)) as http:
        events = agui_events(await http.post("/agents/weather/ag-ui", json=body))
    assert_protocol(events)
    assert [e["type"] for e in events] == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        *["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"],
        *["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END"] * 2,
        *["TOOL_CALL_RESULT"] * 2,
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    starts = {e["toolCallId"]: e for e in events if e["type"] == "TOOL_CALL_START"}
    args = {e["toolCallId"]: json.loads(e["delta"]) for e in events if e["type"] == "TOOL_CALL_ARGS"}
    results = {e["toolCallId"]: e["content"] for e in events if e["type"] == "TOOL_CALL_RESULT"}
    assert args == {
        "call_1": {"city": "Paris"},
        "call_2": {"city": "Rome"},
        "call_3": {"city": "Oslo", "unit": "fahrenheit"},
    }
    assert results == {
        "call_1": "Paris: 21 degrees celsius, sunny",
        "call_2": "Rome: 21 degrees celsius, sunny",
        "call_3": "Oslo: 21 degrees fahrenheit, sunny",
    }
    assert {name["toolCallName"] for name in starts.values()} == {"get_weather"}
    # the first call belongs to the text before it; the next step's calls share a new message
    first_text, last_text = (e["messageId"] for e in events if e["type"] == "TEXT_MESSAGE_START")
    assert starts["call_1"]["parentMessageId"] == first_text
    assert starts["call_2"]["parentMessageId"] == starts["call_3"]["parentMessageId"]
    assert len({first_text, starts["call_2"]["parentMessageId"], last_text}) == 3
    assert "".join(e["delta"] for e in events[-4:-2]) == "Sunny everywhere."
    # frontend tools are never offered to the model: the agent runs its own
    assert fake.tool_names(0) == ["get_weather"]


async def test_a_failing_agent_ends_with_run_error_and_nothing_after(client: httpx.AsyncClient) -> None:
    events = agui_events(await client.post("/agents/broken/ag-ui", json=run_input(user("hi"))))
    assert_protocol(events)
    assert [e["type"] for e in events] == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_ERROR",
    ]
    assert events[-1] == {
        "type": "RUN_ERROR",
        "message": "Agent 'broken' failed: RuntimeError: model exploded",
        "code": "agent_error",
    }


async def usage_of(client: httpx.AsyncClient, response: httpx.Response) -> dict[str, Any]:
    agui_events(response)
    record = (await client.get(f"/runs/{response.headers['x-run-id']}")).json()
    usage: dict[str, Any] = record["usage"]
    return usage


async def test_a_thread_is_a_session_whose_stored_history_wins(client: httpx.AsyncClient) -> None:
    url = "/agents/assistant/ag-ui"
    first = await client.post(url, json=run_input(user("one two three"), thread="t-stored"))
    assert (await usage_of(client, first))["input_tokens"] == 3
    # the client's copy of the thread differs: the stored one is what the agent sees
    earlier = [user("not what was said at all", id="x1"), {"id": "x2", "role": "assistant", "content": "no"}]
    body = run_input(*earlier, user("four", id="u2"), thread="t-stored", run="r2")
    second = await client.post(url, json=body)
    assert (await usage_of(client, second))["input_tokens"] == 3 + 3 + 1  # echo counts the history's words
    session = (await client.get("/sessions/t-stored")).json()
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("user", "one two three"),
        ("assistant", "one two three"),
        ("user", "four"),
        ("assistant", "four"),
    ]


async def test_a_new_thread_adopts_the_clients_history(client: httpx.AsyncClient) -> None:
    # a body as AG-UI's own model writes it, with every field we accept and ignore
    body = agui.RunAgentInput(
        thread_id="t-new",
        run_id="r1",
        state={"count": 1},
        messages=[
            agui.SystemMessage(id="s1", content="Be brief"),
            agui.UserMessage(id="u1", content="a b"),
            agui.AssistantMessage(
                id="a1",
                content="c d e",
                tool_calls=[
                    agui.ToolCall(id="c1", function=agui.FunctionCall(name="lookup", arguments='{"q": 1}'))
                ],
            ),
            agui.ToolMessage(id="t1", tool_call_id="c1", content="42"),
            agui.ReasoningMessage(id="r1", content="not replayed"),
            agui.UserMessage(
                id="u2",
                content=[
                    agui.TextPart(text="f"),
                    agui.ImagePart(source=agui.UrlSource(value="https://example.com/a.png")),
                    agui.TextPart(text="g"),
                ],
            ),
        ],
        tools=[agui.Tool(name="confirm", description="Ask the user", parameters={"type": "object"})],
        context=[agui.Context(description="timezone", value="UTC")],
        forwarded_props={"anything": [1, 2]},
    ).model_dump(by_alias=True)
    response = await client.post("/agents/assistant/ag-ui", json=body)
    events = agui_events(response)
    assert_protocol(events, thread="t-new", run="r1")
    assert "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT") == "f\ng"
    # Be brief (2) + a b (2) + c d e (3) + 42 (1) + f, g (2): reasoning is not replayed
    assert (await usage_of(client, response))["input_tokens"] == 10
    session = (await client.get("/sessions/t-new")).json()
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("system", "Be brief"),
        ("user", "a b"),
        ("assistant", "c d e"),
        ("tool", "42"),
        ("user", "f\ng"),
        ("assistant", "f\ng"),
    ]
    assert session["messages"][2]["tool_calls"] == [{"id": "c1", "name": "lookup", "arguments": {"q": 1}}]
    assert (session["messages"][3]["tool_call_id"], session["messages"][3]["name"]) == ("c1", "lookup")


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("/agents/ghost/ag-ui", run_input(user("hi")), 404, "Agent 'ghost' not found"),
        ("/agents/assistant/ag-ui", run_input(), 422, [["body", "messages"]]),
        (
            "/agents/assistant/ag-ui",
            run_input({"id": "a1", "role": "assistant", "content": "hi"}),
            422,
            [["body", "messages"]],
        ),
        (
            "/agents/assistant/ag-ui",
            run_input(user([{"type": "image", "source": {"type": "url", "value": "https://x.y/z.png"}}])),
            422,
            [["body", "messages", 0, "content"]],
        ),
        ("/agents/assistant/ag-ui", run_input(user("hi"), thread="no spaces"), 422, [["body", "threadId"]]),
        ("/agents/assistant/ag-ui", {"threadId": "t", "messages": [user("hi")]}, 422, [["body", "runId"]]),
        ("/agents/assistant/ag-ui", run_input({"role": "robot", "content": "hi"}), 422, None),
    ],
)
async def test_refused_before_the_stream_with_a_detail(
    client: httpx.AsyncClient, path: str, body: Any, status: int, detail: Any
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    found = response.json()["detail"]
    if isinstance(detail, str):
        assert found == detail
    elif detail is not None:
        assert [item["loc"] for item in found] == detail
    assert (await client.get(f"/sessions/{body.get('threadId', 't')}")).status_code in (400, 404)


async def test_the_input_is_held_to_the_apps_input_limit() -> None:
    async with client_for(create_app(agents=[Agent("assistant")], max_input_length=5)) as http:
        response = await http.post("/agents/assistant/ag-ui", json=run_input(user("six chars")))
    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["body", "messages"]]


async def test_the_route_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/agents/{agent_name}/ag-ui"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunAgentInput"
    }
    assert list(operation["responses"]["200"]["content"]) == ["text/event-stream"]
    assert {"400", "404", "422"} <= set(operation["responses"])
