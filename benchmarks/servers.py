"""Targets, and starting them for real: one server process each on 127.0.0.1.

Servers run pinned to one core and load generators to the other (where
`taskset` exists and there are two cores or more), so the two do not fight
over the same CPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "ROOT",
    "TARGETS",
    "Server",
    "Target",
    "client_cpus",
    "free_port",
    "pinned",
    "server_cpus",
    "start_server",
]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    name: str
    app: str  # "module:attribute"
    root: Path = ROOT  # the tree it is imported from: another commit's for a baseline
    env: tuple[tuple[str, str], ...] = ()  # set for its server


TARGETS = [
    Target("orbiter_asgi", "benchmarks.peers.orbiter_app:app"),
    Target("bare_asgi", "benchmarks.peers.bare_asgi:app"),
    Target("fastapi", "benchmarks.peers.fastapi_app:app"),
    Target("litestar", "benchmarks.peers.litestar_app:app"),
    # orbiter_asgi with its run journal switched off: what journaling costs
    Target("orbiter_asgi+no_journal", "benchmarks.peers.orbiter_app:app", env=(("BENCH_JOURNAL", "off"),)),
    # orbiter_asgi without Prometheus metrics: what /metrics costs the request path
    Target("orbiter_asgi+no_metrics", "benchmarks.peers.orbiter_app:app", env=(("BENCH_METRICS", "off"),)),
]


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def server_cpus() -> str | None:
    cpus = _cpus()
    return str(cpus[0]) if shutil.which("taskset") and len(cpus) >= 2 else None


def client_cpus() -> str | None:
    cpus = _cpus()
    return ",".join(map(str, cpus[1:])) if shutil.which("taskset") and len(cpus) >= 2 else None


def pinned(command: Sequence[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else list(command)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(server: str, app: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", app,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning", "--backlog", "4096",
        ]  # fmt: skip
    if server == "hypercorn":
        return [
            sys.executable, "-m", "hypercorn", app,
            "--bind", f"127.0.0.1:{port}", "--workers", "1",
            "--worker-class", "uvloop", "--log-level", "warning", "--backlog", "4096",
        ]  # fmt: skip
    raise ValueError(f"unknown server {server!r}")


@dataclass
class Server:
    target: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid  # taskset execs the server: same pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def start_server(
    target: Target, server: str, log_dir: Path, env: dict[str, str] | None = None, label: str = ""
) -> Iterator[Server]:
    """A running server for `target`; stopped on exit. Waits until it answers."""
    port = free_port()
    log = log_dir / f"{target.name}{label}-{server}.log"
    process_env = {**os.environ, **dict(target.env), **(env or {}), "PYTHONPATH": str(target.root)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            pinned(_command(server, target.app, port), server_cpus()),
            cwd=target.root,
            env=process_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Server(target.name, port, process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{target.name} exited at startup; see {log}")
            try:
                if httpx.get(f"{running.base_url}/agents", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name} did not answer within 30 s; see {log}")
            time.sleep(0.1)
        yield running
    finally:
        running.stop()
