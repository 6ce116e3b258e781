"""The markdown report: medians over rounds, p99s, and ratios within one run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["IdleResult", "Measurement", "render"]


@dataclass
class Measurement:
    scenario: str
    target: str
    unit: str  # "req/s", "streams/s", "turns/s"
    rates: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    errors: int = 0
    note: str = ""
    # per round: requests (or turns) counted, and the CPU seconds the server
    # (with its children) and the store service (Redis, Postgres) used meanwhile
    counts: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    store_cpu: list[float] = field(default_factory=list)
    history_end: list[float] = field(default_factory=list)  # preloaded scenarios: messages at the end

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def cpu_rates(self) -> list[float]:
        """Requests per second of server CPU, per round."""
        return [n / c for n, c in zip(self.counts, self.cpu, strict=False) if c > 0]

    @property
    def cpu_rate(self) -> float:
        rates = self.cpu_rates
        return statistics.median(rates) if rates else 0.0

    def cpu_ratio_to(self, base: Measurement) -> float | None:
        """As `ratio_to`, for requests per server CPU-second."""
        pairs = [(r, b) for r, b in zip(self.cpu_rates, base.cpu_rates, strict=False) if b]
        return statistics.median(r / b for r, b in pairs) if pairs else None

    def ms_per_request(self, cpu: list[float]) -> float:
        per = [1000 * c / n for n, c in zip(self.counts, cpu, strict=False) if n]
        return statistics.median(per) if per else 0.0

    @property
    def total_ms(self) -> float:
        """CPU ms per request of the server and the store service together."""
        return self.ms_per_request(self.cpu) + self.ms_per_request(self.store_cpu)

    def ratio_to(self, base: Measurement) -> float | None:
        """Median over rounds of this round's rate over `base`'s in the same round."""
        pairs = [(r, b) for r, b in zip(self.rates, base.rates, strict=False) if b]
        return statistics.median(r / b for r, b in pairs) if pairs else None

    @property
    def p99(self) -> float:
        return statistics.median(self.p99s) if self.p99s else 0.0


@dataclass
class IdleResult:
    target: str
    n: int
    opened: int
    completed: int
    failed: int
    baseline_rss: int
    peak_rss: int
    open_seconds: float

    @property
    def per_stream_kib(self) -> float:
        return (self.peak_rss - self.baseline_rss) / max(self.opened, 1) / 1024


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def render(
    measurements: Sequence[Measurement],
    idle: Sequence[IdleResult],
    targets: Sequence[str],
    *,
    header: str,
) -> str:
    first = targets[0]
    lines = [header, ""]
    lines += [
        f"Throughput is the median over rounds; p99 is the median of each round's p99 latency "
        f"(a whole response, a whole stream, or a whole WebSocket turn). Ratios are to "
        f"`{first}` in the same run: the median over rounds of the ratio within each round, "
        f"so that load from elsewhere on the machine, which shifts whole rounds, cancels out. "
        f"*Per CPU-s* is requests (streams, turns) per second of the server process's own CPU "
        f"time (user + system, its children included) over the measured interval: the cost "
        f"of a request, which a load generator short of CPU cannot flatter.",
        "",
        f"| scenario | target | throughput | ratio to {first} | per CPU-s | ratio to {first} "
        "| p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(m.scenario, m.target): m for m in measurements}
    scenarios = list(dict.fromkeys(m.scenario for m in measurements))
    for scenario in scenarios:
        base = by_key.get((scenario, first))
        for target in targets:
            m = by_key.get((scenario, target))
            if m is None:
                continue
            value = m.ratio_to(base) if base else None
            ratio = f"{value:.2f}x" if value else "—"
            cpu_value = m.cpu_ratio_to(base) if base else None
            cpu_ratio = f"{cpu_value:.2f}x" if cpu_value else "—"
            per_cpu = _fmt_rate(m.cpu_rate) if m.cpu_rate else "—"
            lines.append(
                f"| {scenario} | {target} | {_fmt_rate(m.rate)} {m.unit} | {ratio} "
                f"| {per_cpu} | {cpu_ratio} | {m.p99:.1f} | {m.errors} |"
            )
    peers = [t for t in targets[1:] if "+" not in t]  # not variants of the first target
    if "bare_asgi" in peers:
        lines += [
            "",
            f"`{first}` against each peer (throughput ratio; > 1 means `{first}` is faster):",
            "",
            "| scenario | " + " | ".join(f"{first} / {t}" for t in peers) + " |",
            "|---|" + "---:|" * len(peers),
        ]
        for scenario in scenarios:
            base = by_key.get((scenario, first))
            if base is None:
                continue
            cells = []
            for target in peers:
                m = by_key.get((scenario, target))
                value = base.ratio_to(m) if base and m else None
                cells.append(f"{value:.2f}" if value else "—")
            lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    lines += _stores(measurements)
    lines += _long_sessions(measurements)
    if idle:
        lines += [
            "",
            "Idle streams (N concurrent SSE streams of a slowed-down echo agent):",
            "",
            "| N | target | opened | completed | failed | time to open s | RSS before MiB "
            "| RSS peak MiB | KiB per stream |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in idle:
            lines.append(
                f"| {r.n:,} | {r.target} | {r.opened:,} | {r.completed:,} | {r.failed:,} "
                f"| {r.open_seconds:.1f} | {r.baseline_rss / 2**20:.0f} | {r.peak_rss / 2**20:.0f} "
                f"| {r.per_stream_kib:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _stores(measurements: Sequence[Measurement]) -> list[str]:
    """CPU milliseconds per request of the server and of the store service, where one ran."""
    rows = [m for m in measurements if any(m.store_cpu)]
    if not rows:
        return []
    lines = [
        "",
        "CPU per request where the store is a service of its own (medians over rounds; the "
        "server's CPU includes SQLite's, which runs in its threads):",
        "",
        "| scenario | target | server CPU ms | store CPU ms | together ms |",
        "|---|---|---:|---:|---:|",
    ]
    for m in rows:
        server, store = m.ms_per_request(m.cpu), m.ms_per_request(m.store_cpu)
        lines.append(f"| {m.scenario} | {m.target} | {server:.3f} | {store:.3f} | {m.total_ms:.3f} |")
    return lines


def _long_sessions(measurements: Sequence[Measurement]) -> list[str]:
    """Turn cost on long sessions against the 10-message session of the same store."""
    prefix = "chat_session_long_"
    by_store: dict[str, dict[int, Measurement]] = {}
    for m in measurements:
        if m.scenario.startswith(prefix):
            digits, _, store = m.scenario[len(prefix) :].partition("_")
            by_store.setdefault(store or "memory", {})[int(digits)] = m
    if not by_store:
        return []
    lines = [
        "",
        "Long sessions: a 20-word turn on a session that holds N messages when the round starts "
        "(*history at end*: the mean after the round), against N = 10 on the same store. *Cost "
        "ratio* is the time per turn (1 / throughput) over that of N = 10, and *CPU ratio* the "
        "server's CPU per turn (with the store service's, where there is one) over that of "
        "N = 10; target ≤ 1.5 at N = 1,000.",
        "",
        "| store | N | history at end | turns/s | CPU ms per turn | cost ratio | CPU ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for store_name, by_length in by_store.items():
        short = by_length.get(10)
        for length in sorted(by_length):
            m = by_length[length]
            cost = f"{short.rate / m.rate:.2f}" if short and m.rate else "—"
            measured = short is not None and short.total_ms > 0 and m.total_ms > 0
            cpu_ratio = f"{m.total_ms / short.total_ms:.2f}" if short and measured else "—"
            cpu = f"{m.total_ms:.3f}" if m.total_ms else "—"
            end = f"{statistics.median(m.history_end):,.0f}" if m.history_end else "—"
            lines.append(
                f"| {store_name} | {length:,} | {end} | {_fmt_rate(m.rate)} | {cpu} | {cost} | {cpu_ratio} |"
            )
    return lines
