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

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

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
        f"so that load from elsewhere on the machine, which shifts whole rounds, cancels out.",
        "",
        "| scenario | target | throughput | ratio to " + first + " | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|",
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
            lines.append(
                f"| {scenario} | {target} | {_fmt_rate(m.rate)} {m.unit} | {ratio} "
                f"| {m.p99:.1f} | {m.errors} |"
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
