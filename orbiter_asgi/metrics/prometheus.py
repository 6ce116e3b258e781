"""`Metrics`: one app's Prometheus instruments and its `GET /metrics` endpoint.

Each app owns a `CollectorRegistry`, so two apps in one process (tests, an
app mounted in another) keep apart. With `PROMETHEUS_MULTIPROC_DIR` set,
prometheus-client writes every value to per-process files in that
directory instead, and a scrape merges them with a `MultiProcessCollector`:
metrics are then created on no registry, as the library's multiprocess
docs require, and gauges sum the live processes (`livesum`).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio.to_thread
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from starlette.types import Receive, Scope, Send

from ..exceptions import RunTimeout
from ._local import LocalCollector
from ._store import STORE_OPERATIONS, Observer

if TYPE_CHECKING:
    from .._context import AppContext
    from ..runs import Run

__all__ = [
    "FIRST_TOKEN_BUCKETS",
    "RUN_BUCKETS",
    "STORE_BUCKETS",
    "Metrics",
    "MetricsEndpoint",
    "multiprocess",
]

# seconds: a model call takes from a tenth of a second to minutes with tools
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_TIMEOUT = RunTimeout.code
_OUTCOMES = ("completed", "failed", "cancelled", "timeout")
_OTHER = "other"  # the agent label of a run whose agent is not (or no longer) registered
_CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
_REFRESH = 1.0  # seconds between a worker's updates of its active-runs gauge (multiprocess mode)


def multiprocess() -> bool:
    """Whether prometheus-client runs in multiprocess mode (it decides at import)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


_ACTIVE = "Runs in progress"
_SSE = "Server-sent event streams open"
_SOCKETS = "WebSockets open (accepted)"


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Gauge(_Counter, Protocol):
    def dec(self, amount: float = 1) -> None: ...

    def set(self, value: float) -> None: ...


def _prometheus_family(
    name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...] = ()
) -> Counter | Histogram:
    if buckets:
        return Histogram(name, documentation, labelnames, buckets=buckets, registry=None)
    return Counter(name, documentation, labelnames, registry=None)


def _live_gauge(name: str, documentation: str) -> Gauge:
    return Gauge(name, documentation, registry=None, multiprocess_mode="livesum")


class _AgentSeries:
    """The children of one agent's labels, bound once: a run's end costs no label lookups."""

    __slots__ = ("duration", "first_token", "input_tokens", "output_tokens", "runs")

    def __init__(self, metrics: Metrics, agent: str) -> None:
        self.runs: dict[str, _Counter] = {
            outcome: metrics.runs.labels(agent, outcome) for outcome in _OUTCOMES
        }
        self.input_tokens: _Counter
        self.output_tokens: _Counter
        self.duration: Observer
        self.first_token: Observer
        self.input_tokens = metrics.tokens.labels(agent, "input")
        self.output_tokens = metrics.tokens.labels(agent, "output")
        self.duration = metrics.run_duration.labels(agent)
        self.first_token = metrics.first_token.labels(agent)


class Metrics:
    """The instruments of one app, and what feeds them.

    `create_app()` builds it when metrics are on: `observe_run` joins the
    context's run observers, `HTTPMetrics` counts requests, a `TimedStore`
    times the store, and `endpoint` serves `GET /metrics`.
    """

    def __init__(self, context: AppContext) -> None:
        self.context = context
        self.multiprocess = multiprocess()
        guard = context.guard
        self.registry: CollectorRegistry | None
        families: Callable[..., Any]
        self._refresh: Callable[[], None] | None
        if self.multiprocess:
            # values live in the directory's files; metrics go on no registry, as
            # the library's multiprocess docs require, and each worker writes
            # its own active-run count (a callback would be read in the scraping
            # worker only), at run ends and every second
            self.registry = None
            families = cast(Callable[..., Any], _prometheus_family)
            self.active_runs: _Gauge = _live_gauge("orbiter_active_runs", _ACTIVE)
            self.sse_streams: _Gauge = _live_gauge("orbiter_open_sse_streams", _SSE)
            self.websockets: _Gauge = _live_gauge("orbiter_open_websockets", _SOCKETS)
            self._refresh = lambda: self.active_runs.set(guard.active)
            self._ticking = False
            atexit.register(_multiprocess.mark_process_dead, os.getpid())  # its live gauges go with it
        else:
            local = LocalCollector()
            self.registry = CollectorRegistry()
            self.registry.register(local)
            families = cast(Callable[..., Any], local.family)
            self.active_runs = local.gauge("orbiter_active_runs", _ACTIVE, lambda: guard.active)
            self.sse_streams = local.gauge("orbiter_open_sse_streams", _SSE)
            self.websockets = local.gauge("orbiter_open_websockets", _SOCKETS)
            self._refresh = None
            self._ticking = True
        self.runs = families("orbiter_runs", "Runs ended, by agent and outcome", ["agent", "outcome"])
        self.tokens = families(
            "orbiter_tokens", "Tokens used by runs, by agent and type (input, output)", ["agent", "type"]
        )
        self.run_duration = families(
            "orbiter_run_duration_seconds", "Wall-clock time of runs, start to end", ["agent"], RUN_BUCKETS
        )
        self.first_token = families(
            "orbiter_time_to_first_token_seconds",
            "Time from a run's start to its first text or tool call",
            ["agent"],
            FIRST_TOKEN_BUCKETS,
        )
        self.requests = families(
            "orbiter_http_requests",
            "HTTP requests, by route template, method and status",
            ["route", "method", "status"],
        )
        self.store_operations = families(
            "orbiter_store_operation_seconds",
            "Latency of session store operations",
            ["store", "operation"],
            STORE_BUCKETS,
        )
        self._series: dict[str, _AgentSeries] = {}
        self._requests: dict[tuple[str, str, int], _Counter] = {}
        self.endpoint = MetricsEndpoint(self)

    def store_timers(self, store_url: str) -> dict[str, Observer]:
        """A timer per store operation, labelled by the store's URL scheme."""
        scheme = store_url.partition("://")[0] if "://" in store_url else store_url
        return {operation: self.store_operations.labels(scheme, operation) for operation in STORE_OPERATIONS}

    def observe_run(self, run: Run) -> None:
        """A run observer: count and time `run`, which has just ended."""
        name = run.agent.name
        series = self._series.get(name)
        if series is None:
            series = self._agent_series(name)
        info = run.info
        assert info is not None
        outcome: str = info.status
        if outcome == "failed" and info.error is not None and info.error.code == _TIMEOUT:
            outcome = "timeout"
        series.runs.get(outcome, series.runs["failed"]).inc()
        usage = info.usage
        if usage.input_tokens:
            series.input_tokens.inc(usage.input_tokens)
        if usage.output_tokens:
            series.output_tokens.inc(usage.output_tokens)
        created = run.created
        series.duration.observe(time.monotonic() - created)
        if run.first_output is not None:
            series.first_token.observe(run.first_output - created)
        if self._refresh is not None:
            self._refresh()

    def _agent_series(self, name: str) -> _AgentSeries:
        """Series for a registered agent; a name the registry does not know
        shares `other`, so no client can mint label values."""
        label = name if name in self.context.agents else _OTHER
        series = self._series.get(label)
        if series is None:
            series = self._series[label] = _AgentSeries(self, label)
        return series

    def count_request(self, route: str, method: str, status: int) -> None:
        key = (route, method, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(route, method, str(status))
        child.inc()

    def tick(self) -> None:
        """Start this worker's refresh of its active-runs gauge (multiprocess
        mode), once, from within its event loop."""
        if self._ticking:
            return
        self._ticking = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: the gauge moves at run ends only
            return
        refresh = self._refresh
        assert refresh is not None

        def again() -> None:
            refresh()
            loop.call_later(_REFRESH, again)

        loop.call_later(_REFRESH, again)

    def exposition(self) -> bytes:
        """The text format of every series; every worker's in multiprocess mode."""
        if self.registry is not None:
            return generate_latest(self.registry)
        if self._refresh is not None:
            self._refresh()
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


class MetricsEndpoint:
    """`GET /metrics`: the Prometheus text format."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.metrics
        # merging the workers' files reads the disk: off the event loop
        if metrics.multiprocess:
            body = await anyio.to_thread.run_sync(metrics.exposition)
        else:
            body = metrics.exposition()
        headers = [(b"content-type", _CONTENT_TYPE), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
