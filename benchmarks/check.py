"""The correctness check run once per target before anything is timed.

Every benchmarked route is called with httpx (and the `websockets` client for
`/ws/chat`); answers are checked against the contract (the echo output is the
input, SSE ids count up and the stream ends with `[DONE]`, each WebSocket
turn ends with `done`) and then compared across targets, so a fast target
that answers something else is caught.

The peers speak the streaming contract as it was before runs (`id: N`, no
`start` event, no `run_id`); orbiter_asgi speaks it with them (`id:
<run_id>:N`, a `start` first, `run_id` in `done` and in JSON answers). Both
pass, and answers are compared with the run's marks taken out.

OpenAI's Chat Completions (`/v1/chat/completions`) is checked only on the
targets its scenarios run on (see `HttpScenario.targets`): each answer's
id is `chatcmpl-<run_id>`, the text is the input, usage counts its words.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from websockets.sync.client import connect

from .scenarios import AGENT, HTTP_SCENARIOS, chat_body, openai_body, stream_path, words

__all__ = ["CheckError", "answers", "compare"]


_SCENARIOS = {s.name: s for s in HTTP_SCENARIOS}


class CheckError(AssertionError):
    pass


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckError(message)


def _sse(response: httpx.Response, input: str) -> list[Any]:
    _expect(response.status_code == 200, f"SSE status {response.status_code}")
    media = response.headers.get("content-type", "")
    _expect(media.startswith("text/event-stream"), f"SSE content-type {media!r}")
    _expect(response.headers.get("cache-control") == "no-cache", "SSE without Cache-Control: no-cache")
    blocks = [b for b in response.text.split("\n\n") if b]
    _expect(blocks[-1].endswith("data: [DONE]"), "SSE stream does not end with data: [DONE]")
    run_id = response.headers.get("x-run-id")
    head = f"id: {run_id}:" if run_id else "id: "
    events: list[Any] = []
    for expected_id, block in enumerate(blocks[:-1], start=1):
        lines = block.split("\n")
        _expect(lines[0] == f"{head}{expected_id}", f"SSE event {expected_id} has {lines[0]!r}")
        _expect(len(lines) == 2 and lines[1].startswith("data: "), f"SSE block {block!r}")
        events.append(json.loads(lines[1][len("data: ") :]))
    if run_id:
        _expect(blocks[-1] == f"{head}{len(blocks)}\ndata: [DONE]", "[DONE] without the next id")
        _expect(events[0] == {"type": "start", "run_id": run_id, "agent_name": AGENT, "session_id": None},
                "SSE stream does not begin with start")
        events = _unmarked(events[1:])
    _expect(all(e["type"] == "text" for e in events[:-1]), "SSE events before done are not text")
    _expect(events[-1]["type"] == "done", "SSE last event is not done")
    _expect("".join(e["content"] for e in events[:-1]) == input, "SSE text is not the input")
    _expect(events[-1]["output"] == input, "SSE done output is not the input")
    return events


def _unmarked(events: list[Any]) -> list[Any]:
    """Events (or answers) without their `run_id`, which only orbiter_asgi has."""
    return [{k: v for k, v in event.items() if k != "run_id"} for event in events]


def _openai_json(response: httpx.Response, input: str) -> Any:
    _expect(response.status_code == 200, f"/v1/chat/completions {response.status_code}: {response.text}")
    body = response.json()
    _expect(body["id"] == f"chatcmpl-{response.headers.get('x-run-id')}", "completion id is not the run's")
    _expect(body["object"] == "chat.completion" and body["model"] == AGENT, "completion object or model")
    choice = {"index": 0, "message": {"role": "assistant", "content": input}, "finish_reason": "stop"}
    _expect(body["choices"] == [{**choice, "logprobs": None}], "completion choices are not the input")
    words_in = len(input.split())
    usage = {"prompt_tokens": words_in, "completion_tokens": words_in, "total_tokens": 2 * words_in}
    _expect(body["usage"] == usage, f"completion usage {body['usage']}")
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def _openai_sse(response: httpx.Response, input: str) -> list[Any]:
    _expect(response.status_code == 200, f"OpenAI SSE status {response.status_code}")
    media = response.headers.get("content-type", "")
    _expect(media.startswith("text/event-stream"), f"OpenAI SSE content-type {media!r}")
    blocks = [b for b in response.text.split("\n\n") if b]
    _expect(blocks[-1] == "data: [DONE]", "OpenAI SSE stream does not end with data: [DONE]")
    _expect(all(b.startswith("data: ") and "\n" not in b for b in blocks), "OpenAI SSE: not one data line")
    chunks = [json.loads(b[len("data: ") :]) for b in blocks[:-1]]
    completion_id = f"chatcmpl-{response.headers.get('x-run-id')}"
    _expect({c["id"] for c in chunks} == {completion_id}, "chunk ids are not the run's")
    _expect({c["object"] for c in chunks} == {"chat.completion.chunk"}, "chunk object")
    choices = [c["choices"][0] for c in chunks]
    _expect(choices[0]["delta"] == {"role": "assistant", "content": ""}, "first chunk has no role")
    _expect([c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["stop"], "finish_reason")
    text = "".join(c["delta"].get("content", "") for c in choices)
    _expect(text == input, "OpenAI SSE text is not the input")
    return choices


def _ws_turns(url: str, inputs: list[str], session_id: str | None) -> list[list[Any]]:
    turns: list[list[Any]] = []
    with connect(url, open_timeout=10, close_timeout=5) as socket:
        for input in inputs:
            socket.send(json.dumps({"agent_name": AGENT, "input": input, "session_id": session_id}))
            events: list[Any] = []
            for _ in range(10_000):
                event = json.loads(socket.recv(timeout=10))
                events.append(event)
                if event["type"] == "done":
                    break
            events = _unmarked([e for e in events if e["type"] != "start"])
            _expect(events[-1]["type"] == "done", f"WS turn ended with {events[-1]}")
            _expect(all(e["type"] == "text" for e in events[:-1]), f"WS turn failed: {events}")
            _expect("".join(e["content"] for e in events[:-1]) == input, "WS text is not the input")
            turns.append(events)
    return turns


def answers(base_url: str, tag: str) -> dict[str, Any]:
    """What one target answers to every benchmarked request, checked."""
    result: dict[str, Any] = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        input20 = words(20)
        response = client.post("/chat", content=chat_body(20), headers={"content-type": "application/json"})
        _expect(response.status_code == 200, f"/chat status {response.status_code}: {response.text}")
        body = _unmarked([response.json()])[0]
        _expect(body["output"] == input20, "/chat output is not the input")
        _expect(body["usage"] == {"input_tokens": 20, "output_tokens": 20, "total_tokens": 40}, "usage")
        result["chat_json"] = body

        post = client.post(
            "/chat", content=chat_body(100, stream=True), headers={"content-type": "application/json"}
        )
        result["chat_sse"] = _sse(post, words(100))
        result["stream_get"] = _sse(client.get(stream_path(1000)), words(1000))

        if _SCENARIOS["chat_openai"].serves(tag):
            path, json_type = "/v1/chat/completions", {"content-type": "application/json"}
            post = client.post(path, content=openai_body(20), headers=json_type)
            result["chat_openai"] = _openai_json(post, input20)
            post = client.post(path, content=openai_body(100, stream=True), headers=json_type)
            result["chat_openai_sse"] = _openai_sse(post, words(100))

        response = client.get("/agents")
        _expect(response.status_code == 200, f"/agents status {response.status_code}")
        result["agents"] = response.json()
        _expect(result["agents"] == [{"name": AGENT, "model": "echo", "description": ""}], "/agents")

        session_id = "check-" + "".join(c if c.isalnum() or c in "_-" else "-" for c in tag)
        turns = []
        for _ in range(2):
            response = client.post(
                "/chat",
                content=chat_body(20, session_id=session_id),
                headers={"content-type": "application/json"},
            )
            _expect(response.status_code == 200, f"/chat session status {response.status_code}")
            turn = _unmarked([response.json()])[0]
            _expect(turn["session_id"] == session_id, "/chat session_id not echoed")
            turn["session_id"] = "<session>"
            turns.append(turn)
        # the second turn's input tokens count the first turn's history
        _expect(turns[1]["usage"]["input_tokens"] == 60, f"session history not used: {turns[1]}")
        result["chat_session"] = turns

    ws_url = base_url.replace("http://", "ws://") + "/ws/chat"
    result["ws"] = _ws_turns(ws_url, [words(100), words(3)], None)
    return result


def compare(reference_name: str, reference: dict[str, Any], name: str, other: dict[str, Any]) -> None:
    for key, value in reference.items():
        if key in _SCENARIOS and not _SCENARIOS[key].serves(name):
            continue
        _expect(other.get(key) == value, f"{name} answers {key} unlike {reference_name}")
