"""The app under real uvicorn and hypercorn processes on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.helpers import assert_start
from tests.servers import running_server

pytestmark = pytest.mark.e2e

TARGET = str(Path(__file__).parent / "apps" / "slow_agents.py") + ":agents"


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    args = [TARGET, "--store", "memory://", "--server", request.param]
    with running_server(args) as url:
        yield url


def test_chat_and_sessions(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        first = client.post("/chat", json={"input": "hello real server", "session_id": "e2e"})
        second = client.post("/chat", json={"message": "again", "session_id": "e2e"})
        session = client.get("/sessions/e2e").json()
        bad = client.post("/chat", content=b"{", headers={"content-type": "application/json"})
    assert first.json()["output"] == "hello real server"
    assert second.json()["output"] == "again"
    assert [m["content"] for m in session["messages"]] == [
        "hello real server",
        "hello real server",
        "again",
        "again",
    ]
    assert bad.status_code == 400 and bad.json()["detail"]


def test_sse_arrives_incrementally(server: str) -> None:
    arrivals: list[float] = []
    payloads: list[str] = []
    params = {"agent_name": "slow", "input": "one two three four five"}
    with (
        httpx.Client(base_url=server, timeout=10) as client,
        client.stream("GET", "/stream", params=params) as response,
    ):
        assert response.headers["x-accel-buffering"] == "no"
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
                payloads.append(line[6:])
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["output"] == "one two three four five"
    # five words 50 ms apart: the first arrives well before the last
    assert arrivals[-1] - arrivals[0] > 0.1


def test_a_run_outlives_its_client_for_its_grace_then_ends(server: str) -> None:
    params = {"agent_name": "slow", "input": " ".join(f"w{n}" for n in range(200)), "session_id": "cut"}
    with httpx.Client(base_url=server, timeout=10) as client:
        with client.stream("GET", "/stream", params=params) as response:
            run_id = response.headers["x-run-id"]
            for line in response.iter_lines():
                if line.startswith("data: ") and "w2" in line:
                    break
        dropped = time.monotonic()
        info: dict[str, Any] = {}
        deadline = dropped + 15  # 200 words at 50 ms would take 10 s; the grace is 5 s
        while time.monotonic() < deadline:
            info = client.get(f"/runs/{run_id}").json()
            if info["status"] != "running":
                break
            time.sleep(0.1)
        ended_after = time.monotonic() - dropped
        messages = client.get("/sessions/cut/messages").json()
    assert info["status"] == "cancelled" and info["error"]["code"] == "cancelled"
    assert 4 < ended_after < 9  # it went on for its grace, then stopped well before its end
    assert messages[0]["content"].startswith("w0 w1")
    assert messages[1]["role"] == "assistant" and messages[1]["content"] == info["output"]
    assert 2 < len(messages[1]["content"].split()) < 200


def test_websocket_turns(server: str) -> None:
    ws_url = server.replace("http", "ws", 1) + "/ws/chat"
    with connect(ws_url) as ws:
        for text in ("first turn", "second turn"):
            ws.send(json.dumps({"agent_name": "assistant", "input": text, "session_id": "ws"}))
            events = _ws_turn(ws)
            run_id = assert_start(events[0], session_id="ws")
            assert events[-1]["output"] == text and events[-1]["run_id"] == run_id
        # every turn ends with one `done`, failed and refused ones too: the guide's
        # client, which reads until `done`, never hangs
        ws.send(json.dumps({"agent_name": "broken", "input": "hi"}))
        failed = _ws_turn(ws)
        assert [e["type"] for e in failed] == ["start", "text", "error", "done"]
        run_id = assert_start(failed[0], "broken")
        assert failed[2]["error"] == "Agent 'broken' failed: RuntimeError: model exploded"
        assert failed[3]["output"] == "partial"
        assert failed[2]["run_id"] == failed[3]["run_id"] == run_id
        for refused in ("not json", {"input": ""}, {"input": "x", "agent_name": "nobody"}):
            ws.send(refused if isinstance(refused, str) else json.dumps(refused))
            events = _ws_turn(ws)
            assert [(e["type"], e["run_id"]) for e in events] == [("error", None), ("done", None)]
        ws.send(json.dumps({"message": "still open"}))  # the original package's field name
        assert _ws_turn(ws)[-1]["output"] == "still open"


def _ws_turn(ws: Any) -> list[dict[str, Any]]:
    events = [json.loads(ws.recv(timeout=10))]
    while events[-1]["type"] != "done":
        events.append(json.loads(ws.recv(timeout=10)))
    return events


def test_cli_demo_prints_url_and_agents() -> None:
    with running_server(["--store", "memory://"], env={"OPENAI_API_KEY": ""}) as url:
        agents = httpx.get(f"{url}/agents").json()
    assert agents == [
        {
            "name": "assistant",
            "model": "echo",
            "description": "Demo agent (echo: answers with your own words)",
        }
    ]
