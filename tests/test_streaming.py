from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from orbiter_asgi import Agent, OrbiterApp, create_app
from tests.helpers import assert_start, client_for, http_scope, sse_events, sse_run


class Probe:
    """An agent that streams until stopped and records how it ended."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.ended_by: str | None = None

    async def stream(self, input: str, *, messages: Any) -> AsyncIterator[str]:
        self.started.set()
        try:
            for n in range(1000):
                yield f"w{n} "
                await anyio.sleep(0.01)
            self.ended_by = "completed"
        except BaseException as exc:
            self.ended_by = type(exc).__name__
            raise

    name = "probe"


@pytest.mark.anyio
async def test_stream_get_is_sse_of_the_run(client: httpx.AsyncClient) -> None:
    response = await client.get("/stream", params={"agent_name": "assistant", "input": "Tell me a story"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [e["content"] for e in events if isinstance(e, dict) and e["type"] == "text"] == [
        "Tell ",
        "me ",
        "a ",
        "story",
    ]
    assert events[-1] == "[DONE]"


@pytest.mark.anyio
async def test_stream_errors_before_start_are_json(client: httpx.AsyncClient) -> None:
    missing_input = await client.get("/stream")
    unknown = await client.get("/stream", params={"input": "x", "agent_name": "nope"})
    assert missing_input.status_code == 400
    assert missing_input.json() == {"detail": "Query parameter 'input' is required"}
    assert unknown.status_code == 404


@pytest.mark.anyio
async def test_content_with_newlines_keeps_sse_framing(client: httpx.AsyncClient) -> None:
    text = "line one\n\ndata: fake\r\nid: 99 end"
    response = await client.post("/chat", json={"input": text, "stream": True})
    events = sse_events(response.text)
    assert "".join(e["content"] for e in events if isinstance(e, dict) and e["type"] == "text") == text
    assert all(line.startswith(("id: ", "data: ")) for line in response.text.splitlines() if line)


async def _drive(app: OrbiterApp, scope: dict[str, Any], body: bytes, on_chunk: Any) -> None:
    """Call the app like a server would, ending the request when told to."""
    disconnect = anyio.Event()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and await on_chunk(message):
            disconnect.set()

    await app(scope, receive, send)


async def _body_chunks(app: OrbiterApp, scope: dict[str, Any]) -> list[bytes]:
    """Every body chunk the app sends for a request without a body, in order."""
    chunks: list[bytes] = []

    async def on_chunk(message: dict[str, Any]) -> bool:
        chunks.append(message["body"])
        return False

    await _drive(app, scope, b"", on_chunk)
    return chunks


@pytest.mark.anyio
async def test_client_disconnect_without_grace_cancels_the_run() -> None:
    probe = Probe()
    app = create_app(agents=[probe], disconnect_grace=0)
    chunks: list[bytes] = []

    async def on_chunk(message: dict[str, Any]) -> bool:
        chunks.append(message["body"])
        return len(chunks) == 3

    body = json.dumps({"input": "go", "stream": True, "session_id": "cut"}).encode()
    with anyio.fail_after(5):
        await _drive(app, http_scope("POST", "/chat"), body, on_chunk)
    assert probe.ended_by in ("CancelledError", "GeneratorExit")
    async with client_for(app) as client:
        messages = (await client.get("/sessions/cut/messages")).json()
    assert messages[0] == {**messages[0], "role": "user", "content": "go"}
    assert messages[1]["role"] == "assistant" and messages[1]["content"].startswith("w0 ")


@pytest.mark.anyio
async def test_send_failing_with_oserror_cancels_the_run_without_grace() -> None:
    probe = Probe()
    app = create_app(agents=[probe], disconnect_grace=0)
    sent = 0

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        sent += 1
        if sent > 2:
            raise OSError("client gone")  # ASGI 2.4: a send to a closed connection

    with anyio.fail_after(5):
        await app(http_scope("GET", "/stream", b"input=go"), receive, send)
    assert probe.ended_by in ("CancelledError", "GeneratorExit")


@pytest.mark.anyio
async def test_idle_stream_gets_comment_heartbeats() -> None:
    async def slow(input: str) -> AsyncIterator[str]:
        await anyio.sleep(0.35)
        yield "late"

    app = create_app(agents={"slow": slow}, heartbeat_interval=0.1)
    with anyio.fail_after(5):
        chunks = await _body_chunks(app, http_scope("GET", "/stream", b"input=x"))
    assert b": ping\n\n" in chunks
    assert chunks.index(b": ping\n\n") < next(i for i, c in enumerate(chunks) if b"late" in c)
    assert chunks[-1].endswith(b"data: [DONE]\n\n")


@pytest.mark.anyio
async def test_events_ready_together_leave_in_one_write() -> None:
    # an undelayed echo answer is ready at once: headers, then one body from start to [DONE]
    app = create_app(agents=[Agent("assistant")])
    chunks = await _body_chunks(app, http_scope("GET", "/stream", b"input=one+two+three"))
    assert len(chunks) == 1
    run_id, events = sse_run(chunks[0].decode())
    kinds = [e["type"] for e in events if isinstance(e, dict)]
    assert kinds == ["start"] + ["text"] * 3 + ["done"]
    assert chunks[0].startswith(b"id: %s:1\ndata: {" % run_id.encode())
    assert chunks[0].endswith(b"\n\nid: %s:6\ndata: [DONE]\n\n" % run_id.encode())


@pytest.mark.anyio
async def test_words_that_come_apart_are_written_as_they_come() -> None:
    # a slowed-down model: each word is written before the next one is produced
    app = create_app(agents=[Agent("assistant", model="echo?delay=0.02")])
    with anyio.fail_after(5):
        chunks = await _body_chunks(app, http_scope("GET", "/stream", b"input=one+two+three"))
    # the start goes out before the first word; the last word is ready together with the
    # end of the run: they share the final write
    run_id, _ = sse_run(b"".join(chunks).decode())
    head = b"id: %s:" % run_id.encode()
    assert [sse_events(c.decode()) for c in chunks[:3]] == [
        [{"type": "start", "run_id": run_id, "agent_name": "assistant", "session_id": None}],
        [{"type": "text", "content": "one "}],
        [{"type": "text", "content": "two "}],
    ]
    assert chunks[1] == head + b'2\ndata: {"type":"text","content":"one "}\n\n'
    assert len(chunks) == 4 and chunks[3].startswith(head + b'4\ndata: {"type":"text","content":"three"}')
    assert chunks[3].endswith(head + b"6\ndata: [DONE]\n\n")


# --- WebSocket ---------------------------------------------------------------


EMPTY_DONE = {  # of a frame refused before it became a run
    "type": "done",
    "run_id": None,
    "output": "",
    "agent_name": "",
    "session_id": None,
    "steps": 0,
    "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
}


def _turn(ws: Any) -> list[dict[str, Any]]:
    """The events of one turn: every turn, failed or refused, ends with `done`."""
    events = []
    while True:
        event = ws.receive_json()
        events.append(event)
        if event["type"] == "done":
            return events


def test_websocket_many_turns_with_a_session() -> None:
    app = create_app(agents=[Agent("assistant")])
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        ws.send_text(json.dumps({"agent_name": "assistant", "input": "Hello!", "session_id": "session-123"}))
        first = _turn(ws)
        ws.send_json({"input": "Second turn", "session_id": "session-123"})
        second = _turn(ws)
        history = client.get("/sessions/session-123/messages").json()
    assert "".join(e["content"] for e in first if e["type"] == "text") == "Hello!"
    assert first[-1]["type"] == "done" and first[-1]["session_id"] == "session-123"
    assert second[-1]["output"] == "Second turn"
    assert [m["content"] for m in history] == ["Hello!", "Hello!", "Second turn", "Second turn"]


def test_websocket_bad_frames_get_error_and_done_and_socket_stays_open() -> None:
    app = create_app(agents=[Agent("assistant")])
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        ws.send_text("{not json")
        assert [e["type"] for e in _turn(ws)] == ["error", "done"]
        ws.send_json({"input": "hi", "agent_name": "ghost", "session_id": "s"})
        assert _turn(ws) == [
            {"type": "error", "run_id": None, "error": "Agent 'ghost' not found", "code": "agent_not_found"},
            {**EMPTY_DONE, "agent_name": "ghost", "session_id": "s"},
        ]
        ws.send_json({"agent_name": "assistant"})
        assert [(e["type"], e.get("code"), e["run_id"]) for e in _turn(ws)] == [
            ("error", "bad_request", None),
            ("done", None, None),
        ]
        ws.send_json({"input": "x", "session_id": "bad id"})
        assert [(e["type"], e.get("code"), e["run_id"]) for e in _turn(ws)] == [
            ("error", "bad_request", None),
            ("done", None, None),
        ]
        ws.send_json({"input": ""})  # refused, as it is with a 422 over HTTP
        assert _turn(ws) == [
            {"type": "error", "run_id": None, "error": "body.input: String should have at least 1 character",
             "code": "validation_error"},
            EMPTY_DONE,
        ]
        assert client.get("/sessions").json() == []  # no refused turn touched the store
        ws.send_bytes(json.dumps({"input": "bytes work"}).encode())
        events = _turn(ws)
        assert events[-1]["output"] == "bytes work"
        assert events[-1]["run_id"] == assert_start(events[0])


def test_websocket_cancel_stops_the_running_turn() -> None:
    probe = Probe()
    app = create_app(agents=[probe, Agent("assistant")])
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        ws.send_json({"input": "go", "session_id": "ws-cancel"})
        run_id = assert_start(ws.receive_json(), "probe", "ws-cancel")
        assert ws.receive_json()["type"] == "text"
        ws.send_json({"input": "too soon"})
        busy = ws.receive_json()
        while busy["type"] == "text":
            busy = ws.receive_json()
        assert busy["code"] == "busy" and busy["run_id"] is None  # refused: not a run
        ws.send_json({"type": "cancel"})
        events = _turn(ws)
        assert events[-2] == {
            "type": "error", "run_id": run_id, "error": "The turn was cancelled", "code": "cancelled"
        }
        assert events[-1]["type"] == "done" and events[-1]["run_id"] == run_id
        assert all(e["type"] == "text" for e in events[:-2])
        ws.send_json({"input": "next turn works", "agent_name": "assistant"})
        events_next = _turn(ws)
        assert events_next[-1]["output"] == "next turn works"
        assert events_next[-1]["run_id"] == assert_start(events_next[0]) != run_id
        history = client.get("/sessions/ws-cancel/messages").json()
    assert probe.ended_by in ("CancelledError", "GeneratorExit")
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert events[-1]["output"] == history[-1]["content"]  # the partial answer, as stored


def test_websocket_cancel_without_a_turn_is_ignored() -> None:
    app = create_app(agents=[Agent("assistant")])
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        ws.send_json({"type": "cancel"})
        ws.send_json({"input": "still here"})
        events = _turn(ws)
    assert [e["type"] for e in events] == ["start", "text", "text", "done"]
    assert events[-1]["output"] == "still here"
    assert events[-1]["run_id"] == assert_start(events[0])


def test_websocket_disconnect_mid_turn_ends_it_and_keeps_its_history() -> None:
    probe = Probe()
    app = create_app(agents=[probe])
    with TestClient(app) as client:
        with client.websocket_connect("/ws/chat") as ws:
            ws.send_json({"input": "go", "session_id": "ws-gone"})
            assert_start(ws.receive_json(), "probe", "ws-gone")
            assert ws.receive_json() == {"type": "text", "content": "w0 "}
        history = client.get("/sessions/ws-gone/messages").json()
    assert probe.ended_by in ("CancelledError", "GeneratorExit")
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["content"].startswith("w0 ")
    assert app.context.guard.active == 0


def test_websocket_oversized_message_closes_with_1009() -> None:
    app = create_app(agents=[Agent("assistant")], max_ws_message_size=64)
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        ws.send_json({"input": "x" * 100})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1009
