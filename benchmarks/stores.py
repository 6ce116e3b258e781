"""Session stores: round trips per chat turn, and /chat throughput with and without a session.

    python benchmarks/stores.py [--requests 2000] [--concurrency 16] [--redis URL]

Starts one uvicorn process per configuration, serving the offline `echo`
agent: /chat without a session (the baseline), then /chat with a session on
memory, SQLite and Redis (a throwaway `redis-server` on a free port unless
`--redis` names one). Each client task keeps its own session, so the numbers
measure the store, not turn-lock contention. Round trips are counted in
process: store calls that reach the backend (a Redis request/reply, or a
SQLite transaction on a worker thread) during one chat turn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from orbiter_asgi import Agent, create_app
from orbiter_asgi.stores import open_store

HERE = Path(__file__).resolve().parent


def factory() -> Any:
    return create_app(agents=[Agent("assistant")], store=os.environ["ORBITER_STORE"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} never came up")


async def round_trips(store_url: str) -> int:
    """Backend round trips of one chat turn on an existing session."""
    store = open_store(store_url)
    counter = {"n": 0}
    # each RedisStore._call is one request/reply, each SQLiteStore._run one transaction
    name = {"RedisStore": "_call", "SQLiteStore": "_run"}.get(type(store).__name__)
    if name is not None:
        original = getattr(store, name)

        async def counted(*args: Any) -> Any:
            counter["n"] += 1
            return await original(*args)

        setattr(store, name, counted)
    app = create_app(agents=[Agent("assistant")], store=store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
        await client.post("/chat", json={"input": "warm up", "session_id": "rt"})
        counter["n"] = 0
        response = await client.post("/chat", json={"input": "count me", "session_id": "rt"})
        assert response.status_code == 200, response.text
    await store.aclose()
    return counter["n"]


async def load(base: str, *, requests: int, concurrency: int, session: bool) -> float:
    per_task = requests // concurrency

    async def worker(n: int, client: httpx.AsyncClient) -> None:
        body: dict[str, Any] = {"input": "hello there, store"}
        if session:
            body["session_id"] = f"bench-{uuid.uuid4().hex[:8]}-{n}"
        for _ in range(per_task):
            response = await client.post(f"{base}/chat", json=body)
            assert response.status_code == 200, response.text

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(n, client) for n in range(concurrency)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(n, client) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    return per_task * concurrency / elapsed


def serve_and_load(store_url: str, *, session: bool, requests: int, concurrency: int) -> float:
    port = _free_port()
    env = {**os.environ, "ORBITER_STORE": store_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--factory", "stores:factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/agents", process)
        return asyncio.run(load(base, requests=requests, concurrency=concurrency, session=session))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--redis", help="redis:// URL to use instead of a throwaway server")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="orbiter-bench-")
    redis_process = None
    redis_url = args.redis
    if redis_url is None and shutil.which("redis-server"):
        port = _free_port()
        redis_process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.3)
    stores = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{Path(workdir) / 'bench.db'}",
    }
    if redis_url:
        stores["redis"] = f"{redis_url}?prefix=bench:{uuid.uuid4().hex[:8]}:"
    try:
        print("round trips per chat turn (lock, history, user append, answer append, unlock):")
        for name, url in stores.items():
            rt_url = url if name != "sqlite" else url.replace("bench.db", "rt.db")
            print(f"  {name:8} {asyncio.run(round_trips(rt_url))}")
        print(f"\n/chat throughput, {args.requests} requests, {args.concurrency} concurrent:")
        baseline = serve_and_load(
            "memory://", session=False, requests=args.requests, concurrency=args.concurrency
        )
        print(f"  {'no session':22} {baseline:8.0f} req/s  100%")
        for name, url in stores.items():
            rate = serve_and_load(
                url, session=True, requests=args.requests, concurrency=args.concurrency
            )
            print(f"  {'session, ' + name:22} {rate:8.0f} req/s  {100 * rate / baseline:4.0f}%")
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
