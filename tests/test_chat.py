from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from orbiter_asgi import Agent, create_app
from orbiter_asgi.app import ChatRequest, ChatResponse
from tests.helpers import assert_run_id, client_for, sse_events, sse_run

pytestmark = pytest.mark.anyio


async def test_chat_echoes_and_reports_usage(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat", json={"agent_name": "assistant", "input": "What is Python?"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "output": "What is Python?",
        "agent_name": "assistant",
        "session_id": None,
        "steps": 1,
        "usage": {"input_tokens": 3, "output_tokens": 3, "total_tokens": 6},
        "run_id": assert_run_id(response.headers["x-run-id"]),
    }
    again = await client.post("/chat", json={"agent_name": "assistant", "input": "What is Python?"})
    assert again.json()["run_id"] == again.headers["x-run-id"] != response.headers["x-run-id"]


async def test_message_is_an_alias_of_input(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat", json={"message": "hello there"})
    assert response.status_code == 200
    assert response.json()["output"] == "hello there"


async def test_default_agent_is_the_first_registered_unless_marked() -> None:
    async def second(input: str) -> str:
        return "second"

    app = create_app(agents=[Agent("first"), second])
    async with client_for(app) as client:
        assert (await client.post("/chat", json={"input": "x"})).json()["agent_name"] == "first"
    app.agents.register(second, default=True)
    async with client_for(app) as client:
        assert (await client.post("/chat", json={"input": "x"})).json()["output"] == "second"


async def test_streamed_chat_is_sse_ending_with_done(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat", json={"input": "Explain decorators please", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    run_id = assert_run_id(response.headers["x-run-id"])
    assert events[0] == {"type": "start", "run_id": run_id, "agent_name": "assistant", "session_id": None}
    texts = [e["content"] for e in events if isinstance(e, dict) and e["type"] == "text"]
    assert "".join(texts) == "Explain decorators please"
    assert len(texts) == 3
    done = events[-2]
    assert isinstance(done, dict) and done["type"] == "done" and done["output"] == "Explain decorators please"
    assert done["run_id"] == run_id
    # every frame, [DONE] too, has the id `<run_id>:<seq>`, seq counting from 1
    ids = [line[4:] for line in response.text.splitlines() if line.startswith("id: ")]
    assert ids == [f"{run_id}:{n}" for n in range(1, len(events) + 1)]


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({"agent_name": "assistant"}, ["body", "input"], "missing"),
        ({"input": 5}, ["body", "input"], "type_error"),
        ({"input": "x", "stream": "yes"}, ["body", "stream"], "type_error"),
        ({"input": "x", "session_id": ["a"]}, ["body", "session_id"], "type_error"),
    ],
)
async def test_body_not_matching_its_struct_is_a_fastapi_422(
    client: httpx.AsyncClient, body: object, loc: list[str], kind: str
) -> None:
    response = await client.post("/chat", json=body)
    assert response.status_code == 422
    [item] = response.json()["detail"]
    assert item["loc"] == loc
    assert item["type"] == kind
    assert item["msg"]


@pytest.mark.parametrize("content", [b"{bad json", b"", b"[1, 2]", "\ufeff{}".encode()])
async def test_malformed_bodies_are_4xx_with_detail(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post("/chat", content=content, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422)
    assert response.json()["detail"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.api+json"])
async def test_json_media_types_are_accepted(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post("/chat", content=b'{"input": "ok"}', headers={"content-type": content_type})
    assert response.status_code == 200
    assert response.json()["output"] == "ok"


async def test_non_json_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat", content=b"input=hi", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


async def test_oversized_body_is_413_without_reading_it() -> None:
    app = create_app(agents=[Agent("assistant")], max_body_size=100)
    async with client_for(app) as client:
        response = await client.post("/chat", json={"input": "x" * 200})
    assert response.status_code == 413
    assert "100" in response.json()["detail"]


async def test_unknown_agent_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat", json={"agent_name": "nobody", "input": "hi"})
    assert response.status_code == 404
    assert response.json() == {"detail": "Agent 'nobody' not found"}


async def test_no_agents_registered_is_503_as_in_the_original() -> None:
    async with client_for(create_app(agents=[])) as client:
        response = await client.post("/chat", json={"input": "hi"})
        named = await client.post("/chat", json={"input": "hi", "agent_name": "assistant"})
        streamed = await client.get("/stream", params={"input": "hi"})
        detail = await client.get("/agents/assistant")
    for answer in (response, named, streamed, detail):
        assert answer.status_code == 503
        assert answer.json() == {"detail": "No agents registered"}


async def test_agent_failure_is_502_with_clear_detail_and_error_event() -> None:
    async def broken(input: str) -> AsyncIterator[str]:
        yield "partial "
        raise RuntimeError("model exploded")

    async with client_for(create_app(agents={"broken": broken})) as client:
        response = await client.post("/chat", json={"input": "hi"})
        assert response.status_code == 502
        assert response.json() == {"detail": "Agent 'broken' failed: RuntimeError: model exploded"}
        streamed = await client.post("/chat", json={"input": "hi", "stream": True})
    run_id, events = sse_run(streamed)
    assert events == [
        {"type": "start", "run_id": run_id, "agent_name": "broken", "session_id": None},
        {"type": "text", "content": "partial "},
        {
            "type": "error",
            "run_id": run_id,
            "error": "Agent 'broken' failed: RuntimeError: model exploded",
            "code": "agent_error",
        },
        "[DONE]",
    ]


async def test_wrong_method_is_405_with_detail(client: httpx.AsyncClient) -> None:
    response = await client.get("/chat")
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}


def test_chat_request_and_response_build_like_the_original_models() -> None:
    request = ChatRequest(
        agent_name="assistant", input="What is Python?", session_id="session-123", stream=False
    )
    assert request.input == "What is Python?"
    assert ChatRequest(message="hi").input == "hi"
    with pytest.raises(ValueError, match="input"):
        ChatRequest(agent_name="assistant")
    response = ChatResponse(output="x", agent_name="assistant", session_id="s")
    assert response.usage.total_tokens == 0 and response.steps == 0
