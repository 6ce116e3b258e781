"""Per-request cost of each target without a server: `python -m benchmarks.inprocess`.

Calls each target's ASGI app directly with hand-made `receive` and `send`
(both free), on uvloop, for the non-session HTTP scenarios and `ws` (turns
of 100 words over one WebSocket, the next frame sent when a turn is done),
and prints the best-of-rounds microseconds per request or turn and the
ratio to `orbiter_asgi`.
Targets are interleaved per round, as in the server benchmark. This isolates
the app's own work from the server's and is steadier than a server run on a
shared machine, so it is the quick check while optimizing; the server run
stays the measure (under a server each step costs more, the peers' too).

`--cold` evicts the CPU caches before every request by walking a large list,
to see what a request costs when its code and data are not hot.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec
import uvloop

from .scenarios import AGENT, HTTP_SCENARIOS, HttpScenario, words
from .servers import TARGETS

__all__ = ["main"]

encode = msgspec.json.encode

App = Callable[[dict[str, Any], Any, Any], Any]

_EVICTION = list(range(1 << 18))  # ~2 MiB of list and ints: more than a core's caches


def _evict_caches() -> None:
    total = 0
    for value in _EVICTION[::16]:
        total += value


def _scope(scenario: HttpScenario) -> dict[str, Any]:
    url = urlsplit(scenario.path)
    headers = [(b"host", b"bench")]
    if scenario.body:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(scenario.body))]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": scenario.method,
        "scheme": "http",
        "path": url.path,
        "raw_path": url.path.encode(),
        "root_path": "",
        "query_string": url.query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def _one(app: App, scope: dict[str, Any], body: bytes) -> None:
    unread = [{"type": "http.request", "body": body, "more_body": False}]
    disconnected = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if unread:
            return unread.pop()
        await disconnected.wait()  # the turn's disconnect watch, should it be armed
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        # as uvicorn does: once the response is complete, `receive` answers a
        # disconnect (Litestar's streams wait for one before they return)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            disconnected.set()

    await app(dict(scope), receive, send)
    # turn the loop once, as a server's does between requests: what the request
    # left for the loop (a stream's writer callbacks) runs and is counted
    await asyncio.sleep(0)


async def _seconds_per_request(app: App, scenario: HttpScenario, count: int, cold: bool) -> float:
    scope = _scope(scenario)
    total = 0.0
    for _ in range(count):
        if cold:
            _evict_caches()
        started = time.perf_counter()
        await _one(app, scope, scenario.body)
        total += time.perf_counter() - started
    return total / count


_WS_SCOPE = {
    "type": "websocket",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "scheme": "ws",
    "path": "/ws/chat",
    "raw_path": b"/ws/chat",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"bench")],
    "subprotocols": [],
    "client": ("127.0.0.1", 1),
    "server": ("127.0.0.1", 80),
}


async def _seconds_per_ws_turn(app: App, turns: int, cold: bool) -> float:
    """One connection, `turns` turns of 100 words, each frame sent once the last turn is done."""
    frame = {"type": "websocket.receive", "text": encode({"agent_name": AGENT, "input": words(100)}).decode()}
    inbox: list[dict[str, Any]] = [{"type": "websocket.connect"}]
    turn_done = asyncio.Event()
    total = 0.0
    started = 0.0

    async def receive() -> dict[str, Any]:
        nonlocal turns
        if inbox:
            return inbox.pop()
        if turns == 0:
            return {"type": "websocket.disconnect", "code": 1000}
        if started:
            await turn_done.wait()
        turn_done.clear()
        turns -= 1
        return frame

    async def send(message: dict[str, Any]) -> None:
        nonlocal total, started
        if message["type"] == "websocket.accept" or '"done"' in message.get("text", ""):
            if started:
                total += time.perf_counter() - started
            if cold:
                _evict_caches()
            started = time.perf_counter()
            turn_done.set()

    count = turns
    await app(dict(_WS_SCOPE), receive, send)
    return total / count


async def _best(apps: dict[str, App], measure: Callable[[App], Any], rounds: int) -> dict[str, float]:
    best = {name: float("inf") for name in apps}
    for app in apps.values():  # warm up: imports, caches, the interpreter's specializations
        await measure(app)
    for _ in range(rounds):  # interleaved, as in the server benchmark
        for name, app in apps.items():
            best[name] = min(best[name], await measure(app))
    return best


async def _measure(apps: dict[str, App], scenarios: Sequence[str], rounds: int, cold: bool) -> None:
    names = list(apps)
    ratios = [f"{n} ratio to {names[0]}" for n in names[1:]]  # as the server table's: speed, not time
    print(f"| scenario | {' | '.join(f'{n} µs' for n in names)} | {' | '.join(ratios)} |")
    print("|---|" + "---:|" * (2 * len(names) - 1))
    http = {s.name: s for s in HTTP_SCENARIOS if not s.session}
    for name in scenarios:
        if name == "ws":
            measure = functools.partial(_seconds_per_ws_turn, turns=200, cold=cold)
        else:
            count = 100 if name == "stream_get" else 1000
            measure = functools.partial(_seconds_per_request, scenario=http[name], count=count, cold=cold)
        best = await _best(apps, measure, rounds)
        first = best[names[0]]
        cells = [f"{best[n] * 1e6:.1f}" for n in names] + [f"{first / best[n]:.2f}x" for n in names[1:]]
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess")
    parser.add_argument("--targets", default="orbiter_asgi,bare_asgi", help="the first is the base")
    parser.add_argument("--scenarios", default="chat_json,chat_sse,stream_get,agents,ws")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cold", action="store_true", help="evict the CPU caches before every request")
    args = parser.parse_args(argv)
    by_name = {t.name: t for t in TARGETS}
    apps: dict[str, App] = {}
    for name in args.targets.split(","):
        module, _, attribute = by_name[name].app.partition(":")
        apps[name] = getattr(importlib.import_module(module), attribute)
    known = [s.name for s in HTTP_SCENARIOS if not s.session] + ["ws"]
    scenarios = [name for name in known if name in args.scenarios.split(",")]
    uvloop.run(_measure(apps, scenarios, args.rounds, args.cold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
