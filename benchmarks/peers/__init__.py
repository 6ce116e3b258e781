"""The benchmark targets other than `orbiter_asgi` itself.

Each module exposes `app`, serving the benchmarked routes of the contract
(`POST /chat`, `GET /stream`, `GET /agents`, `WS /ws/chat`) with one `echo`
agent named `assistant`. `BENCH_ECHO_DELAY` (seconds) slows the echo down
before each word, as `Agent(model="echo?delay=...")` does.
"""

from __future__ import annotations

__all__: list[str] = []
