"""Runs across real worker processes: two uvicorn servers on one SQLite file, one Redis or one PostgreSQL.

A stream dropped on one worker resumes on the other with no gap and no
duplicate, a cancel sent to one stops the run on the other within a
second, a follower of a run whose worker was SIGKILLed ends with
`worker_lost` within the lease, and a reconnect after `[DONE]` is a 204.
The agent is the built-in echo at 50 ms a word, so a run lasts ~3 s; leases
(`?run_lease=`) and turn locks (`?lock_ttl=`) are cut to 2 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from store_helpers import ServerProcess
from websockets.asyncio.client import connect

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

RUN_LEASE = 2.0
LOCK_TTL = 2.0
WORDS = 60
TEXT = " ".join(f"w{n}" for n in range(WORDS))  # echoed one word every 50 ms
SLOW_ECHO = {"ORBITER_TEST_MODEL": "echo?delay=0.05"}
DONE = b"[DONE]"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    options = f"lock_ttl={LOCK_TTL:g}&run_lease={RUN_LEASE:g}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}?{options}"
    if request.param == "postgres":
        postgres: str = request.getfixturevalue("postgres_store_url")
        return f"{postgres}&{options}"
    url: str = request.getfixturevalue("redis_store_url")
    # a blocking read waits at most half the socket timeout: a lapsed lease is seen within 1 s
    return f"{url}&{options}&timeout=2"


@pytest.fixture
def workers(shared_store: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Worker A, where runs start, and worker B, where they are followed."""
    a = ServerProcess(shared_store, env=SLOW_ECHO)
    try:
        b = ServerProcess(shared_store, env=SLOW_ECHO)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


class _Frames:
    """The SSE frames of a streamed response, each with its blank line; heartbeats left out."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        self._chunks = response.aiter_raw()
        self._buffer = b""
        self.frames: list[bytes] = []

    async def read(self, count: int | None = None) -> list[bytes]:
        """Reads on until `count` frames came in all (None: to the end); returns them all."""
        while count is None or len(self.frames) < count:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                assert self._buffer == b"", f"the stream ended mid-frame: {self._buffer!r}"
                assert count is None, f"the stream ended after {len(self.frames)} frames"
                break
            *complete, self._buffer = (self._buffer + chunk).split(b"\n\n")
            self.frames += [piece + b"\n\n" for piece in complete if piece != b": ping"]
        return self.frames


def _seq(frame: bytes, run_id: str) -> int:
    head, _, _ = frame.partition(b"\n")
    name, _, number = head.removeprefix(b"id: ").rpartition(b":")
    assert head.startswith(b"id: ") and name == run_id.encode(), frame
    return int(number)


def _data(frame: bytes) -> bytes:
    return frame.partition(b"\ndata: ")[2].removesuffix(b"\n\n")


def _event(frame: bytes) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(_data(frame))
    return event


def _text(frames: list[bytes]) -> str:
    events = [_event(f) for f in frames if _data(f) != DONE]
    return "".join(e["content"] for e in events if e["type"] == "text")


def _assert_whole(frames: list[bytes], run_id: str, *, last: str, code: str | None = None) -> None:
    """A run's stream from its start: numbered 1, 2, ... with no gap, ending `last` then `[DONE]`."""
    assert [_seq(f, run_id) for f in frames] == list(range(1, len(frames) + 1))
    assert _event(frames[0])["type"] == "start" and _event(frames[0])["run_id"] == run_id
    assert _data(frames[-1]) == DONE and all(_data(f) != DONE for f in frames[:-1])
    end = _event(frames[-2])
    assert end["type"] == last, end
    if code is not None:
        assert end["code"] == code, end


async def _journal(client: httpx.AsyncClient, base: str, run_id: str) -> list[bytes]:
    """The run's frames, all of them, from `GET /runs/{id}/events?after=0`."""
    url = f"{base}/runs/{run_id}/events"
    async with client.stream("GET", url, params={"after": "0"}) as response:
        return await _Frames(response).read()


async def _history(client: httpx.AsyncClient, base: str, session_id: str) -> list[tuple[str, str]]:
    response = await client.get(f"{base}/sessions/{session_id}")
    assert response.status_code == 200, response.text
    return [(m["role"], m["content"]) for m in response.json()["messages"]]


async def _run(client: httpx.AsyncClient, base: str, run_id: str) -> dict[str, Any]:
    response = await client.get(f"{base}/runs/{run_id}")
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()
    return info


async def _assert_ended(client: httpx.AsyncClient, workers: tuple[ServerProcess, ...], run_id: str,
                        last_seq: int) -> None:
    """Every way to reconnect, on every worker, after `[DONE]` (id `last_seq`) is a 204."""
    seen = {"Last-Event-ID": f"{run_id}:{last_seq}"}
    for worker in workers:
        answers = [
            await client.get(f"{worker.url}/runs/{run_id}/events", headers=seen),
            await client.get(f"{worker.url}/runs/{run_id}/events", params={"after": str(last_seq)}),
            await client.get(f"{worker.url}/stream", params={"input": "x"}, headers=seen),
            await client.post(f"{worker.url}/chat", json={"input": "x", "stream": True}, headers=seen),
        ]
        assert [r.status_code for r in answers] == [204] * 4, [r.text for r in answers]
        assert all(r.content == b"" for r in answers)


async def test_a_stream_dropped_on_one_worker_resumes_on_the_other(
    workers: tuple[ServerProcess, ServerProcess], client: httpx.AsyncClient
) -> None:
    a, b = workers
    with anyio.fail_after(10):
        query = {"input": TEXT, "session_id": "resumed"}
        async with client.stream("GET", f"{a.url}/stream", params=query) as response:
            run_id = response.headers["x-run-id"]
            seen = await _Frames(response).read(5)
        # the client is gone, mid-frame maybe: it saw the complete frames only
        last = _seq(seen[-1], run_id)
        assert (await _run(client, b.url, run_id))["status"] == "running"

        resumed: dict[str, list[bytes]] = {}
        header = {"Last-Event-ID": f"{run_id}:{last}"}

        async def follow(name: str, method: str, url: str, options: dict[str, Any]) -> None:
            async with client.stream(method, url, headers=header, **options) as response:
                assert response.headers["x-run-id"] == run_id
                resumed[name] = await _Frames(response).read()

        ws_payloads: list[bytes] = []

        async def follow_ws() -> None:
            ws_url = b.url.replace("http://", "ws://") + "/ws/chat"
            async with connect(ws_url, open_timeout=5) as socket:
                await socket.send(json.dumps({"type": "resume", "run_id": run_id, "after": last}))
                while not ws_payloads or json.loads(ws_payloads[-1])["type"] != "done":
                    message = await socket.recv()
                    ws_payloads.append(message.encode() if isinstance(message, str) else message)

        answer: dict[str, Any] = {}

        async def wait_for_answer() -> None:
            body = {"input": TEXT, "session_id": "resumed"}
            response = await client.post(f"{b.url}/chat", json=body, headers=header)
            assert response.status_code == 200, response.text
            answer.update(response.json())

        async with anyio.create_task_group() as group:
            group.start_soon(follow, "events", "GET", f"{b.url}/runs/{run_id}/events", {})
            body = {"input": TEXT, "session_id": "resumed", "stream": True}
            group.start_soon(follow, "chat", "POST", f"{b.url}/chat", {"json": body})
            group.start_soon(follow, "stream", "GET", f"{b.url}/stream", {"params": {"input": "x"}})
            group.start_soon(follow_ws)
            group.start_soon(wait_for_answer)

        whole = await _journal(client, b.url, run_id)
    _assert_whole(whole, run_id, last="done")
    assert _text(whole) == TEXT
    for name, tail in resumed.items():
        assert tail, name
        assert b"".join(seen + tail) == b"".join(whole), name  # byte for byte: no gap, no duplicate
    # the WebSocket carries the same events, as messages of their own
    assert ws_payloads == [_data(f) for f in whole[len(seen) : -1]]
    assert answer["output"] == TEXT and answer["run_id"] == run_id

    for worker in workers:
        assert await _history(client, worker.url, "resumed") == [("user", TEXT), ("assistant", TEXT)]
        info = await _run(client, worker.url, run_id)
        assert info["status"] == "completed" and info["output"] == TEXT
    assert await _journal(client, a.url, run_id) == whole
    await _assert_ended(client, workers, run_id, _seq(whole[-1], run_id))


async def test_a_cancel_sent_to_one_worker_stops_the_run_on_the_other(
    workers: tuple[ServerProcess, ServerProcess], client: httpx.AsyncClient
) -> None:
    a, b = workers
    with anyio.fail_after(10):
        body = {"input": TEXT, "session_id": "cancelled", "stream": True}
        async with client.stream("POST", f"{a.url}/chat", json=body) as response:
            run_id = response.headers["x-run-id"]
            stream = _Frames(response)
            await stream.read(5)
            asked = time.monotonic()
            cancel = await client.post(f"{b.url}/runs/{run_id}/cancel")
            assert cancel.status_code == 202, cancel.text
            assert cancel.json()["id"] == run_id
            with anyio.fail_after(1):
                frames = await stream.read()
            took = time.monotonic() - asked
    assert took < 1.0
    _assert_whole(frames, run_id, last="error", code="cancelled")

    info = await _run(client, b.url, run_id)
    assert info["status"] == "cancelled" and info["error"]["code"] == "cancelled"
    partial = info["output"]
    # what the agent said before the cancel, not all of it; the stream may lack the
    # word that was being written when the cancel came
    assert partial and partial != TEXT and TEXT.startswith(partial)
    assert partial.startswith(_text(frames))
    for worker in workers:
        assert await _history(client, worker.url, "cancelled") == [("user", TEXT), ("assistant", partial)]
    await _assert_ended(client, workers, run_id, _seq(frames[-1], run_id))


async def test_a_follower_of_a_killed_worker_ends_with_worker_lost(
    workers: tuple[ServerProcess, ServerProcess], client: httpx.AsyncClient
) -> None:
    a, b = workers
    with anyio.fail_after(15):
        body = {"input": TEXT, "session_id": "orphaned", "stream": True}
        async with client.stream("POST", f"{a.url}/chat", json=body) as response:
            run_id = response.headers["x-run-id"]
            await _Frames(response).read(3)
            async with client.stream("GET", f"{b.url}/runs/{run_id}/events") as followed:
                follower = _Frames(followed)
                seen = len(await follower.read(6))
                a.kill()
                killed = time.monotonic()
                with anyio.fail_after(RUN_LEASE + 3):
                    frames = await follower.read()
                took = time.monotonic() - killed
    # the lease ran out at most RUN_LEASE after the kill; the follower saw it on its next read
    assert took < RUN_LEASE + 1.5, took
    assert len(frames) > seen
    _assert_whole(frames, run_id, last="error", code="worker_lost")
    info = await _run(client, b.url, run_id)
    assert info["status"] == "failed" and info["error"]["code"] == "worker_lost"
    assert frames == await _journal(client, b.url, run_id)
    await _assert_ended(client, (b,), run_id, _seq(frames[-1], run_id))

    # the dead worker's turn lock is free (a lapsed lease, or a dead pid on this host)
    with anyio.fail_after(LOCK_TTL + 5):
        response = await client.post(f"{b.url}/chat", json={"input": "once more", "session_id": "orphaned"})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == "once more"
    # the lost turn kept its user message only: its answer died with the worker
    assert await _history(client, b.url, "orphaned") == [
        ("user", TEXT),
        ("user", "once more"),
        ("assistant", "once more"),
    ]
