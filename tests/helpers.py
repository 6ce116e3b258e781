"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import httpx

RUN_ID = re.compile(r"[0-9a-f]{32}")
"""A run id: 128 random bits as 32 hex digits."""


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def assert_run_id(value: object) -> str:
    """`value`, checked to look like a run id."""
    assert isinstance(value, str) and RUN_ID.fullmatch(value), f"not a run id: {value!r}"
    return value


def assert_start(event: object, agent_name: str = "assistant", session_id: str | None = None) -> str:
    """The run id of `event`, checked to be the `start` of a run of `agent_name`."""
    assert isinstance(event, dict), event
    run_id = assert_run_id(event.get("run_id"))
    assert event == {"type": "start", "run_id": run_id, "agent_name": agent_name, "session_id": session_id}
    return run_id


def sse_frames(body: str) -> list[tuple[str | None, str]]:
    """The `(id, data)` of each frame of an SSE body that has a `data:` line."""
    frames: list[tuple[str | None, str]] = []
    for block in body.split("\n\n"):
        event_id: str | None = None
        for line in block.splitlines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                frames.append((event_id, line[6:]))
    return frames


def sse_events(body: str) -> list[dict[str, Any] | str]:
    """The `data:` payloads of an SSE body, JSON-decoded except `[DONE]`.

    Also checks the ids of the frames, which may be a part of a stream: each
    frame has an `id: <run_id>:<seq>`, with one run id, seqs counting up by
    one, and any `run_id` in an event equal to that of the ids.
    """
    events: list[dict[str, Any] | str] = []
    run_ids: set[str] = set()
    seqs: list[int] = []
    for event_id, payload in sse_frames(body):
        assert event_id is not None, f"a frame without an id: {payload!r}"
        run_id, _, seq = event_id.rpartition(":")
        run_ids.add(assert_run_id(run_id))
        assert seq.isdigit(), event_id
        seqs.append(int(seq))
        event = payload if payload == "[DONE]" else json.loads(payload)
        if isinstance(event, dict) and "run_id" in event:
            assert event["run_id"] == run_id, (event, event_id)
        events.append(event)
    assert len(run_ids) <= 1, f"frames of more than one run: {run_ids}"
    if seqs:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    return events


def sse_run(response: httpx.Response | str) -> tuple[str, list[dict[str, Any] | str]]:
    """The run id and events (as `sse_events`) of a whole SSE stream, checked:
    it starts with `start` (seq 1) and ends with `[DONE]`, and the run id is
    that of every frame id, of `start`, of a `done` or `error`, and of the
    response's `X-Run-Id` header."""
    body = response if isinstance(response, str) else response.text
    events = sse_events(body)
    [(first_id, _), *_] = sse_frames(body)
    run_id = assert_run_id(first_id.rpartition(":")[0] if first_id else None)
    assert first_id == f"{run_id}:1", first_id
    start = events[0]
    assert isinstance(start, dict) and start["type"] == "start" and start["run_id"] == run_id, start
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1, events[-3:]
    for event in events[1:-1]:
        assert isinstance(event, dict) and event["type"] != "start", event
        if event["type"] in ("done", "error"):
            assert event["run_id"] == run_id, event
    if not isinstance(response, str):
        assert response.headers["x-run-id"] == run_id
    return run_id, events


def http_scope(
    method: str,
    path: str,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
) -> dict[str, Any]:
    """An HTTP scope, for calling an app with hand-made `receive`/`send`."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": query,
        "headers": list(headers),
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
