"""HTTP load with wrk: a generated Lua script per scenario, results as JSON.

wrk reads every response whole (chunked SSE bodies included), so requests
per second of an SSE scenario are complete streams per second. The Lua
`done` hook prints one machine-readable line instead of wrk's report.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .scenarios import HttpScenario, long_sessions
from .servers import client_cpus, pinned

__all__ = ["WrkResult", "run_wrk"]

_DONE_HOOK = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def _lua(scenario: HttpScenario, session_prefix: str) -> str:
    lines = [f'wrk.method = "{scenario.method}"']
    if scenario.body:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        lines.append(f"wrk.body = [==[{scenario.body.decode()}]==]")
    if scenario.preload:
        # round-robin over preloaded sessions, at least one per connection
        lines.append(f"local template = [==[{scenario.body.decode()}]==]")
        lines.append(
            "local counter = 0\n"
            "request = function()\n"
            f'  local sid = "{session_prefix}" .. (counter % {long_sessions(scenario)})\n'
            "  counter = counter + 1\n"
            '  local body = string.gsub(template, "SESSION", sid)\n'
            "  return wrk.format(nil, nil, nil, body)\n"
            "end"
        )
    elif scenario.session:
        # every 4 requests share a session: a short conversation, not an ever-growing one
        lines.append(f"local template = [==[{scenario.body.decode()}]==]")
        lines.append(
            "local counter = 0\n"
            "request = function()\n"
            f'  local sid = "{session_prefix}" .. math.floor(counter / 4)\n'
            "  counter = counter + 1\n"
            '  local body = string.gsub(template, "SESSION", sid)\n'
            "  return wrk.format(nil, nil, nil, body)\n"
            "end"
        )
    lines.append(_DONE_HOOK)
    return "\n".join(lines)


@dataclass
class WrkResult:
    rate: float  # completed requests (whole responses) per second
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def run_wrk(
    base_url: str,
    scenario: HttpScenario,
    *,
    duration: float,
    session_prefix: str = "s",
    connections: int | None = None,
) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_lua(scenario, session_prefix))
    try:
        command = [
            "wrk", "-t1", f"-c{connections or scenario.connections}", f"-d{max(1, round(duration))}s",
            "--timeout", "10s", "-s", script.name, base_url + scenario.path,
        ]  # fmt: skip
        completed = subprocess.run(
            pinned(command, client_cpus()),
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    for line in completed.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[len("WRKJSON ") :])
            errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
            return WrkResult(
                rate=data["requests"] / (data["duration_us"] / 1e6),
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                errors=errors,
                requests=data["requests"],
            )
    raise RuntimeError(f"wrk gave no result: {completed.stdout}\n{completed.stderr}")
