"""`python -m benchmarks`: start every target, check it, measure, write the table.

Order of work: install what is missing (the `bench` extra, `wrk`, the store
services), start one server per target, and one `orbiter_asgi` server per
store or history-limit variant the chosen scenarios need (with a throwaway
Redis or Postgres, `services.py`), check each server's answers and compare
them, then per scenario run every target once per round (targets
interleaved, so drift in the machine hits all of them alike), reading the
server's CPU time around each measurement, then the idle-streams test with a
slowed-down echo agent, one fresh server per target and N. The markdown
table goes to stdout and to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import fnmatch
import importlib
import importlib.util
import json
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlencode

from .report import IdleResult, Measurement, render
from .scenarios import (
    AGENT,
    HTTP_SCENARIOS,
    WS_SCENARIOS,
    HttpScenario,
    WsScenario,
    long_sessions,
    words,
)
from .servers import ROOT, TARGETS, Server, Target, client_cpus, pinned, server_cpus, start_server

__all__ = ["main"]

_BENCH_MODULES = (
    "uvicorn", "uvloop", "httptools", "hypercorn", "fastapi", "pydantic", "litestar", "websockets",
    "psutil", "redis", "psycopg", "psycopg_pool",
)  # fmt: skip


def ensure_dependencies(stores: Collection[str] = ()) -> None:
    """Install the `bench` extra and `wrk` when they are missing, and the services of `stores`."""
    missing = [m for m in _BENCH_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        print(f"installing the bench extra (missing: {', '.join(missing)})", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[bench]"], check=True
        )
        importlib.invalidate_caches()
    packages = [] if shutil.which("wrk") else ["wrk"]
    if "redis" in stores and shutil.which("redis-server") is None:
        packages.append("redis-server")
    if "postgres" in stores and not (Path("/usr/lib/postgresql").is_dir() or shutil.which("initdb")):
        packages.append("postgresql")
    if packages:
        print(f"installing {', '.join(packages)} with apt-get", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ["orbiter-asgi", "starlette", "msgspec", "anyio", "uvicorn", "uvloop", "httptools",
             "hypercorn", "fastapi", "pydantic", "litestar", "websockets", "redis", "psycopg"]  # fmt: skip
    parts = []
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{name} {version(name)}")
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    parts.append((wrk.stdout or wrk.stderr).split("\n")[0].split(" [")[0])
    return ", ".join(parts)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import psutil

    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{cpu}, {psutil.cpu_count()} cores, {memory:.0f} GiB; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; server on CPU "
        f"{server_cpus() or 'any'}, load generator on CPU {client_cpus() or 'any'}"
    )


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds so far of these processes and their live children."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            family = [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
        for member in family:
            with contextlib.suppress(psutil.Error):
                times = member.cpu_times()
                total += times.user + times.system
    return total


class _CpuMeter:
    """CPU seconds of the server, and of the store service, between `start` and `stop`."""

    def __init__(self, server: Server, services: list[int]) -> None:
        self.pids = [server.pid]
        self.services = services
        self.server_s = self.store_s = 0.0

    def start(self) -> None:
        self.server_s = -_cpu_seconds(self.pids)
        self.store_s = -_cpu_seconds(self.services)

    def stop(self) -> None:
        self.server_s += _cpu_seconds(self.pids)
        self.store_s += _cpu_seconds(self.services)


def _settle(pids: list[int], *, timeout: float = 15.0) -> None:
    """Wait (at most `timeout`) until these processes are idle: slow turns still running when
    wrk stopped must not bill their CPU to the next measurement."""
    deadline = time.monotonic() + timeout
    used = _cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = _cpu_seconds(pids)
        if now - used < 0.025:  # under 10% of a core
            return
        used = now


def _ws_round(server: Server, scenario: WsScenario, duration: float, meter: _CpuMeter) -> dict[str, float]:
    command = [
        sys.executable, "-m", "benchmarks.ws_load", "--port", str(server.port),
        "--connections", str(scenario.connections), "--words", str(scenario.words),
        "--duration", str(duration),
    ]  # fmt: skip
    client = subprocess.Popen(
        pinned(command, client_cpus()), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(duration + 60, client.kill)  # bounded even if the client hangs
    watchdog.start()
    try:
        assert client.stdout is not None
        lines: list[str] = []
        for line in client.stdout:  # the markers bound the counted turns
            lines.append(line)
            if line.startswith("COUNTING"):
                meter.start()
            elif line.startswith("STOPPED"):
                meter.stop()
        client.wait(timeout=10)
    finally:
        watchdog.cancel()
        if client.poll() is None:
            client.kill()
            client.wait(10)
    if client.returncode != 0:
        raise RuntimeError(f"ws_load failed: {client.stderr.read() if client.stderr else ''}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def _idle(
    target: Target, server_kind: str, n: int, args: argparse.Namespace, log_dir: Path
) -> IdleResult:
    import psutil

    env = {"BENCH_ECHO_DELAY": str(args.idle_delay)}
    path = "/stream?" + urlencode({"agent_name": AGENT, "input": words(args.idle_words)})
    with start_server(target, server_kind, log_dir, env, label=f"-idle{n}") as server:
        process = psutil.Process(server.pid)
        time.sleep(0.5)
        baseline = process.memory_info().rss
        peak = baseline
        timeout = 60 + n / 200 + args.idle_words * args.idle_delay
        client = subprocess.Popen(
            pinned(
                [sys.executable, "-m", "benchmarks.idle_client", "--port", str(server.port),
                 "--n", str(n), "--path", path, "--timeout", str(timeout)],
                client_cpus(),
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + timeout + 30
            while client.poll() is None and time.monotonic() < deadline:
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.1)
            if client.poll() is None:
                client.kill()
            out = client.communicate(timeout=30)[0]
        finally:
            if client.poll() is None:
                client.kill()
        lines = out.strip().splitlines()
        result = json.loads(lines[-1])
        return IdleResult(
            target=target.name,
            n=n,
            opened=result["opened"],
            completed=result["completed"],
            failed=result["failed"],
            baseline_rss=baseline,
            peak_rss=peak,
            open_seconds=result["open_seconds"],
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--server", choices=["uvicorn", "hypercorn"], default="uvicorn")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warmup per target")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--targets", default=",".join(t.name for t in TARGETS if "+" not in t.name))
    all_names = _scenario_names()
    parser.add_argument(
        "--scenarios",
        default="*",
        help=f"names or globs (chat_session_long*), comma-separated; any of {','.join(all_names)}",
    )
    parser.add_argument("--idle-n", default="1000,10000", help="concurrent streams to hold")
    parser.add_argument("--idle-delay", type=float, default=2.0, help="echo delay per word, s")
    parser.add_argument("--idle-words", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "last-run.md")
    parser.add_argument("--no-install", action="store_true", help="do not install missing tools")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure orbiter_asgi as of this git commit, as target orbiter_asgi@REF",
    )
    parser.add_argument("--render", type=Path, help="only re-render the table of a saved .json run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render:
        raw = json.loads(args.render.read_text())
        print(
            render(
                [Measurement(**m) for m in raw["measurements"]],
                [IdleResult(**r) for r in raw["idle"]],
                raw["targets"],
                header=raw["header"],
            )
        )
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop servers
    if not args.no_install:
        wanted = _select(args.scenarios, _scenario_names())
        ensure_dependencies({s.store for s in HTTP_SCENARIOS if s.name in wanted})
    _raise_fd_limit()
    targets = [t for name in args.targets.split(",") for t in TARGETS if t.name == name]
    with tempfile.TemporaryDirectory() as tree:
        if args.baseline:
            targets.insert(1, _baseline(args.baseline, Path(tree)))
        return _measure(args, targets, sys.argv[1:] if argv is None else argv)


def _baseline(ref: str, directory: Path) -> Target:
    """`orbiter_asgi` (and its benchmark app) as of commit `ref`, exported to
    `directory`: one run then measures a change against the commit before it."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    first = TARGETS[0]
    return Target(f"{first.name}@{ref}", first.app, root=directory)


def _scenario_names() -> list[str]:
    return [s.name for s in HTTP_SCENARIOS] + [s.name for s in WS_SCENARIOS] + ["idle_streams"]


def _select(patterns: str, names: list[str]) -> set[str]:
    """Scenario names matching any comma-separated name or glob (`chat_session_long*`)."""
    wanted = {n for pattern in patterns.split(",") if pattern for n in fnmatch.filter(names, pattern)}
    unknown = [p for p in patterns.split(",") if p and not fnmatch.filter(names, p)]
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(unknown)}")
    return wanted


def _history_limit_available() -> bool:
    """Whether this tree's `Agent` takes `history_limit` (the long-session scenarios use it)."""
    from orbiter_asgi import Agent

    try:
        Agent("assistant", history_limit=20)  # type: ignore[call-arg, unused-ignore]
    except TypeError:
        return False
    return True


def _postgres_store_available() -> bool:
    from orbiter_asgi.stores import STORES

    return "postgresql" in STORES or "postgres" in STORES


class _Variants:
    """The `orbiter_asgi` servers of store and history-limit scenarios, and their store services.

    Started when a scenario first needs one, stopped with the run. A variant
    whose store cannot be had (no redis-server, no Postgres store in this
    tree) is reported and its scenarios skipped.
    """

    def __init__(self, stack: contextlib.ExitStack, server_kind: str, log_dir: Path, workdir: Path) -> None:
        self.stack = stack
        self.server_kind = server_kind
        self.log_dir = log_dir
        self.workdir = workdir
        self.servers: dict[str, Server] = {}
        self.urls: dict[str, str] = {"memory": "memory://"}
        self.pids: dict[str, int] = {}  # store service -> its pid
        self.missing: dict[str, str] = {}  # variant or store -> why not

    def name(self, scenario: HttpScenario) -> str:
        return f"{TARGETS[0].name}+{scenario.variant}"

    def _store_url(self, store: str) -> str:
        from .services import ServiceUnavailable, postgres_server, redis_server

        if store in self.urls:
            return self.urls[store]
        if store in self.missing:
            raise ServiceUnavailable(self.missing[store])
        try:
            if store == "sqlite":
                url = f"sqlite:///{self.workdir / 'bench.db'}"
            elif store == "redis":
                service = self.stack.enter_context(redis_server())
                url, self.pids[store] = service.url, service.pid
            elif store == "postgres":
                if not _postgres_store_available():
                    raise ServiceUnavailable("this orbiter_asgi has no Postgres store (postgresql://)")
                service = self.stack.enter_context(postgres_server())
                url, self.pids[store] = service.url, service.pid
            else:
                raise ServiceUnavailable(f"unknown store {store!r}")
        except (ServiceUnavailable, RuntimeError, subprocess.SubprocessError) as exc:
            self.missing[store] = str(exc)
            raise ServiceUnavailable(str(exc)) from exc
        print(f"store {store}: {url}", flush=True)
        self.urls[store] = url
        return url

    def server(self, scenario: HttpScenario) -> Server | None:
        """The scenario's server, started if need be; None (and a note) when it cannot be."""
        from .services import ServiceUnavailable

        name = self.name(scenario)
        if name in self.servers:
            return self.servers[name]
        if name in self.missing:
            return None
        try:
            env = {"BENCH_STORE": self._store_url(scenario.store)}
            if scenario.history_limit is not None:
                env["BENCH_HISTORY_LIMIT"] = str(scenario.history_limit)
            label = "-" + scenario.variant.replace("+", "-")
            started = start_server(TARGETS[0], self.server_kind, self.log_dir, env, label)
            self.servers[name] = self.stack.enter_context(started)
        except (ServiceUnavailable, RuntimeError) as exc:
            self.missing[name] = str(exc)
            print(f"skipping the scenarios of {name}: {exc}", file=sys.stderr, flush=True)
            return None
        print(f"server {name}: {self.servers[name].port}", flush=True)
        return self.servers[name]

    def service_pids(self, scenario: HttpScenario) -> list[int]:
        pid = self.pids.get(scenario.store)
        return [pid] if pid is not None else []


def _preload(base_url: str, prefix: str, sessions: int, length: int) -> float:
    """Create `sessions` sessions `{prefix}{i}` of `length` 20-word messages each, over HTTP.

    Through `POST /sessions` and `POST /sessions/{id}/messages` (batches of
    1,000), so it fills every store alike, the server's memory included.
    Returns the seconds it took.
    """
    import httpx

    message = {"user": words(20), "assistant": words(20)}
    turns = [{"role": role, "content": message[role]} for role in ("user", "assistant")]
    batch = 1000

    def body(count: int) -> bytes:
        return json.dumps([turns[i % 2] for i in range(count)], separators=(",", ":")).encode()

    bodies = {count: body(count) for count in {min(batch, length), length % batch} if count}

    async def fill() -> None:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
            gate = asyncio.Semaphore(16)

            async def one(index: int) -> None:
                session_id = f"{prefix}{index}"
                async with gate:
                    response = await client.post("/sessions", json={"id": session_id, "agent_name": AGENT})
                    if response.status_code != 201:
                        raise RuntimeError(f"preload: POST /sessions {response.status_code}: {response.text}")
                    for start in range(0, length, batch):
                        count = min(batch, length - start)
                        response = await client.post(
                            f"/sessions/{session_id}/messages",
                            content=bodies[count],
                            headers={"content-type": "application/json"},
                        )
                        if response.status_code != 201:
                            raise RuntimeError(f"preload: append {response.status_code}: {response.text}")

            await asyncio.gather(*(one(i) for i in range(sessions)))

    started = time.monotonic()
    asyncio.run(fill())
    return time.monotonic() - started


def _measure(args: argparse.Namespace, targets: list[Target], argv: list[str]) -> int:
    from .check import CheckError, answers, compare
    from .http_load import run_wrk

    wanted = _select(args.scenarios, _scenario_names())
    log_dir = ROOT / "benchmarks" / "logs"
    log_dir.mkdir(exist_ok=True)
    server_kind = args.server
    measurements: list[Measurement] = []
    started_at = datetime.datetime.now(datetime.UTC)
    run_id = started_at.strftime("%H%M%S")
    notes: list[str] = []

    http = [s for s in HTTP_SCENARIOS if s.name in wanted]
    ws = [s for s in WS_SCENARIOS if s.name in wanted]
    if any(s.history_limit is not None for s in http) and not _history_limit_available():
        notes.append(
            "`Agent(history_limit=...)` does not exist in this tree: the long-session scenarios "
            "ran with the whole history shown to the model"
        )
        print(f"note: {notes[-1]}", file=sys.stderr, flush=True)

    variant_names: list[str] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orbiter-bench-")))
        servers: dict[str, Server] = {}
        for target in targets:
            servers[target.name] = stack.enter_context(start_server(target, server_kind, log_dir))
        variants = _Variants(stack, server_kind, log_dir, workdir)
        for scenario in http:
            if scenario.variant and variants.server(scenario) is not None:
                name = variants.name(scenario)
                servers[name] = variants.servers[name]
                variant_names += [name] if name not in variant_names else []
        print(f"servers up: {', '.join(f'{n}:{s.port}' for n, s in servers.items())}", flush=True)

        reference: tuple[str, dict[str, object]] | None = None
        for name in [t.name for t in targets] + variant_names:
            try:
                got = answers(servers[name].base_url, name)
                if reference is None:
                    reference = (name, got)
                else:
                    compare(reference[0], reference[1], name, got)
            except CheckError as exc:
                print(f"correctness check failed for {name}: {exc}", file=sys.stderr)
                return 1
            print(f"checked {name}: answers match", flush=True)

        for index, scenario in enumerate(http):
            if scenario.variant:
                if variants.name(scenario) not in servers:
                    notes.append(f"`{scenario.name}` skipped: {variants.missing[variants.name(scenario)]}")
                    continue
                names = [variants.name(scenario)]
            else:
                names = [t.name for t in targets if scenario.serves(t.name)]
            services = variants.service_pids(scenario)
            results = {n: Measurement(scenario.name, n, _unit(scenario), note=scenario.note) for n in names}
            for name in names:
                warmup = f"w{run_id}-{index}-"
                run_wrk(servers[name].base_url, scenario, duration=args.warmup, session_prefix=warmup)
                if scenario.variant:
                    _settle([servers[name].pid, *services])
            for round_ in range(args.rounds):
                for name in names:
                    prefix = f"{run_id}-{index}-{round_}-"
                    sessions = long_sessions(scenario) if scenario.preload else 0
                    if scenario.preload:
                        took = _preload(servers[name].base_url, prefix, sessions, scenario.preload)
                        print(f"  {scenario.name:20} {name:20} preloaded {sessions} sessions of "
                              f"{scenario.preload} messages in {took:.1f} s", flush=True)  # fmt: skip
                    meter = _CpuMeter(servers[name], services)
                    meter.start()
                    r = run_wrk(
                        servers[name].base_url, scenario, duration=args.duration, session_prefix=prefix
                    )
                    meter.stop()
                    if scenario.variant:
                        _settle([servers[name].pid, *services])
                    m = results[name]
                    m.rates.append(r.rate)
                    m.p99s.append(r.p99_ms)
                    m.errors += r.errors
                    m.counts.append(r.requests)
                    m.cpu.append(meter.server_s)
                    m.store_cpu.append(meter.store_s)
                    if sessions:
                        m.history_end.append(scenario.preload + 2 * r.requests / sessions)
                    per_cpu = r.requests / meter.server_s if meter.server_s else 0.0
                    print(f"  {scenario.name:20} {name:20} round {round_ + 1}: {r.rate:10.1f}/s"
                          f"  {per_cpu:10.1f}/CPU-s  p99 {r.p99_ms:8.1f} ms  errors {r.errors}",
                          flush=True)  # fmt: skip
            measurements.extend(results.values())

        for ws_scenario in ws:
            results = {t.name: Measurement(ws_scenario.name, t.name, "turns/s") for t in targets}
            for round_ in range(args.rounds):
                for target in targets:
                    meter = _CpuMeter(servers[target.name], [])
                    turns = _ws_round(servers[target.name], ws_scenario, args.duration, meter)
                    m = results[target.name]
                    m.rates.append(turns["rate"])
                    m.p99s.append(turns["p99_ms"])
                    m.errors += int(turns["errors"])
                    m.counts.append(int(turns["turns"]))
                    m.cpu.append(meter.server_s)
                    m.store_cpu.append(0.0)
                    per_cpu = turns["turns"] / meter.server_s if meter.server_s else 0.0
                    print(f"  {ws_scenario.name:20} {target.name:20} round {round_ + 1}: "
                          f"{turns['rate']:10.1f}/s  {per_cpu:10.1f}/CPU-s  p99 {turns['p99_ms']:8.1f} ms",
                          flush=True)  # fmt: skip
            measurements.extend(results.values())

    idle: list[IdleResult] = []
    if "idle_streams" in wanted:
        for n in (int(x) for x in args.idle_n.split(",") if x):
            for target in targets:
                result = _idle(target, server_kind, n, args, log_dir)
                idle.append(result)
                print(f"  idle_streams N={n:<6} {target.name:20} opened {result.opened} completed "
                      f"{result.completed} {result.per_stream_kib:.1f} KiB/stream", flush=True)  # fmt: skip

    measured = {m.target for m in measurements}
    names = [t.name for t in targets] + [n for n in variant_names if n in measured]
    command = "python -m benchmarks " + " ".join(argv)
    header = (
        f"## {server_kind}: {args.rounds} rounds of {args.duration:g} s, "
        f"{started_at:%Y-%m-%d %H:%M} UTC\n\n"
        f"- command: `{command.strip()}`\n- machine: {_machine()}\n- versions: {_versions()}"
    )
    header += "".join(f"\n- note: {note}" for note in notes)
    table = render(measurements, idle, names, header=header)
    print()
    print(table)
    args.out.write_text(table)
    raw = {
        "measurements": [m.__dict__ for m in measurements],
        "idle": [r.__dict__ for r in idle],
        "targets": names,
        "header": header,
    }
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    return 0


def _unit(scenario: HttpScenario) -> str:
    streamed = b'"stream":true' in scenario.body or scenario.path.startswith("/stream")
    return "streams/s" if streamed else "req/s"
