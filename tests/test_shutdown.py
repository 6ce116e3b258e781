"""Graceful shutdown of a real uvicorn process on SIGTERM.

Running turns get the grace period; a turn that finishes within it ends
normally, one that does not ends with an `error` event of code `shutdown`;
the server stops accepting; everything acknowledged is in the store.
"""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.helpers import assert_start, sse_run
from tests.servers import server_process

pytestmark = pytest.mark.e2e

TARGET = str(Path(__file__).parent / "apps" / "shutdown_app.py") + ":app"
GRACE = 1.5


def _sse(url: str, params: dict[str, str], first: threading.Event) -> tuple[str, list[Any]]:
    """The run id and events of a whole stream (checked by `sse_run`); `first` is set
    once the turn streams its answer."""
    lines: list[str] = []
    with httpx.Client(timeout=30) as client, client.stream("GET", f"{url}/stream", params=params) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("data: ") and not line.startswith('data: {"type":"start"'):
                first.set()
        run_id, events = sse_run("\n".join(lines))
        assert response.headers["x-run-id"] == run_id
    return run_id, events


def _ws(url: str, message: dict[str, str], first: threading.Event) -> tuple[list[Any], int | None]:
    events: list[Any] = []
    code: int | None = None
    with connect(url.replace("http", "ws", 1) + "/ws/chat") as ws:
        ws.send(json.dumps(message))
        try:
            for _ in range(1000):
                events.append(json.loads(ws.recv(timeout=30)))
                if events[-1]["type"] != "start":  # the turn streams its answer
                    first.set()
                if events[-1]["type"] in ("done", "error"):
                    break
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
    return events, code


def _journal(path: Path) -> dict[str, list[tuple[str, str]]]:
    sessions: dict[str, list[tuple[str, str]]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        sessions.setdefault(entry["session"], []).append((entry["role"], entry["content"]))
    return sessions


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_sigterm_lets_short_turns_finish_and_ends_long_ones(server: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    quick_input = " ".join(f"q{n}" for n in range(20))  # ~1 s: within the grace period
    endless_input = " ".join(f"e{n}" for n in range(300))  # ~60 s: cut by it
    args = [TARGET, "--grace-period", str(GRACE), "--server", server]
    env = {"ORBITER_TEST_JOURNAL": str(journal)}
    with server_process(args, env=env) as (process, url):
        assert httpx.post(f"{url}/sessions", json={"id": "noted"}).status_code == 201
        acknowledged = httpx.post(
            f"{url}/sessions/noted/messages", json={"role": "user", "content": "remember me"}
        )
        assert acknowledged.status_code == 201
        started = [threading.Event() for _ in range(3)]
        with ThreadPoolExecutor(3) as pool:
            quick: Future[tuple[str, list[Any]]] = pool.submit(
                _sse, url, {"agent_name": "quick", "input": quick_input, "session_id": "quick"}, started[0]
            )
            endless: Future[tuple[str, list[Any]]] = pool.submit(
                _sse,
                url,
                {"agent_name": "endless", "input": endless_input, "session_id": "endless"},
                started[1],
            )
            socket: Future[tuple[list[Any], int | None]] = pool.submit(
                _ws, url, {"agent_name": "endless", "input": endless_input, "session_id": "ws"}, started[2]
            )
            for event in started:
                assert event.wait(20)
            process.send_signal(signal.SIGTERM)
            (quick_id, quick_events), (endless_id, endless_events) = quick.result(30), endless.result(30)
            ws_events, ws_code = socket.result(30)
            with pytest.raises(httpx.TransportError):
                httpx.post(f"{url}/chat", json={"input": "too late"}, timeout=5)
        # uvicorn re-raises the signal once it shut down gracefully
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)

    assert_start(quick_events[0], "quick", "quick")
    assert quick_events[0]["run_id"] == quick_id
    assert quick_events[-2]["type"] == "done" and quick_events[-2]["output"] == quick_input
    assert quick_events[-2]["run_id"] == quick_id != endless_id
    assert endless_events[0]["type"] == "start" and endless_events[0]["session_id"] == "endless"
    assert endless_events[-2] == {
        "type": "error",
        "run_id": endless_id,
        "error": "The server shut down before the run finished",
        "code": "shutdown",
    }
    assert endless_events[-1] == quick_events[-1] == "[DONE]"
    assert 0 < sum(e["type"] == "text" for e in endless_events[:-2]) < 300
    ws_run = assert_start(ws_events[0], "endless", "ws")
    assert ws_events[1]["type"] == "text"
    if server == "uvicorn":  # uvicorn closes WebSockets at once on shutdown ("service restart")
        assert ws_code == 1012
    else:  # hypercorn leaves them to the app: the turn ends like the SSE one
        assert ws_events[-1]["code"] == "shutdown" and ws_events[-1]["run_id"] == ws_run

    stored = _journal(journal)
    assert stored["noted"] == [("user", "remember me")]
    assert stored["quick"] == [("user", quick_input), ("assistant", quick_input)]
    for session in ("endless", "ws"):
        (user, assistant) = stored[session]
        assert user == ("user", endless_input)
        assert assistant[0] == "assistant" and endless_input.startswith(assistant[1]) and assistant[1]
    streamed = "".join(e["content"] for e in endless_events if isinstance(e, dict) and e["type"] == "text")
    assert stored["endless"][1][1] == streamed
