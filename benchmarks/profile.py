"""Profile one target under one scenario's load with py-spy.

`python -m benchmarks.profile --scenario chat_sse [--target orbiter_asgi]`
starts the target under `py-spy record` (pinned like the benchmark), loads it
with the scenario's wrk script, and prints the functions with the most
samples, by self time and inclusive. Needs `pip install py-spy` and ptrace
rights (root, or `kernel.yama.ptrace_scope=0`).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .http_load import run_wrk
from .scenarios import HTTP_SCENARIOS
from .servers import ROOT, TARGETS, free_port, pinned, server_cpus

__all__ = ["main"]


def summarize(raw: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        for name in set(frames):
            inclusive[name] += samples
    out = [f"{total} samples", "", "self:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top * 2)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("--scenario", default="chat_sse", choices=[s.name for s in HTTP_SCENARIOS])
    parser.add_argument("--target", default="orbiter_asgi", choices=[t.name for t in TARGETS])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    scenario = next(s for s in HTTP_SCENARIOS if s.name == args.scenario)
    target = next(t for t in TARGETS if t.name == args.target)
    port = free_port()
    raw = Path(tempfile.mkstemp(suffix=".txt")[1])
    command = [
        py_spy, "record", "--format", "raw", "-r", "250", "-d", str(args.duration + 4),
        "-o", str(raw), "--", sys.executable, "-m", "uvicorn", target.app,
        "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(pinned(command, server_cpus()), cwd=ROOT, env=env)
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/agents", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        result = run_wrk(f"http://127.0.0.1:{port}", scenario, duration=args.duration)
        print(f"{scenario.name}: {result.rate:.0f}/s, p99 {result.p99_ms:.1f} ms, errors {result.errors}")
        server.wait(timeout=args.duration + 30)
        print(summarize(raw, args.top).replace(str(ROOT) + "/", ""))
    finally:
        if server.poll() is None:
            server.kill()
        raw.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
