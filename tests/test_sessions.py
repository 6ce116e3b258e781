from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import anyio
import httpx
import pytest

from orbiter_asgi import Agent, Message, create_app
from tests.helpers import client_for, sse_events, sse_run

pytestmark = pytest.mark.anyio


async def test_session_lifecycle(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/sessions", json={"agent_name": "assistant", "metadata": {"user_id": "u-123"}}
    )
    assert created.status_code == 201
    session = created.json()
    assert session["agent_name"] == "assistant"
    assert session["metadata"] == {"user_id": "u-123"}
    assert session["messages"] == []
    assert session["created_at"].endswith("Z")
    session_id = session["id"]

    got = await client.get(f"/sessions/{session_id}")
    assert got.json() == session

    patched = await client.patch(f"/sessions/{session_id}", json={"metadata": {"user_id": "u-9"}})
    assert patched.status_code == 200
    assert patched.json()["metadata"] == {"user_id": "u-9"}
    assert patched.json()["agent_name"] == "assistant"
    assert patched.json()["updated_at"] >= session["updated_at"]

    deleted = await client.delete(f"/sessions/{session_id}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert (await client.get(f"/sessions/{session_id}")).status_code == 404
    assert (await client.delete(f"/sessions/{session_id}")).status_code == 404


async def test_client_chosen_id_conflicts_with_409(client: httpx.AsyncClient) -> None:
    assert (await client.post("/sessions", json={"id": "session-123"})).status_code == 201
    again = await client.post("/sessions", json={"id": "session-123"})
    assert again.status_code == 409
    assert again.json() == {"detail": "Session 'session-123' already exists"}


async def test_empty_body_creates_a_session(client: httpx.AsyncClient) -> None:
    response = await client.post("/sessions")
    assert response.status_code == 201
    assert response.json()["agent_name"] is None


@pytest.mark.parametrize("body", [{"metadata": [1]}, {"title": None}, {"agent_name": 3}])
async def test_bad_session_bodies_are_422(client: httpx.AsyncClient, body: object) -> None:
    response = await client.post("/sessions", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"
    assert (await client.get("/sessions")).json() == []


@pytest.mark.parametrize("session_id", ["has space", "x" * 129, "ümlaut", "a/b"])
async def test_invalid_session_ids_are_400(client: httpx.AsyncClient, session_id: str) -> None:
    response = await client.post("/chat", json={"input": "hi", "session_id": session_id})
    assert response.status_code == 400
    assert "session id" in response.json()["detail"]
    assert (await client.get("/sessions")).json() == []


async def test_history_feeds_the_next_turn() -> None:
    seen: list[list[tuple[str, str]]] = []

    async def remembering(input: str, *, messages: Sequence[Message]) -> str:
        seen.append([(m.role, m.content) for m in messages])
        return f"reply to {input}"

    async with client_for(create_app(agents={"mem": remembering})) as client:
        first = await client.post("/chat", json={"input": "Hello", "session_id": "s-1"})
        second = await client.post("/chat", json={"input": "Again", "session_id": "s-1"})
        session = (await client.get("/sessions/s-1")).json()
    assert first.json()["session_id"] == "s-1"
    assert second.json()["output"] == "reply to Again"
    assert seen == [[], [("user", "Hello"), ("assistant", "reply to Hello")]]
    assert session["agent_name"] == "mem"
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("user", "Hello"),
        ("assistant", "reply to Hello"),
        ("user", "Again"),
        ("assistant", "reply to Again"),
    ]


async def test_failed_run_keeps_the_user_message_and_partial_answer() -> None:
    async def flaky(input: str) -> AsyncIterator[str]:
        yield "half an "
        raise RuntimeError("boom")

    async with client_for(create_app(agents={"flaky": flaky})) as client:
        response = await client.post("/chat", json={"input": "Hi", "session_id": "s-2"})
        messages = (await client.get("/sessions/s-2/messages")).json()
    assert response.status_code == 502
    assert [(m["role"], m["content"]) for m in messages] == [("user", "Hi"), ("assistant", "half an ")]


async def test_turns_on_one_session_are_serialized() -> None:
    active = 0
    overlap = False

    async def slow(input: str) -> AsyncIterator[str]:
        nonlocal active, overlap
        active += 1
        overlap = overlap or active > 1
        await anyio.sleep(0.02)
        yield input
        active -= 1

    async with client_for(create_app(agents={"slow": slow})) as client:

        async def turn(n: int) -> None:
            response = await client.post("/chat", json={"input": f"m{n}", "session_id": "same"})
            assert response.status_code == 200

        async with anyio.create_task_group() as group:
            for n in range(5):
                group.start_soon(turn, n)
        messages = (await client.get("/sessions/same/messages")).json()
    assert not overlap
    pairs = [(messages[i]["content"], messages[i + 1]["content"]) for i in range(0, 10, 2)]
    assert all(user == answer for user, answer in pairs)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 5


async def test_messages_can_be_listed_and_appended(client: httpx.AsyncClient) -> None:
    await client.post("/sessions", json={"id": "s-3"})
    one = await client.post("/sessions/s-3/messages", json={"role": "user", "content": "Hello"})
    many = await client.post(
        "/sessions/s-3/messages",
        json=[{"role": "assistant", "content": "Hi there!"}, {"role": "user", "content": "ok"}],
    )
    assert one.status_code == 201 and many.status_code == 201
    assert one.json()["created_at"].endswith("Z")  # one posted, one answered
    assert [m["content"] for m in many.json()] == ["Hi there!", "ok"]
    listed = (await client.get("/sessions/s-3/messages")).json()
    assert [(m["role"], m["content"]) for m in listed] == [
        ("user", "Hello"),
        ("assistant", "Hi there!"),
        ("user", "ok"),
    ]
    bad = await client.post("/sessions/s-3/messages", json={"role": "wizard", "content": "x"})
    assert bad.status_code == 422
    assert len((await client.get("/sessions/s-3/messages")).json()) == 3
    missing = await client.post("/sessions/nope/messages", json={"role": "user", "content": "x"})
    assert missing.status_code == 404


async def test_listing_is_newest_first_with_cursor_and_filter(client: httpx.AsyncClient) -> None:
    ids = []
    for n in range(7):
        agent = "a" if n % 2 else "b"
        ids.append((await client.post("/sessions", json={"agent_name": agent})).json()["id"])
    newest_first = list(reversed(ids))

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/sessions", params=params)
        assert response.status_code == 200
        seen += [s["id"] for s in response.json()]
        pages += 1
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            break
        assert 'rel="next"' in response.headers["link"]
    assert seen == newest_first
    assert pages == 3

    only_a = (await client.get("/sessions", params={"agent_name": "a"})).json()
    assert [s["id"] for s in only_a] == [i for i in newest_first if ids.index(i) % 2]
    assert all(s["message_count"] == 0 for s in only_a)


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "1000"}, {"limit": "x"}, {"limit": "¹"}, {"limit": "٣"}]
)
async def test_bad_limits_are_422(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await client.get("/sessions", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_bad_cursor_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/sessions", params={"cursor": "garbage!"})
    assert response.status_code == 400
    assert response.json() == {"detail": "Invalid cursor"}


async def test_streamed_turn_with_session_is_stored(client: httpx.AsyncClient) -> None:
    response = await client.get("/stream", params={"input": "Tell me a story", "session_id": "s-1"})
    assert sse_events(response.text)[-2]["session_id"] == "s-1"  # type: ignore[index]
    messages = (await client.get("/sessions/s-1/messages")).json()
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Tell me a story"),
        ("assistant", "Tell me a story"),
    ]


async def test_unknown_session_id_creates_it_for_the_agent(client: httpx.AsyncClient) -> None:
    await client.post("/chat", json={"input": "hi", "session_id": "fresh", "agent_name": "assistant"})
    session = (await client.get("/sessions/fresh")).json()
    assert session["agent_name"] == "assistant"
    assert len(session["messages"]) == 2


async def test_patch_validates_and_keeps_data(client: httpx.AsyncClient) -> None:
    await client.post("/sessions", json={"id": "keep", "metadata": {"k": 1}})
    bad = await client.patch("/sessions/keep", json={"metadata": "nope"})
    assert bad.status_code == 422
    assert (await client.get("/sessions/keep")).json()["metadata"] == {"k": 1}
    renamed = await client.patch("/sessions/keep", json={"agent_name": None})
    assert renamed.json()["agent_name"] is None
    assert renamed.json()["metadata"] == {"k": 1}
    missing = await client.patch("/sessions/gone", json={})
    assert missing.status_code == 404


async def test_tool_calls_are_stored_in_replayable_form() -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    from orbiter_asgi import TextEvent, ToolCallEvent, Usage
    from orbiter_asgi.providers.base import ModelRequest

    class Scripted:
        """A provider that calls `add` once, then answers with the result."""

        async def stream(self, request: ModelRequest):  # type: ignore[no-untyped-def]
            if request.messages[-1].role == "tool":
                yield TextEvent(f"The sum is {request.messages[-1].content}")
            else:
                yield TextEvent("Let me add. ")
                yield ToolCallEvent(id="call_1", name="add", arguments={"a": 2, "b": 3})
            yield Usage(input_tokens=10, output_tokens=5, total_tokens=15)

        async def aclose(self) -> None:
            pass

    agent = Agent("calc", model="openai:fake", tools=[add], provider=Scripted())
    async with client_for(create_app(agents=[agent])) as client:
        response = await client.post("/chat", json={"input": "2+3?", "session_id": "t"})
        messages = (await client.get("/sessions/t/messages")).json()
    assert response.json()["output"] == "The sum is 5"
    assert response.json()["steps"] == 2
    assert response.json()["usage"] == {"input_tokens": 20, "output_tokens": 10, "total_tokens": 30}
    for m in messages:
        del m["created_at"]
    assert messages == [
        {"role": "user", "content": "2+3?"},
        {
            "role": "assistant",
            "content": "Let me add. ",
            "tool_calls": [{"id": "call_1", "name": "add", "arguments": {"a": 2, "b": 3}}],
        },
        {"role": "tool", "content": "5", "tool_call_id": "call_1", "name": "add"},
        {"role": "assistant", "content": "The sum is 5"},
    ]


async def test_batched_provider_output_streams_and_stores_like_single_events() -> None:
    # providers may yield what was ready together as one list: text deltas as strings,
    # or events, tool calls among them; stream, answer and history must not tell the difference
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    from orbiter_asgi import TextEvent, ToolCallEvent, Usage
    from orbiter_asgi.providers.base import ModelRequest

    class Batched:
        async def stream(self, request: ModelRequest):  # type: ignore[no-untyped-def]
            if request.messages[-1].role == "tool":
                yield ["The sum ", "is ", request.messages[-1].content]
                yield []
            else:
                yield [TextEvent("Let "), TextEvent("me add. ")]
                yield [TextEvent("Now: "), ToolCallEvent(id="c1", name="add", arguments={"a": 2, "b": 3})]
            yield Usage(input_tokens=1, output_tokens=1, total_tokens=2)

        async def aclose(self) -> None:
            pass

    agent = Agent("calc", model="openai:fake", tools=[add], provider=Batched())
    async with client_for(create_app(agents=[agent])) as client:
        streamed = await client.post("/chat", json={"input": "2+3?", "session_id": "b", "stream": True})
        answer = await client.post("/chat", json={"input": "again", "session_id": "b"})
        plain = await client.post("/chat", json={"input": "2+3?"})  # no session: no history kept
        messages = (await client.get("/sessions/b/messages")).json()
    run_id, events = sse_run(streamed)  # ids count on through the batches
    assert events[0] == {"type": "start", "run_id": run_id, "agent_name": "calc", "session_id": "b"}
    kinds = [e["type"] if isinstance(e, dict) else e for e in events]
    assert kinds == (
        ["start"] + ["text"] * 3 + ["tool_call", "tool_result"] + ["text"] * 3 + ["done", "[DONE]"]
    )
    texts = "".join(e["content"] for e in events if isinstance(e, dict) and e["type"] == "text")
    assert texts == "Let me add. Now: The sum is 5"
    done = events[-2]
    assert isinstance(done, dict) and done["output"] == "The sum is 5" and done["steps"] == 2
    assert answer.json()["output"] == plain.json()["output"] == "The sum is 5"
    assert plain.json()["steps"] == 2
    assert [(m["role"], m["content"]) for m in messages[:4]] == [
        ("user", "2+3?"),
        ("assistant", "Let me add. Now: "),
        ("tool", "5"),
        ("assistant", "The sum is 5"),
    ]
    assert messages[1]["tool_calls"] == [{"id": "c1", "name": "add", "arguments": {"a": 2, "b": 3}}]
