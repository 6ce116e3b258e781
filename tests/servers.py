"""Real server processes on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server_process(
    args: Sequence[str] = (), *, env: dict[str, str] | None = None, timeout: float = 20.0
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`orbiter-asgi serve ARGS` on a free port, once it answers; yields the
    process (to signal it) and its base URL. Stopped with SIGTERM on exit."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "orbiter_asgi",
        "serve",
        *args,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@contextlib.contextmanager
def running_server(
    args: Sequence[str] = (), *, env: dict[str, str] | None = None, timeout: float = 20.0
) -> Iterator[str]:
    """`orbiter-asgi serve ARGS` on a free port; yields its base URL."""
    with server_process(args, env=env, timeout=timeout) as (_, url):
        yield url
