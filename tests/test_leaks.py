"""Slow and vanishing clients against uvicorn serving in this process.

uvicorn runs in the test's event loop, on a real socket, so the test sees
the server's tasks (`asyncio.all_tasks`) and this process's descriptors
(`/proc/self/fd`) while clients read slowly, stall or vanish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect

from orbiter_asgi import create_app
from tests.servers import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux only")]


class Dribble:
    """Twenty words, a millisecond apart; counts how runs end."""

    name = "dribble"

    def __init__(self) -> None:
        self.ended: dict[str, int] = {}

    async def stream(self, input: str, *, messages: Any) -> AsyncIterator[str]:
        how = "completed"
        try:
            for n in range(20):
                yield f"w{n} "
                await anyio.sleep(0.001)
        except BaseException as exc:
            how = type(exc).__name__
            raise
        finally:
            self.ended[how] = self.ended.get(how, 0) + 1


class Firehose:
    """1 KiB chunks as fast as they are taken."""

    name = "firehose"
    chunk = "x" * 1023 + " "

    def __init__(self) -> None:
        self.produced = 0
        self.ended_by: str | None = None

    async def stream(self, input: str, *, messages: Any) -> AsyncIterator[str]:
        try:
            while True:
                self.produced += 1
                yield self.chunk
                await anyio.sleep(0)
        except BaseException as exc:
            self.ended_by = type(exc).__name__
            raise


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with anyio.fail_after(10):
            await task


def _counts() -> tuple[int, int]:
    return len(asyncio.all_tasks()), len(os.listdir("/proc/self/fd"))


async def _settled() -> tuple[int, int]:
    """The counts once they stopped falling for 10 looks in a row (about 10 s at most)."""
    counts, still = _counts(), 0
    for _ in range(200):
        await asyncio.sleep(0.02)
        now = _counts()
        still = still + 1 if now >= counts else 0
        counts = min(counts, now)
        if still == 10:
            break
    return counts


async def _turn(url: str, client: httpx.AsyncClient, rng: random.Random, n: int) -> str:
    """One turn, in one of six ways; three of them vanish mid-run."""
    kind = rng.choice(["json", "sse", "sse_cut", "post_sse_cut", "ws", "ws_cut"])
    session = f"s{n % 50}"
    params = {"input": "go", "session_id": session}
    if kind.startswith("ws"):
        async with connect(url.replace("http", "ws", 1) + "/ws/chat") as ws:
            await ws.send(json.dumps({"input": "go", "session_id": session}))
            cut = rng.randint(1, 15) if kind == "ws_cut" else 10_000
            for _ in range(min(cut, 30)):
                if '"done"' in str(await ws.recv()):
                    break
        return kind
    if kind == "json":
        response = await client.post("/chat", json=params)
        assert response.status_code == 200
        return kind
    if kind == "post_sse_cut":
        request = client.build_request("POST", "/chat", json={**params, "stream": True})
    else:
        request = client.build_request("GET", "/stream", params=params)
    response = await client.send(request, stream=True)
    try:  # leaving a response unread closes its connection: the client vanishes
        cut = rng.randint(0, 15) if kind.endswith("_cut") else 10_000
        lines = 0
        async for line in response.aiter_lines():
            lines += line.startswith("data: ")
            if lines >= cut:
                break
    finally:
        await response.aclose()
    return kind


async def test_no_task_or_descriptor_leaks_after_1000_turns_with_random_disconnects() -> None:
    agent = Dribble()
    app = create_app(agents=[agent], drain_on_signal=False, disconnect_grace=0)
    rng = random.Random(20240601)
    turns = 1000
    async with serving(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for n in range(12):  # warm up: first-use allocations are not leaks
                await _turn(url, client, random.Random(n), n)
        baseline = await _settled()
        kinds: dict[str, int] = {}
        queue = list(range(turns))
        peak = baseline

        async def worker() -> None:
            nonlocal peak
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                while queue:
                    kind = await _turn(url, client, rng, queue.pop())
                    kinds[kind] = kinds.get(kind, 0) + 1
                    peak = max(peak, _counts())

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                for _ in range(16):
                    group.start_soon(worker)
        after = await _settled()
        active = app.context.guard.active
        histories = [await app.store.messages(f"s{n}") for n in range(50)]
    print(
        f"\nleaks: {turns} turns {dict(sorted(kinds.items()))}; runs ended {agent.ended}; "
        f"tasks baseline/peak/after {baseline[0]}/{peak[0]}/{after[0]}; "
        f"fds baseline/peak/after {baseline[1]}/{peak[1]}/{after[1]}"
    )
    assert sum(kinds.values()) == turns
    assert after[0] <= baseline[0] and after[1] <= baseline[1]
    assert active == 0
    assert agent.ended.get("CancelledError", 0) + agent.ended.get("GeneratorExit", 0) > 50
    for history in histories:  # every cut turn still stored its question and partial answer
        roles = [m.role for m in history]
        assert roles == ["user", "assistant"] * (len(roles) // 2)


async def _stalled(counter: Any) -> int:
    """The agent's count once it stopped growing for 20 looks in a row."""
    last, still = -1, 0
    for _ in range(2000):
        await asyncio.sleep(0.01)
        if counter.produced == last:
            still += 1
            if still == 20:
                break
        else:
            last, still = counter.produced, 0
    return counter.produced


async def test_a_stalled_sse_reader_keeps_server_memory_bounded() -> None:
    firehose = Firehose()
    # the run's journal holds what it produced, up to its bound: 1 MiB here
    app = create_app(
        agents=[firehose],
        drain_on_signal=False,
        run_timeout=None,
        disconnect_grace=0,
        max_run_journal_bytes=1024 * 1024,
    )
    async with serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, int(port)))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await loop.sock_sendall(sock, b"GET /stream?input=x HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await loop.sock_recv(sock, 1024)
            assert head.startswith(b"HTTP/1.1 200")
            stalled_at = await _stalled(firehose)  # the reader reads nothing more
            held = tracemalloc.get_traced_memory()[0] - before
            # then it reads slowly: production follows consumption, never runs ahead unbounded
            consumed = len(head)
            lead = []
            for _ in range(40):
                consumed += len(await loop.sock_recv(sock, 16384))
                await asyncio.sleep(0.005)
                lead.append(firehose.produced * 1024 - consumed)
        finally:
            tracemalloc.stop()
            sock.close()
        for _ in range(500):
            if firehose.ended_by is not None:
                break
            await asyncio.sleep(0.01)
    print(
        f"\nslow reader: agent stalled after {stalled_at} KiB with nothing read; "
        f"Python heap held {held / 1024:.0f} KiB; slow-read lead max {max(lead) / 1024:.0f} KiB; "
        f"run ended by {firehose.ended_by}"
    )
    # the kernel's socket buffers hold a few MiB at most; everything else is a fixed-size buffer
    assert stalled_at < 16 * 1024
    assert held < 3 * 1024 * 1024  # the journal's 1 MiB, and the rest as before
    assert max(lead) < 16 * 1024 * 1024
    assert firehose.ended_by in ("CancelledError", "GeneratorExit")
