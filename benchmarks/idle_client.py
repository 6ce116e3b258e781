"""Hold N SSE streams open at once; report how many opened and completed.

`python -m benchmarks.idle_client --port P --n 10000 --path '/stream?...'`
opens the connections (a bounded number of connects in flight), sends one
GET on each, counts a stream as open when its response headers arrive and
as completed when `data: [DONE]` arrives. It prints `OPEN <n> <seconds>`
once every stream is open (or the open phase timed out), then one JSON line.
Everything is bounded by `--timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time

__all__ = ["main"]

_DONE = b"data: [DONE]"


class _Stream(asyncio.Protocol):
    def __init__(self, request: bytes, stats: _Stats) -> None:
        self.request = request
        self.stats = stats
        self.head = bytearray()
        self.tail = b""
        self.opened = False
        self.completed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.opened:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200"):
                self.stats.failed += 1
                self.completed = True
                assert self.transport is not None
                self.transport.close()
                return
            self.opened = True
            self.stats.opened += 1
            data = bytes(self.head[end + 4 :])
            self.head = bytearray()
        window = self.tail + data
        if _DONE in window:
            self.completed = True
            self.stats.completed += 1
            assert self.transport is not None
            self.transport.close()
            return
        self.tail = window[-len(_DONE) :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.completed:
            self.completed = True
            self.stats.failed += 1
        self.stats.closed += 1
        if self.stats.closed >= self.stats.n:
            self.stats.all_closed.set()


class _Stats:
    def __init__(self, n: int) -> None:
        self.n = n
        self.opened = 0
        self.completed = 0
        self.failed = 0
        self.closed = 0
        self.connect_errors = 0
        self.all_closed = asyncio.Event()


async def _run(port: int, n: int, path: str, concurrency: int, timeout: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    stats = _Stats(n)
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()
    deadline = started + timeout

    async def connect() -> None:
        async with gate:
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: _Stream(request, stats), "127.0.0.1", port),
                    timeout=30,
                )
            except (TimeoutError, OSError):
                stats.connect_errors += 1
                stats.closed += 1
                if stats.closed >= n:
                    stats.all_closed.set()

    connecting = [asyncio.ensure_future(connect()) for _ in range(n)]
    await asyncio.wait(connecting, timeout=max(1.0, deadline - time.perf_counter()))
    while stats.opened + stats.failed + stats.connect_errors < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    open_time = time.perf_counter() - started
    print(f"OPEN {stats.opened} {open_time:.3f}", flush=True)
    with contextlib.suppress(TimeoutError):
        remaining = max(1.0, deadline - time.perf_counter())
        await asyncio.wait_for(stats.all_closed.wait(), timeout=remaining)
    for task in connecting:
        task.cancel()
    return {
        "n": n,
        "opened": stats.opened,
        "completed": stats.completed,
        "failed": stats.failed + stats.connect_errors,
        "open_seconds": open_time,
        "total_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle_client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--concurrency", type=int, default=256, help="connects in flight")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.n + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        if min(want, hard) < want:
            print(f"warning: only {hard} file descriptors allowed", file=sys.stderr)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(_run(args.port, args.n, args.path, args.concurrency, args.timeout))))


if __name__ == "__main__":
    main()
