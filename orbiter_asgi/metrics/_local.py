"""Instruments kept as plain numbers in this process, read at scrape time.

A prometheus-client child takes a lock and a few calls per `inc` (about
0.6 µs; an `observe`, 1.2 µs): with five per run and more per request, that
was a tenth of a short turn. Within one process the event loop is the only
writer, so a float and a list of bucket counts do, and a collector turns
them into families when `/metrics` is read. Multiprocess mode needs the
library's own values (they live in shared files) and does not use these.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

_bound = cast(Callable[[float], str], floatToGoString)  # `le` as Prometheus writes it: 0.5, 1.0, 2.5

__all__ = ["LocalCollector", "LocalCounter", "LocalFamily", "LocalGauge", "LocalHistogram"]


class LocalCounter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class LocalGauge(LocalCounter):
    __slots__ = ()

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class LocalHistogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf alone)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount
        self.sum += amount


class LocalFamily:
    """A labelled counter or histogram: its children, by label values."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float] = ()
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.buckets = tuple(buckets)
        self.children: dict[tuple[str, ...], LocalCounter | LocalHistogram] = {}

    def labels(self, *values: str) -> LocalCounter | LocalHistogram:
        child = self.children.get(values)
        if child is None:
            child = LocalHistogram(self.buckets) if self.buckets else LocalCounter()
            self.children[values] = child
        return child

    def metric(self) -> Metric:
        if not self.buckets:
            counters = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for values, child in self.children.items():
                assert isinstance(child, LocalCounter)
                counters.add_metric(list(values), child.value)
            return counters
        histograms = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [_bound(bound) for bound in self.buckets] + ["+Inf"]
        for values, child in self.children.items():
            assert isinstance(child, LocalHistogram)
            cumulative, total = [], 0
            for bound, count in zip(bounds, child.counts, strict=True):
                total += count
                cumulative.append((bound, float(total)))
            histograms.add_metric(list(values), cumulative, child.sum)
        return histograms


class LocalCollector:
    """Registered on the app's registry: its families, and label-less gauges
    read from a value or a function when scraped."""

    def __init__(self) -> None:
        self.families: list[LocalFamily] = []
        self.gauges: list[tuple[str, str, Callable[[], float]]] = []

    def family(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float] = ()
    ) -> LocalFamily:
        family = LocalFamily(name, documentation, labelnames, buckets)
        self.families.append(family)
        return family

    def gauge(self, name: str, documentation: str, read: Callable[[], float] | None = None) -> LocalGauge:
        gauge = LocalGauge()
        self.gauges.append((name, documentation, read or (lambda: gauge.value)))
        return gauge

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.metric()
        for name, documentation, read in self.gauges:
            yield GaugeMetricFamily(name, documentation, value=read())
