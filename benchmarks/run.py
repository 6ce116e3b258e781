"""`python -m benchmarks`: start every target, check it, measure, write the table.

Order of work: install what is missing (the `bench` extra, `wrk`), start one
server per target, check each target's answers and compare them, then per
scenario run every target once per round (targets interleaved, so drift in
the machine hits all of them alike), then the idle-streams test with a
slowed-down echo agent, one fresh server per target and N. The markdown
table goes to stdout and to `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
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
import time
from pathlib import Path
from urllib.parse import urlencode

from .report import IdleResult, Measurement, render
from .scenarios import AGENT, HTTP_SCENARIOS, WS_SCENARIOS, HttpScenario, WsScenario, words
from .servers import ROOT, TARGETS, Server, Target, client_cpus, pinned, server_cpus, start_server

__all__ = ["main"]

_BENCH_MODULES = (
    "uvicorn", "uvloop", "httptools", "hypercorn", "fastapi", "pydantic", "websockets", "psutil",
)  # fmt: skip


def ensure_dependencies() -> None:
    """Install the `bench` extra and `wrk` when they are missing."""
    missing = [m for m in _BENCH_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        print(f"installing the bench extra (missing: {', '.join(missing)})", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[bench]"], check=True
        )
        importlib.invalidate_caches()
    if shutil.which("wrk") is None:
        print("installing wrk with apt-get", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ["orbiter-asgi", "starlette", "msgspec", "anyio", "uvicorn", "uvloop", "httptools",
             "hypercorn", "fastapi", "pydantic", "websockets"]  # fmt: skip
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


def _ws_round(server: Server, scenario: WsScenario, duration: float) -> dict[str, float]:
    command = [
        sys.executable, "-m", "benchmarks.ws_load", "--port", str(server.port),
        "--connections", str(scenario.connections), "--words", str(scenario.words),
        "--duration", str(duration),
    ]  # fmt: skip
    completed = subprocess.run(
        pinned(command, client_cpus()), cwd=ROOT, capture_output=True, text=True,
        timeout=duration + 60, check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"ws_load failed: {completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


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
    all_names = [s.name for s in HTTP_SCENARIOS] + [s.name for s in WS_SCENARIOS] + ["idle_streams"]
    parser.add_argument(
        "--scenarios", default=",".join(all_names), help=f"any of {','.join(all_names)}"
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
        ensure_dependencies()
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


def _measure(args: argparse.Namespace, targets: list[Target], argv: list[str]) -> int:
    from .check import CheckError, answers, compare
    from .http_load import run_wrk

    wanted = set(args.scenarios.split(","))
    log_dir = ROOT / "benchmarks" / "logs"
    log_dir.mkdir(exist_ok=True)
    server_kind = args.server
    measurements: list[Measurement] = []
    started_at = datetime.datetime.now(datetime.UTC)
    run_id = started_at.strftime("%H%M%S")

    http = [s for s in HTTP_SCENARIOS if s.name in wanted]
    ws = [s for s in WS_SCENARIOS if s.name in wanted]

    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        for target in targets:
            servers[target.name] = stack.enter_context(start_server(target, server_kind, log_dir))
        if any(s.store == "sqlite" for s in http):
            db = log_dir / f"bench-{run_id}.db"
            servers["orbiter_asgi+sqlite"] = stack.enter_context(
                start_server(
                    TARGETS[0], server_kind, log_dir, {"BENCH_STORE": f"sqlite:///{db}"}, "-sqlite"
                )
            )
        print(f"servers up: {', '.join(f'{n}:{s.port}' for n, s in servers.items())}", flush=True)

        reference: tuple[str, dict[str, object]] | None = None
        for target in targets:
            try:
                got = answers(servers[target.name].base_url, target.name)
                if reference is None:
                    reference = (target.name, got)
                else:
                    compare(reference[0], reference[1], target.name, got)
            except CheckError as exc:
                print(f"correctness check failed for {target.name}: {exc}", file=sys.stderr)
                return 1
            print(f"checked {target.name}: answers match", flush=True)

        for scenario in http:
            names = (
                ["orbiter_asgi+sqlite"]
                if scenario.store == "sqlite"
                else [t.name for t in targets if scenario.serves(t.name)]
            )
            results = {n: Measurement(scenario.name, n, _unit(scenario), note=scenario.note) for n in names}
            for name in names:
                run_wrk(servers[name].base_url, scenario, duration=args.warmup, session_prefix=f"w{run_id}")
            for round_ in range(args.rounds):
                for name in names:
                    prefix = f"{run_id}-{round_}-"
                    r = run_wrk(
                        servers[name].base_url, scenario, duration=args.duration, session_prefix=prefix
                    )
                    results[name].rates.append(r.rate)
                    results[name].p99s.append(r.p99_ms)
                    results[name].errors += r.errors
                    print(f"  {scenario.name:20} {name:20} round {round_ + 1}: {r.rate:10.1f}/s"
                          f"  p99 {r.p99_ms:8.1f} ms  errors {r.errors}", flush=True)  # fmt: skip
            measurements.extend(results.values())

        for ws_scenario in ws:
            results = {t.name: Measurement(ws_scenario.name, t.name, "turns/s") for t in targets}
            for round_ in range(args.rounds):
                for target in targets:
                    r = _ws_round(servers[target.name], ws_scenario, args.duration)
                    results[target.name].rates.append(r["rate"])
                    results[target.name].p99s.append(r["p99_ms"])
                    results[target.name].errors += int(r["errors"])
                    print(f"  {ws_scenario.name:20} {target.name:20} round {round_ + 1}: "
                          f"{r['rate']:10.1f}/s  p99 {r['p99_ms']:8.1f} ms", flush=True)  # fmt: skip
            measurements.extend(results.values())

    idle: list[IdleResult] = []
    if "idle_streams" in wanted:
        for n in (int(x) for x in args.idle_n.split(",") if x):
            for target in targets:
                result = _idle(target, server_kind, n, args, log_dir)
                idle.append(result)
                print(f"  idle_streams N={n:<6} {target.name:20} opened {result.opened} completed "
                      f"{result.completed} {result.per_stream_kib:.1f} KiB/stream", flush=True)  # fmt: skip

    names = [t.name for t in targets]
    if any(m.target == "orbiter_asgi+sqlite" for m in measurements):
        names.append("orbiter_asgi+sqlite")
    command = "python -m benchmarks " + " ".join(argv)
    header = (
        f"## {server_kind}: {args.rounds} rounds of {args.duration:g} s, "
        f"{started_at:%Y-%m-%d %H:%M} UTC\n\n"
        f"- command: `{command.strip()}`\n- machine: {_machine()}\n- versions: {_versions()}"
    )
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
