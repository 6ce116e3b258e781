"""Runs outlive their connection: replay, resume, grace, background runs, idempotency, cancel.

In one process, on the memory store; `tests/stores/test_runs_across_workers.py`
does the same across real worker processes sharing SQLite or Redis.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.testclient import TestClient

from orbiter_asgi import Agent, create_app
from orbiter_asgi.stores.memory import MemoryStore
from orbiter_asgi.stores.memory_journal import MemoryJournal
from tests.helpers import client_for, http_scope

pytestmark = pytest.mark.anyio

WORDS = " ".join(f"w{n}" for n in range(40))


class Counting:
    """An echo agent that counts its turns and can be slowed down."""

    name = "counting"

    def __init__(self, delay: float = 0.0) -> None:
        self.turns = 0
        self.delay = delay

    async def stream(self, input: str, *, messages: Any = ()) -> AsyncIterator[str]:
        self.turns += 1
        for word in input.split():
            if self.delay:
                await anyio.sleep(self.delay)
            yield word + " "


def _frames(body: bytes) -> list[bytes]:
    return [frame + b"\n\n" for frame in body.split(b"\n\n") if frame]


def _seq(frame: bytes) -> int:
    return int(frame.split(b"\n", 1)[0].rpartition(b":")[2])


def _run_id(frame: bytes) -> str:
    return frame.split(b"\n", 1)[0][len(b"id: ") :].rpartition(b":")[0].decode()


async def _stream_then_leave(app: Any, body: dict[str, Any], leave_after: float) -> bytes:
    """POST /chat as a server would, the client leaving `leave_after` seconds in;
    returns what was sent before the app returned (it returns when the run ends)."""
    messages = [{"type": "http.request", "body": json.dumps(body).encode()}]
    sent: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await anyio.sleep(leave_after)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message["body"])

    with anyio.fail_after(5):
        await app(http_scope("POST", "/chat"), receive, send)
    return b"".join(sent)


async def test_a_run_is_kept_and_replayed_byte_for_byte() -> None:
    app = create_app(agents=[Agent("assistant")])
    async with client_for(app) as client:
        streamed = await client.post("/chat", json={"input": "one two three", "stream": True})
        run_id = streamed.headers["x-run-id"]
        info = (await client.get(f"/runs/{run_id}")).json()
        replay = await client.get(f"/runs/{run_id}/events")
        tail = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": f"{run_id}:3"})
        by_query = await client.get(f"/runs/{run_id}/events", params={"after": 3})
        seen_all = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": f"{run_id}:6"})
        unknown = await client.get("/runs/nope")
        unknown_events = await client.get("/runs/nope/events")
    assert info["status"] == "completed" and info["output"] == "one two three"
    assert info["ended_at"] and info["error"] is None and info["steps"] == 1
    assert replay.content == streamed.content
    assert replay.headers["x-run-id"] == run_id and replay.headers["cache-control"] == "no-cache"
    frames = _frames(streamed.content)
    assert tail.content == by_query.content == b"".join(frames[3:])
    assert [_seq(f) for f in frames] == [1, 2, 3, 4, 5, 6] and frames[-1].endswith(b"data: [DONE]\n\n")
    assert seen_all.status_code == 204
    assert unknown.status_code == unknown_events.status_code == 404
    assert "not found" in unknown.json()["detail"]


async def test_resuming_never_runs_the_agent_again() -> None:
    agent = Counting()
    app = create_app(agents=[agent])
    async with client_for(app) as client:
        first = await client.post("/chat", json={"input": "a b c", "stream": True, "session_id": "s"})
        run_id = first.headers["x-run-id"]
        resume = {"Last-Event-ID": f"{run_id}:2"}
        body = {"input": "a b c", "session_id": "s"}
        again = await client.post("/chat", json={**body, "stream": True}, headers=resume)
        as_get = await client.get("/stream", params=body, headers=resume)
        as_json = await client.post("/chat", json=body, headers=resume)
        history = (await client.get("/sessions/s/messages")).json()
    assert agent.turns == 1
    assert again.content == as_get.content == b"".join(_frames(first.content)[2:])
    assert as_json.json()["run_id"] == run_id and as_json.json()["output"] == "a b c "
    assert [m["role"] for m in history] == ["user", "assistant"]


async def test_an_event_source_that_reconnects_mid_stream_gets_the_rest_of_the_same_run() -> None:
    agent = Counting(delay=0.01)
    app = create_app(agents=[agent])
    query = b"input=" + WORDS.replace(" ", "+").encode() + b"&session_id=es"
    first: list[bytes] = []
    cut = anyio.Event()

    async def receive() -> dict[str, Any]:
        await cut.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not cut.is_set():
            first.append(message["body"])
            if len(_frames(b"".join(first))) >= 5:
                cut.set()  # the connection drops, as a phone changing network does

    async with anyio.create_task_group() as group:
        group.start_soon(app, http_scope("GET", "/stream", query), receive, send)
        await cut.wait()
        seen = _frames(b"".join(first))
        run_id = _run_id(seen[0])
        # the browser reconnects to the same URL, saying the last id it saw
        async with client_for(app) as client:
            rest = await client.get(
                f"/stream?{query.decode()}", headers={"Last-Event-ID": f"{run_id}:{_seq(seen[-1])}"}
            )
            whole = await client.get(f"/runs/{run_id}/events")
            last = _seq(_frames(whole.content)[-1])
            resume = {"Last-Event-ID": f"{run_id}:{last}"}
            after_end = await client.get(f"/stream?{query.decode()}", headers=resume)
            history = (await client.get("/sessions/es/messages")).json()
    assert agent.turns == 1  # the reconnect started no second turn
    assert b"".join(seen) + rest.content == whole.content  # no gap, no duplicate
    assert whole.content.endswith(b"data: [DONE]\n\n") and b'"type":"done"' in whole.content
    assert after_end.status_code == 204
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["content"].split() == WORDS.split()


async def test_a_run_nobody_resumes_ends_after_its_grace() -> None:
    agent = Counting(delay=0.02)
    app = create_app(agents=[agent], disconnect_grace=0.2)
    started = anyio.current_time()
    sent = await _stream_then_leave(app, {"input": WORDS * 3, "stream": True, "session_id": "g"}, 0.1)
    took = anyio.current_time() - started
    run_id = _run_id(sent)
    async with client_for(app) as client:
        info = (await client.get(f"/runs/{run_id}")).json()
        history = (await client.get("/sessions/g/messages")).json()
    assert 0.25 < took < 2  # the disconnect at 0.1 s, then the 0.2 s grace
    assert info["status"] == "cancelled" and info["error"]["code"] == "cancelled"
    assert 0 < len(history[1]["content"].split()) < len((WORDS * 3).split())  # what it had said is kept
    assert b"[DONE]" not in sent  # nothing more went to the client that left


async def test_a_run_resumed_within_its_grace_goes_on_to_its_end() -> None:
    agent = Counting(delay=0.02)  # 40 words: 0.8 s, well past the grace
    app = create_app(agents=[agent], disconnect_grace=0.2)
    async with anyio.create_task_group() as group, client_for(app) as client:
        left: list[bytes] = []

        async def first_client() -> None:
            left.append(await _stream_then_leave(app, {"input": WORDS, "stream": True}, 0.05))

        group.start_soon(first_client)
        await anyio.sleep(0.1)  # gone, and the grace running
        run_id = next(iter(app.context.store.runs._entries))
        resumed = await client.get(f"/runs/{run_id}/events")  # within the grace, then to the end
        info = (await client.get(f"/runs/{run_id}")).json()
    assert info["status"] == "completed" and info["output"].split() == WORDS.split()
    assert resumed.content.endswith(b"data: [DONE]\n\n")
    assert agent.turns == 1


async def test_background_runs_answer_202_and_go_on_alone() -> None:
    agent = Counting(delay=0.005)
    app = create_app(agents=[agent], disconnect_grace=0)
    async with client_for(app) as client:
        accepted = await client.post("/chat", json={"input": "x y z", "background": True, "session_id": "b"})
        run_id = accepted.json()["run_id"]
        running = (await client.get(f"/runs/{run_id}")).json()
        events = await client.get(f"/runs/{run_id}/events")  # follows it to its end
        ended = (await client.get(f"/runs/{run_id}")).json()
        history = (await client.get("/sessions/b/messages")).json()
    assert accepted.status_code == 202
    assert accepted.json() == {"run_id": run_id, "status": "running"}
    assert accepted.headers["location"] == f"/runs/{run_id}" and accepted.headers["x-run-id"] == run_id
    assert running["status"] == "running"
    texts = [json.loads(f.split(b"data: ", 1)[1]) for f in _frames(events.content)[:-1]]
    assert [t["type"] for t in texts] == ["start", "text", "text", "text", "done"]
    assert ended["status"] == "completed" and ended["output"] == "x y z "
    assert [m["content"] for m in history] == ["x y z", "x y z "]


async def test_a_background_stream_outlives_its_client() -> None:
    agent = Counting(delay=0.01)
    app = create_app(agents=[agent], disconnect_grace=0)
    body = {"input": "a b c d e f", "stream": True, "background": True}
    run_id = _run_id(await _stream_then_leave(app, body, 0.02))
    async with client_for(app) as client:
        info = (await client.get(f"/runs/{run_id}")).json()
    assert info["status"] == "completed" and info["output"] == "a b c d e f "


async def test_an_idempotency_key_makes_one_run() -> None:
    agent = Counting(delay=0.01)
    app = create_app(agents=[agent], api_keys=["alice", "bob"])
    body = {"input": "pay once", "session_id": "pay"}
    answers: list[httpx.Response] = []
    alice = {"Idempotency-Key": "order-1", "X-API-Key": "alice"}
    async with client_for(app) as client:

        async def post() -> None:
            answers.append(await client.post("/chat", json=body, headers=alice))

        async with anyio.create_task_group() as group:
            group.start_soon(post)
            group.start_soon(post)
        other_body = await client.post("/chat", json={**body, "input": "pay twice"}, headers=alice)
        bob = await client.post("/chat", json=body, headers={**alice, "X-API-Key": "bob"})
        streamed = {**body, "stream": True, "session_id": "paid"}
        once = await client.post("/chat", json=streamed, headers={**alice, "Idempotency-Key": "order-2"})
        twice = await client.post("/chat", json=streamed, headers={**alice, "Idempotency-Key": "order-2"})
        history = (await client.get("/sessions/pay/messages", headers={"X-API-Key": "alice"})).json()
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert other_body.status_code == 422
    assert other_body.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert bob.status_code == 200
    assert bob.json()["run_id"] != answers[0].json()["run_id"]  # keys are per API key
    assert twice.content == once.content  # the repeat of a stream: its events, replayed
    assert agent.turns == 3  # alice's two runs and bob's
    assert [m["role"] for m in history] == ["user", "assistant"] * 2


async def test_a_run_is_cancelled_through_its_route() -> None:
    agent = Counting(delay=0.02)
    app = create_app(agents=[agent])
    async with client_for(app) as client:
        accepted = await client.post("/chat", json={"input": WORDS, "background": True, "session_id": "c"})
        run_id = accepted.json()["run_id"]
        await anyio.sleep(0.1)
        cancel = await client.post(f"/runs/{run_id}/cancel")
        with anyio.fail_after(1):
            events = await client.get(f"/runs/{run_id}/events")
        info = (await client.get(f"/runs/{run_id}")).json()
        history = (await client.get("/sessions/c/messages")).json()
        unknown = await client.post("/runs/nope/cancel")
    assert cancel.status_code == 202 and cancel.json()["id"] == run_id
    frames = _frames(events.content)
    assert json.loads(frames[-2].split(b"data: ", 1)[1])["code"] == "cancelled"
    assert frames[-1].endswith(b"data: [DONE]\n\n")
    assert info["status"] == "cancelled" and info["output"] == history[1]["content"]
    assert 0 < len(history[1]["content"].split()) < 40
    assert unknown.status_code == 404


async def test_journals_are_bounded_by_bytes_and_by_time() -> None:
    app = create_app(agents=[Agent("assistant")], max_run_journal_bytes=1000, run_retention=0.2)
    async with client_for(app) as client:
        streamed = await client.post("/chat", json={"input": WORDS, "stream": True})
        run_id = streamed.headers["x-run-id"]
        dropped = await client.get(f"/runs/{run_id}/events")
        last = _seq(_frames(streamed.content)[-1])
        kept = await client.get(f"/runs/{run_id}/events", params={"after": last - 2})
        await anyio.sleep(0.3)
        expired = await client.get(f"/runs/{run_id}")
    assert dropped.status_code == 410 and "max_run_journal_bytes" in dropped.json()["detail"]
    assert kept.status_code == 200 and kept.content == b"".join(_frames(streamed.content)[-2:])
    assert expired.status_code == 404


async def test_a_failed_run_says_why() -> None:
    async def broken(input: str) -> AsyncIterator[str]:
        yield "partial"
        raise RuntimeError("model exploded")

    async with client_for(create_app(agents={"broken": broken})) as client:
        failed = await client.post("/chat", json={"input": "hi"})
        info = (await client.get(f"/runs/{failed.headers['x-run-id']}")).json()
    assert failed.status_code == 502
    assert info["status"] == "failed" and info["output"] == "partial"
    message = "Agent 'broken' failed: RuntimeError: model exploded"
    assert info["error"] == {"code": "agent_error", "message": message} and failed.json()["detail"] == message


def test_a_websocket_resumes_a_run_from_another_connection() -> None:
    app = create_app(agents=[Agent("assistant")])
    with TestClient(app) as client:
        with client.websocket_connect("/ws/chat") as first:
            first.send_json({"input": "one two three", "session_id": "ws"})
            events = [first.receive_json()]
            while events[-1]["type"] != "done":
                events.append(first.receive_json())
        run_id = events[0]["run_id"]
        with client.websocket_connect("/ws/chat") as second:
            second.send_json({"type": "resume", "run_id": run_id, "after": 2})
            resumed = [second.receive_json()]
            while resumed[-1]["type"] != "done":
                resumed.append(second.receive_json())
            second.send_json({"type": "resume", "run_id": "nope"})
            missing = [second.receive_json(), second.receive_json()]
    assert resumed == events[2:]
    assert missing[0]["code"] == "not_found" and missing[1]["type"] == "done"


async def test_a_cancel_during_a_slow_journal_write_leaves_no_gap() -> None:
    class SlowJournal(MemoryJournal):
        """A shared store's journal, as far as timing goes: the write lands, its answer is late."""

        async def append_chunk(self, run_id: str, chunk: bytes, count: int, *, max_bytes: int) -> None:
            await super().append_chunk(run_id, chunk, count, max_bytes=max_bytes)
            await anyio.sleep(0.03)

    store = MemoryStore()
    store.runs = SlowJournal()
    app = create_app(agents=[Counting()], store=store)
    async with client_for(app) as client:
        streamed: list[httpx.Response] = []

        async def stream() -> None:
            body = {"input": WORDS, "stream": True, "session_id": "slow"}
            streamed.append(await client.post("/chat", json=body))

        async with anyio.create_task_group() as group:
            group.start_soon(stream)
            await anyio.sleep(0.1)  # a few words in, most likely mid-write
            run_id = next(iter(store.runs._entries))
            await client.post(f"/runs/{run_id}/cancel")
        replay = await client.get(f"/runs/{run_id}/events")
        history = (await client.get("/sessions/slow/messages")).json()
    live = _frames(streamed[0].content)
    assert [_seq(f) for f in live] == list(range(1, len(live) + 1))  # no gap
    assert streamed[0].content == replay.content
    texts = [json.loads(f.split(b"data: ", 1)[1]) for f in live[1:-2]]
    assert "".join(t["content"] for t in texts) == history[1]["content"]
    assert json.loads(live[-2].split(b"data: ", 1)[1])["code"] == "cancelled"


async def test_runs_are_behind_the_same_keys_as_the_rest() -> None:
    app = create_app(agents=[Agent("assistant")], api_keys=["k"])
    async with client_for(app) as client:
        chat = await client.post("/chat", json={"input": "hi"}, headers={"X-API-Key": "k"})
        run_id = chat.json()["run_id"]
        anonymous = [
            await client.get(f"/runs/{run_id}"),
            await client.get(f"/runs/{run_id}/events"),
            await client.post(f"/runs/{run_id}/cancel"),
        ]
        keyed = await client.get(f"/runs/{run_id}", headers={"X-API-Key": "k"})
    assert [r.status_code for r in anonymous] == [401, 401, 401]
    assert keyed.status_code == 200 and keyed.json()["status"] == "completed"
