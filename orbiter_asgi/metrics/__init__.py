"""Prometheus metrics: `GET /metrics`, fed by a run observer, an ASGI
middleware and a timing proxy around the store.

`prometheus-client` is optional (`pip install 'orbiter-asgi[metrics]'`):
this door imports it only when an app turns metrics on, through
`open_metrics()`. Under `uvicorn --workers N`, set `PROMETHEUS_MULTIPROC_DIR`
and any worker's scrape sums every worker's series (README: Monitoring).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, cast

from ..stores.base import SessionStore
from ._http import EXCLUDED_ROUTES, HTTPMetrics
from ._store import STORE_OPERATIONS, TimedStore

if TYPE_CHECKING:
    from .._context import AppContext
    from .prometheus import Metrics

__all__ = [
    "EXCLUDED_ROUTES",
    "STORE_OPERATIONS",
    "HTTPMetrics",
    "TimedStore",
    "metrics_available",
    "open_metrics",
]

_HINT = "Metrics need prometheus-client: pip install 'orbiter-asgi[metrics]'"


def metrics_available() -> bool:
    """Whether `prometheus-client` is installed (metrics are then on by default)."""
    try:
        return importlib.util.find_spec("prometheus_client") is not None
    except ValueError:  # `sys.modules` holds it as None: blocked
        return False


def open_metrics(context: AppContext, enabled: bool | None, *, store: str) -> Metrics | None:
    """The app's `Metrics`, or None when they are off.

    `enabled` None: on when the extra is installed; True without it is an
    `ImportError` that says what to install. `store` labels the store's
    timings (its URL scheme).
    """
    if enabled is False or (enabled is None and not metrics_available()):
        return None
    try:
        from .prometheus import Metrics
    except ImportError as exc:
        raise ImportError(_HINT) from exc
    metrics = Metrics(context)
    context.store = cast(SessionStore, TimedStore(context.store, metrics.store_timers(store)))
    context.run_observers.append(metrics.observe_run)
    return metrics
