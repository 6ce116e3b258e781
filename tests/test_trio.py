"""Turns under trio: anyio's cancel scope stands in for the native asyncio one.

The package runs on asyncio in practice (see the README); under trio a
turn still answers, times out, drains and is cancelled over the WebSocket,
without heartbeats or the disconnect watch of JSON turns.
"""

from __future__ import annotations

import anyio
import pytest
from starlette.testclient import TestClient

from orbiter_asgi import Agent, create_app
from tests.helpers import assert_run_id, assert_start, client_for, sse_run
from tests.misbehaving import Gate

pytest.importorskip("trio")


def _on_trio(test: object) -> None:
    anyio.run(test, backend="trio")  # type: ignore[arg-type]


def test_chat_json_and_sse_answer_under_trio() -> None:
    async def scenario() -> None:
        app = create_app(agents=[Agent("assistant")], drain_on_signal=False)
        async with client_for(app) as client:
            chat = await client.post("/chat", json={"input": "hello trio", "session_id": "t"})
            streamed = await client.post("/chat", json={"input": "again", "stream": True})
            history = (await client.get("/sessions/t/messages")).json()
        assert chat.status_code == 200 and chat.json()["output"] == "hello trio"
        assert chat.json()["run_id"] == assert_run_id(chat.headers["x-run-id"])
        run_id, events = sse_run(streamed)
        assert [(e["type"], e.get("content")) for e in events[:-2]] == [("start", None), ("text", "again")]
        assert events[-2]["type"] == "done" and events[-2]["run_id"] == run_id != chat.json()["run_id"]
        assert [m["content"] for m in history] == ["hello trio", "hello trio"]
        assert app.context.guard.active == 0

    _on_trio(scenario)


@pytest.mark.parametrize("timeout", [0.005, 0.05])
def test_timeouts_and_the_drain_hold_under_trio(timeout: float) -> None:
    async def scenario() -> None:
        gate = Gate()
        app = create_app(agents=[gate], run_timeout=timeout, drain_on_signal=False)
        async with client_for(app) as client:
            with anyio.fail_after(5):
                late = await client.post("/chat", json={"input": "hi"})
            assert late.status_code == 504

            drained = create_app(agents=[Gate()], grace_period=0.05, drain_on_signal=False)
            async with client_for(drained) as other, anyio.create_task_group() as group:
                answers = []

                async def chat() -> None:
                    answers.append(await other.post("/chat", json={"input": "x"}))

                group.start_soon(chat)
                await anyio.sleep(0.02)
                drained.drain()
            assert answers[0].status_code == 503 and answers[0].json()["detail"].startswith("The server")
        assert app.context.guard.active == drained.context.guard.active == 0

    _on_trio(scenario)


def test_websocket_turns_and_cancel_under_trio() -> None:
    app = create_app(
        agents=[Agent("assistant"), Agent("slow", model="echo?delay=0.05")], drain_on_signal=False
    )
    with TestClient(app, backend="trio") as client, client.websocket_connect("/ws/chat") as ws:
        ws.send_json({"input": "two words"})
        events = [ws.receive_json() for _ in range(4)]
        assert [e["type"] for e in events] == ["start", "text", "text", "done"]
        assert events[-1]["run_id"] == assert_start(events[0])
        ws.send_json({"input": "many slow words " * 20, "agent_name": "slow"})
        ws.send_json({"type": "cancel"})
        run_id = assert_start(ws.receive_json(), "slow")
        last = ws.receive_json()
        while last["type"] == "text":
            last = ws.receive_json()
        assert last == {
            "type": "error",
            "run_id": run_id,
            "error": "The turn was cancelled",
            "code": "cancelled",
        }
        done = ws.receive_json()
        assert done["type"] == "done" and done["run_id"] == run_id
        ws.send_json({"input": "after"})
        assert assert_start(ws.receive_json()) != run_id
        assert ws.receive_json() == {"type": "text", "content": "after"}
    assert app.context.guard.active == 0
