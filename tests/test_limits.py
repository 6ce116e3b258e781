"""Every limit of `create_app(...)`: what a client sees past it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from orbiter_asgi import Agent, Message, create_app
from orbiter_asgi.stores import MemoryStore
from tests.helpers import assert_start, client_for, http_scope, sse_run
from tests.misbehaving import Gate, call

pytestmark = pytest.mark.anyio


# --- request body -------------------------------------------------------------


async def test_declared_body_past_the_limit_is_413_without_reading_it() -> None:
    app = create_app(agents=[Agent("assistant")], max_body_size=100)
    scope = http_scope("POST", "/chat", headers=[(b"content-length", b"5000000")])
    response, received = await call(app, scope, [b"x" * 100] * 50)
    assert response.status == 413
    assert response.json() == {"detail": "Request body exceeds 100 bytes"}
    assert received == 0


async def test_streamed_body_past_the_limit_stops_reading_at_once() -> None:
    app = create_app(agents=[Agent("assistant")], max_body_size=100)
    scope = http_scope("POST", "/sessions/s/messages")
    response, received = await call(app, scope, [b"[" + b" " * 59] * 20)
    assert response.status == 413
    assert received == 2  # the second chunk passed 100 bytes; the other 18 stay unread


async def test_body_at_the_limit_is_accepted() -> None:
    body = json.dumps({"input": "x"}).encode()
    app = create_app(agents=[Agent("assistant")], max_body_size=len(body))
    async with client_for(app) as client:
        response = await client.post("/chat", content=body)
    assert response.status_code == 200


# --- input ---------------------------------------------------------------------


async def test_input_too_long_is_a_422_everywhere() -> None:
    app = create_app(agents=[Agent("assistant")], max_input_length=10)
    async with client_for(app) as client:
        ok = await client.post("/chat", json={"input": "x" * 10})
        chat = await client.post("/chat", json={"input": "x" * 11})
        streamed = await client.post("/chat", json={"input": "x" * 11, "stream": True})
        query = await client.get("/stream", params={"input": "x" * 11})
    assert ok.status_code == 200
    assert chat.status_code == streamed.status_code == 422
    assert chat.json() == {
        "detail": [
            {
                "loc": ["body", "input"],
                "msg": "String should have at most 10 characters",
                "type": "string_too_long",
            }
        ]
    }
    assert query.status_code == 422 and query.json()["detail"][0]["loc"] == ["query", "input"]
    with TestClient(app) as sync, sync.websocket_connect("/ws/chat") as ws:
        ws.send_json({"input": "x" * 11})
        assert ws.receive_json()["code"] == "validation_error"


async def test_message_too_long_is_a_422_even_beside_input() -> None:
    # `message` is the original name of `input`: its documented limit holds even when `input` wins
    app = create_app(agents=[Agent("assistant")], max_input_length=10)
    async with client_for(app) as client:
        alone = await client.post("/chat", json={"message": "x" * 11})
        beside = await client.post("/chat", json={"input": "short", "message": "x" * 11})
        both_ok = await client.post("/chat", json={"input": "short", "message": "x" * 10})
    assert alone.status_code == 422 and alone.json()["detail"][0]["loc"] == ["body", "input"]
    assert beside.status_code == 422 and beside.json()["detail"][0]["loc"] == ["body", "message"]
    assert both_ok.status_code == 200 and both_ok.json()["output"] == "short"
    with TestClient(app) as sync, sync.websocket_connect("/ws/chat") as ws:
        ws.send_json({"input": "short", "message": "x" * 11})
        assert ws.receive_json()["code"] == "validation_error"


# --- WebSocket messages ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "bytes", "multibyte"])
def test_websocket_message_past_the_limit_closes_1009(kind: str) -> None:
    app = create_app(agents=[Agent("assistant")], max_ws_message_size=64)
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        ws.send_json({"input": "fits"})
        while ws.receive_json()["type"] != "done":
            pass
        if kind == "text":
            ws.send_text(json.dumps({"input": "x" * 64}))
        elif kind == "bytes":
            ws.send_bytes(json.dumps({"input": "x" * 64}).encode())
        else:  # 20 characters, 80 bytes
            ws.send_text(json.dumps({"input": "\U0001f600" * 20}, ensure_ascii=False))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1009


# --- session ids ---------------------------------------------------------------------


@pytest.mark.parametrize("session_id", ["a b", "a/b", "x" * 129, "ä", "a\nb", "", "../etc"])
async def test_default_session_id_rules(session_id: str, client: httpx.AsyncClient) -> None:
    response = await client.post("/chat", json={"input": "hi", "session_id": session_id})
    created = await client.post("/sessions", json={"id": session_id})
    assert response.status_code == created.status_code == 400
    assert "Invalid session id" in response.json()["detail"]


async def test_session_id_length_and_pattern_are_configurable() -> None:
    app = create_app(agents=[Agent("assistant")], max_session_id_length=8, session_id_pattern=r"[a-f0-9]+")
    async with client_for(app) as client:
        ok = await client.post("/chat", json={"input": "hi", "session_id": "abc123"})
        too_long = await client.post("/chat", json={"input": "hi", "session_id": "abcdef123"})
        outside = await client.post("/sessions", json={"id": "xyz"})
        path = await client.get("/sessions/XYZ")
    assert ok.status_code == 200
    assert too_long.status_code == outside.status_code == path.status_code == 400
    assert "1 to 8 characters" in too_long.json()["detail"]


# --- page size --------------------------------------------------------------------------


async def test_page_size_limit_is_configurable_and_documented() -> None:
    app = create_app(agents=[Agent("assistant")], max_page_size=5)
    async with client_for(app) as client:
        for n in range(7):
            await client.post("/sessions", json={"id": f"s{n}"})
        default = await client.get("/sessions")
        five = await client.get("/sessions", params={"limit": 5})
        six = await client.get("/sessions", params={"limit": 6})
        document = (await client.get("/openapi.json")).json()
    assert len(default.json()) == 5 and "x-next-cursor" in default.headers
    assert len(five.json()) == 5
    assert six.status_code == 422 and six.json()["detail"][0]["loc"] == ["query", "limit"]
    limit = next(p for p in document["paths"]["/sessions"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 5}


# --- free JSON depth ---------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):  # `depth` levels of objects
        value = {"k": value}
    return value


async def test_metadata_nesting_is_bounded() -> None:
    app = create_app(agents=[Agent("assistant")], max_json_depth=4)
    async with client_for(app) as client:
        ok = await client.post("/sessions", json={"id": "ok", "metadata": _nested(4)})
        deep = await client.post("/sessions", json={"id": "deep", "metadata": _nested(5)})
        patch = await client.patch("/sessions/ok", json={"metadata": {"a": [[[[1]]]]}})
        tool = await client.post(
            "/sessions/ok/messages",
            json={"role": "assistant", "tool_calls": [{"id": "1", "name": "f", "arguments": _nested(5)}]},
        )
        stored = await client.get("/sessions/ok")
    assert ok.status_code == 201
    assert deep.status_code == patch.status_code == tool.status_code == 422
    assert deep.json()["detail"][0]["loc"] == ["body", "metadata"]
    assert stored.json()["metadata"] == _nested(4) and stored.json()["messages"] == []


# --- concurrent runs ------------------------------------------------------------------------


async def test_runs_past_the_concurrency_limit_get_503_with_retry_after() -> None:
    gate = Gate()
    app = create_app(agents=[gate], max_concurrent_runs=2)
    results: list[httpx.Response] = []
    async with client_for(app) as client, anyio.create_task_group() as group:

        async def chat(n: int) -> None:
            results.append(await client.post("/chat", json={"input": "hi", "session_id": f"c{n}"}))

        group.start_soon(chat, 1)
        group.start_soon(chat, 2)
        with anyio.fail_after(5):
            await gate.wait_running(2)
        refused = await client.post("/chat", json={"input": "third", "session_id": "c3"})
        refused_sse = await client.get("/stream", params={"input": "third"})
        gate.open()
    async with client_for(app) as client:
        after = await client.post("/chat", json={"input": "now", "session_id": "c4"})
        c3 = await client.get("/sessions/c3")
    assert refused.status_code == refused_sse.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json() == {"detail": "Too many concurrent runs (limit 2); retry shortly"}
    assert [r.status_code for r in results] == [200, 200]
    assert after.status_code == 200 and app.context.guard.active == 0
    assert c3.status_code == 404  # a refused turn leaves no trace


def test_websocket_turn_past_the_concurrency_limit_is_an_error_event() -> None:
    gate = Gate()
    app = create_app(agents=[gate], max_concurrent_runs=1)
    with (
        TestClient(app) as client,
        client.websocket_connect("/ws/chat") as first,
        client.websocket_connect("/ws/chat") as second,
    ):
        first.send_json({"input": "hold"})
        run_id = assert_start(first.receive_json(), "gate")
        assert first.receive_json() == {"type": "text", "content": "start "}
        second.send_json({"input": "refused"})
        refused = second.receive_json()  # refused before it became a run: no start, no run id
        assert refused["code"] == "overloaded" and refused["run_id"] is None
        assert second.receive_json() == {
            "type": "done", "run_id": None, "output": "", "agent_name": "", "session_id": None,
            "steps": 0, "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        }
        client.portal.call(gate.open)  # type: ignore[union-attr]
        assert first.receive_json()["content"] == "end"
        done = first.receive_json()
        assert done["type"] == "done" and done["run_id"] == run_id
        second.send_json({"input": "again"})
        events = [second.receive_json() for _ in range(4)]
    assert [e["type"] for e in events] == ["start", "text", "text", "done"]
    assert assert_start(events[0], "gate") == events[-1]["run_id"] != run_id


# --- wall-clock timeout -----------------------------------------------------------------------


async def test_run_timeout_is_504_for_json_and_an_event_for_sse() -> None:
    gate = Gate()  # never opened: every run stalls after "start"
    app = create_app(agents=[gate], run_timeout=0.2)
    async with client_for(app) as client:
        chat = await client.post("/chat", json={"input": "hi", "session_id": "t"})
        sse = await client.post("/chat", json={"input": "hi", "session_id": "t", "stream": True})
        history = (await client.get("/sessions/t/messages")).json()
    assert chat.status_code == 504
    assert chat.json() == {"detail": "The run took longer than its 0.2 s limit"}
    run_id, events = sse_run(sse)
    assert events == [
        {"type": "start", "run_id": run_id, "agent_name": "gate", "session_id": "t"},
        {"type": "text", "content": "start "},
        {
            "type": "error",
            "run_id": run_id,
            "error": "The run took longer than its 0.2 s limit",
            "code": "timeout",
        },
        "[DONE]",
    ]
    assert len(gate.ended_by) == 2 and set(gate.ended_by) <= {"CancelledError", "GeneratorExit"}
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "hi"),
        ("assistant", "start "),
        ("user", "hi"),
        ("assistant", "start "),
    ]
    assert app.context.guard.active == 0


@pytest.mark.parametrize("timeout", [0.005, 0.05])
async def test_timeouts_shorter_and_longer_than_the_arming_delay_both_hold(timeout: float) -> None:
    # deadlines are armed lazily, ARM_AFTER (20 ms) into a turn, unless sooner
    gate = Gate()
    app = create_app(agents=[gate], run_timeout=timeout)
    async with client_for(app) as client:
        with anyio.fail_after(5):
            chat = await client.post("/chat", json={"input": "hi"})
    assert chat.status_code == 504
    assert app.context.guard.active == 0


class _SlowHistoryStore(MemoryStore):
    """Stores what a turn produced (not the user message) slowly."""

    async def append(self, session_id: str, messages: Sequence[Message]) -> list[Message]:
        if all(m.role != "user" for m in messages):
            await anyio.sleep(0.15)
        return await super().append(session_id, messages)


async def test_a_deadline_during_the_history_write_does_not_cut_it_nor_outlive_the_turn() -> None:
    # the turn's deadline (50 ms) bounds the agent, which answers at once; its answer is
    # stored in the turn's last store step (150 ms), with the run's end, under the store's
    # own timeout: the write completes, the answer is reported, no cancellation lingers
    app = create_app(agents=[Agent("assistant")], store=_SlowHistoryStore(), run_timeout=0.05)
    async with client_for(app) as client:
        with anyio.fail_after(5):
            late = await client.post("/chat", json={"input": "hi there", "session_id": "slow"})
            await anyio.sleep(0)  # a cancellation left pending on this task would land here
            stored = (await client.get("/sessions/slow/messages")).json()
            after = await client.post("/chat", json={"input": "next"})
    assert late.status_code == 200 and late.json()["output"] == "hi there"
    assert [(m["role"], m["content"]) for m in stored] == [("user", "hi there"), ("assistant", "hi there")]
    assert after.status_code == 200 and after.json()["output"] == "next"
    assert app.context.guard.active == 0


def test_websocket_turn_timeout_is_an_error_event_and_the_socket_lives_on() -> None:
    gate = Gate()
    app = create_app(agents=[gate, Agent("assistant")], run_timeout=0.2)
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        ws.send_json({"input": "hi", "agent_name": "gate"})
        run_id = assert_start(ws.receive_json(), "gate")
        assert ws.receive_json()["type"] == "text"
        error = ws.receive_json()
        assert error["code"] == "timeout" and error["run_id"] == run_id
        done = ws.receive_json()
        assert done["type"] == "done" and done["agent_name"] == "gate" and done["output"]
        assert done["run_id"] == run_id
        ws.send_json({"input": "next", "agent_name": "assistant"})
        assert assert_start(ws.receive_json()) != run_id
        assert ws.receive_json() == {"type": "text", "content": "next"}


# --- drain ------------------------------------------------------------------------------------


async def test_drain_refuses_new_turns_and_ends_running_ones_after_the_grace_period() -> None:
    gate = Gate()
    app = create_app(agents=[gate], grace_period=0.2)
    async with client_for(app) as client, anyio.create_task_group() as group:
        streamed: list[httpx.Response] = []

        async def stream() -> None:
            streamed.append(await client.get("/stream", params={"input": "x", "session_id": "d"}))

        group.start_soon(stream)
        with anyio.fail_after(5):
            await gate.wait_running(1)
        app.drain()
        refused = await client.post("/chat", json={"input": "late"})
    run_id, events = sse_run(streamed[0])
    assert events[0] == {"type": "start", "run_id": run_id, "agent_name": "gate", "session_id": "d"}
    assert events[-2] == {
        "type": "error",
        "run_id": run_id,
        "error": "The server shut down before the run finished",
        "code": "shutdown",
    }
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["detail"] == "The server is shutting down; retry shortly"
    messages = await app.store.messages("d")
    assert [m.role for m in messages] == ["user", "assistant"]


# --- the command line -------------------------------------------------------------------------


async def test_serve_flags_reach_a_built_app_and_a_target_app(tmp_path: Any) -> None:
    from orbiter_asgi.cli import build_app

    target = tmp_path / "target.py"
    target.write_text("from orbiter_asgi import Agent, create_app\napp = create_app(agents=[Agent('a')])\n")
    options = {"max_input_length": 5, "max_concurrent_runs": None, "run_timeout": 2.5, "api_keys": ["k"]}
    for app in (build_app(None, "memory://", options), build_app(f"{target}:app", None, options)):
        limits = app.context.limits  # type: ignore[attr-defined]
        assert (limits.max_input_length, limits.max_concurrent_runs, limits.run_timeout) == (5, None, 2.5)
        async with client_for(app) as client:
            assert (await client.get("/agents")).status_code == 401
            too_long = await client.post("/chat", json={"input": "123456"}, headers={"X-API-Key": "k"})
            assert too_long.status_code == 422
