"""Throwaway store services for the store scenarios: a Redis and a Postgres.

Each is a context manager that starts the service on 127.0.0.1 on a free
port, with its data in a temporary directory, waits until it answers, yields
a `Service` (its store URL and pid, for CPU accounting) and stops it and
removes the directory on exit. Both run pinned to the load generator's CPUs:
the server's core stays the server's alone.

Postgres runs from `initdb`/`pg_ctl` of the newest `/usr/lib/postgresql/*/bin`
(or `PATH`); as root, as the `postgres` user (`runuser -u postgres --`),
since the postmaster refuses to run as root. `synchronous_commit=off`: a
commit does not wait for its WAL fsync, close to the SQLite store's
`synchronous=NORMAL`, so the scenario measures the server and not the disk.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .servers import client_cpus, free_port, pinned

__all__ = ["Service", "ServiceUnavailable", "postgres_server", "redis_server"]


class ServiceUnavailable(RuntimeError):
    """The service's binaries are not installed."""


@dataclass
class Service:
    name: str
    url: str
    pid: int  # its main process: CPU accounting counts it and its children


def _wait_port(port: int, deadline: float, what: str) -> None:
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on port {port}")
        time.sleep(0.05)


@contextlib.contextmanager
def redis_server() -> Iterator[Service]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="orbiter-bench-redis-")
    command = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", workdir, "--protected-mode", "no",
    ]  # fmt: skip
    process = subprocess.Popen(pinned(command, client_cpus()), stdout=subprocess.DEVNULL)
    try:
        _wait_port(port, time.monotonic() + 10, "redis-server")
        yield Service("redis", f"redis://127.0.0.1:{port}/0", process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise ServiceUnavailable("Postgres is not installed (apt-get install postgresql)")
    return Path(initdb).resolve().parent


@contextlib.contextmanager
def postgres_server(*, shared_buffers: str = "128MB") -> Iterator[Service]:
    """A fresh cluster; its URL names the `postgres` database as user `postgres`."""
    bin_dir = _postgres_bin()
    as_root = os.geteuid() == 0
    user = ["runuser", "-u", "postgres", "--"] if as_root else []
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="orbiter-bench-pg-"))
    data = workdir / "data"
    if as_root:
        shutil.chown(workdir, "postgres", "postgres")
    logfile = workdir / "postgres.log"
    started = False
    try:
        subprocess.run(
            [*user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8", "--locale", "C"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
        )  # fmt: skip
        options = (
            f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c synchronous_commit=off "
            f"-c shared_buffers={shared_buffers} -c max_connections=200"
        )
        command = [*user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-o", options,
                   "-w", "-t", "60", "start"]  # fmt: skip
        subprocess.run(pinned(command, client_cpus()), check=True, stdout=subprocess.DEVNULL, timeout=90)
        started = True
        pid = int((data / "postmaster.pid").read_text().split()[0])
        _wait_port(port, time.monotonic() + 30, "postgres")
        yield Service("postgres", f"postgresql://postgres@127.0.0.1:{port}/postgres", pid)
    finally:
        if started:
            subprocess.run(
                [*user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
            )  # fmt: skip
        shutil.rmtree(workdir, ignore_errors=True)
