"""Instructions per request, counted by valgrind: `python -m benchmarks.instructions`.

Timings on a shared machine move by a third from one run to the next, so they
cannot show a change of a few percent; a count of instructions barely moves
(well under 1%). Each scenario runs in a child process under valgrind's
cachegrind (no cache simulation, only the count), twice: warmed up with
12,000 requests and then 0 more, and the same warmup then `--requests` more.
The difference over `--requests` is what one request costs, with startup and
warmup cancelled out. Requests are made as `benchmarks.inprocess` makes them:
the ASGI app called directly with hand-made `receive` and `send`, on uvloop.
What would make the count wander is held still: the hash seed, timers (none
comes due, see `_TimelessLoop`) and glibc's malloc (see `_count`).

`--baseline REF` counts `orbiter_asgi` as of commit REF too, exported to a
temporary directory, and shows the ratio: above 1, the current tree is faster.

This counts warm in-process work only: not cache misses, not a server's
parsing and writing, not time spent waiting. A change that saves instructions
but touches more memory can still be slower, so the server run stays the
measure; this is the steady check that a change does less work.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextvars
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVarTuple
from urllib.parse import urlsplit

import uvloop

if TYPE_CHECKING:
    from .scenarios import HttpScenario

__all__ = ["main"]

App = Callable[[dict[str, Any], Any, Any], Any]
_Ts = TypeVarTuple("_Ts")

# more requests than the memory journal keeps ended runs (10,000): the warm-up
# brings the app to the steady state of a busy server, evicting a run per run
_WARMUP = 12_000
_NEVER = 1e9  # seconds added to every timer: none fires within a run
_TIMEOUT = 3600.0  # seconds one run under valgrind may take
_I_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")

# The child runs from the tree under measure (this one, or a baseline's): it
# needs only that tree's `orbiter_asgi` and the app named, and it gets the
# request on its command line, so every tree is sent the same bytes. Hence
# its own `_scope` and `_one` (as `benchmarks.inprocess`'s), and no import
# from `benchmarks` at the top of this module.


def _scope(method: str, path: str, body: bytes) -> dict[str, Any]:
    url = urlsplit(path)
    headers = [(b"host", b"bench")]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": url.path,
        "raw_path": url.path.encode(),
        "root_path": "",
        "query_string": url.query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


class _TimelessLoop(uvloop.Loop):
    """uvloop on which no timer comes due while requests are counted.

    Under valgrind a request runs dozens of times slower, so a timer meant
    to fire only past a short request does fire, at moments that differ
    from run to run: the turn guard's 20 ms timer arms the turns it finds
    running (a deadline timer and a disconnect watch each), and the counts
    moved by a fifth between runs. Here every timer is still set, its cost
    counted, but falls due in 30 years, as a request of microseconds never
    meets it. `call_at` goes through `call_later`, `asyncio.timeout` and
    anyio's deadlines through `call_at`: every timer does.
    """

    def call_later(
        self,
        delay: float,
        callback: Callable[[*_Ts], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return super().call_later(delay + _NEVER, callback, *args, context=context)


async def _ignore(message: dict[str, Any]) -> None:
    pass


async def _one(
    app: App, scope: dict[str, Any], body: bytes, send: Callable[[dict[str, Any]], Any] = _ignore
) -> None:
    unread = [{"type": "http.request", "body": body, "more_body": False}]
    disconnected = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if unread:
            return unread.pop()
        await disconnected.wait()  # the turn's disconnect watch, should it be armed
        return {"type": "http.disconnect"}

    await app(dict(scope), receive, send)
    # turn the loop once, as a server's does between requests: what the request
    # left for the loop (a stream's writer callbacks) runs and is counted
    await asyncio.sleep(0)


async def _requests(app: App, scope: dict[str, Any], body: bytes, count: int) -> str | None:
    """Checks that the app answers 200, then makes `count` requests; the error if not."""
    sent: list[dict[str, Any]] = []

    async def record(message: dict[str, Any]) -> None:
        sent.append(message)

    await _one(app, scope, body, record)
    status = sent[0].get("status") if sent else None
    if status != 200:
        return f"the app answered {status}, not 200: {sent[:2]}"
    for _ in range(count):
        await _one(app, scope, body)
    return None


def _child(args: argparse.Namespace) -> int:
    tree = Path.cwd().resolve()
    module, _, attribute = args.app.partition(":")
    app = getattr(importlib.import_module(module), attribute)
    imported = Path(importlib.import_module("orbiter_asgi").__file__ or "").resolve()
    if not imported.is_relative_to(tree):
        print(f"orbiter_asgi came from {imported}, not from {tree}", file=sys.stderr)
        return 1
    body = bytes.fromhex(args.body)
    requests = _requests(app, _scope(args.method, args.path, body), body, _WARMUP + args.requests)
    error = uvloop.run(requests, loop_factory=_TimelessLoop)
    if error:
        print(error, file=sys.stderr)
        return 1
    return 0


def _count(tree: Path, app: str, method: str, path: str, body: bytes, requests: int) -> int:
    """Instructions of one child under valgrind making `_WARMUP + requests` requests."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-P",  # not this file's directory on sys.path: the tree under measure only
        str(Path(__file__).resolve()),
        "--child",
        f"--app={app}",
        f"--method={method}",
        f"--path={path}",
        f"--body={body.hex()}",
        f"--requests={requests}",
    ]
    env = {name: value for name, value in os.environ.items() if not name.startswith("BENCH_")}
    # same hashes every run; no .pyc written mid-run (the tree is compiled before)
    env.update(PYTHONPATH=str(tree), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    # glibc's malloc keeps up to 65,000 freed blocks of each size up to 1 KB for
    # reuse as they are, not 7: merged with their neighbours and split again,
    # blocks cost what the whole history of the heap says, and a few KB
    # allocated differently at startup moved chat_sse by ±14%
    env["GLIBC_TUNABLES"] = "glibc.malloc.tcache_count=65000"
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=_TIMEOUT)
    found = _I_REFS.search(done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"valgrind run failed in {tree} ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def _export(ref: str, root: Path, directory: Path) -> None:
    """The tree of commit `ref` into `directory`, as `python -m benchmarks --baseline` does."""
    archive = subprocess.run(["git", "archive", ref], cwd=root, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)


def _table(trees: dict[str, Path], app: str, scenarios: Sequence[HttpScenario], requests: int) -> None:
    """Counts every scenario in every tree, the runs in parallel, and prints a row per scenario."""
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        runs = {
            (s.name, name, n): pool.submit(_count, tree, app, s.method, s.path, s.body, n)
            for s in scenarios
            for name, tree in trees.items()
            for n in (0, requests)
        }
        names = list(trees)
        columns = [f"{n} instructions/request" for n in names]
        if len(names) > 1:  # speed, as the server table's ratios: above 1 the current tree does less
            columns.append("ratio (baseline / current)")
        print(f"| scenario | {' | '.join(columns)} |")
        print("|---|" + "---:|" * len(columns), flush=True)
        for s in scenarios:
            counts = {n: runs[s.name, n, requests].result() - runs[s.name, n, 0].result() for n in names}
            cells = [f"{counts[n] / requests:,.0f}" for n in names]
            cells += [f"{counts[n] / counts[names[0]]:.2f}x" for n in names[1:]]
            print(f"| {s.name} | {' | '.join(cells)} |", flush=True)


def _parent(args: argparse.Namespace) -> int:
    from .scenarios import HTTP_SCENARIOS
    from .servers import ROOT, TARGETS

    if not shutil.which("valgrind"):
        print("valgrind is missing; it counts the instructions: apt-get install valgrind", file=sys.stderr)
        return 2
    http = {s.name: s for s in HTTP_SCENARIOS if not s.session}
    if unknown := [name for name in args.scenarios.split(",") if name not in http]:
        print(f"unknown scenarios {unknown}; known: {', '.join(http)}", file=sys.stderr)
        return 2
    target = TARGETS[0]
    with tempfile.TemporaryDirectory() as directory:
        trees = {target.name: ROOT}
        if args.baseline:
            _export(args.baseline, ROOT, Path(directory))
            trees[f"{target.name}@{args.baseline}"] = Path(directory)
        for tree in trees.values():  # compiled once now, not by each run while it is counted
            compile_all = [sys.executable, "-m", "compileall", "-q", "orbiter_asgi", "benchmarks"]
            subprocess.run(compile_all, cwd=tree, check=True)
        _table(trees, target.app, [http[name] for name in args.scenarios.split(",")], args.requests)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--scenarios", default="chat_json,chat_sse", help="non-session HTTP scenarios")
    parser.add_argument("--baseline", metavar="REF", help="also count orbiter_asgi as of this git commit")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted, after the warmup")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--app", "--method", "--path", "--body"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 1 and not args.child:
        parser.error("--requests must be 1 or more")
    return _child(args) if args.child else _parent(args)


if __name__ == "__main__":
    sys.exit(main())
