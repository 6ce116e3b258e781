"""`orbiter_asgi` as a benchmark target: one `echo` agent named `assistant`.

`BENCH_ECHO_DELAY` selects `echo?delay=...`; `BENCH_STORE` a store URL
(default `memory://`); `BENCH_JOURNAL=off` switches the run journal off, and
`BENCH_METRICS=off` the Prometheus metrics (on when prometheus-client is
installed), to measure what each costs.
"""

from __future__ import annotations

import os

from orbiter_asgi import Agent, create_app

__all__ = ["app"]

_delay = os.environ.get("BENCH_ECHO_DELAY")
_model = f"echo?delay={_delay}" if _delay else "echo"

app = create_app(
    agents=[Agent("assistant", model=_model)],
    store=os.environ.get("BENCH_STORE") or "memory://",
    # idle_streams holds 10,000 turns open at once; the default limit of 1,024
    # concurrent turns per worker would refuse the rest with 503s
    max_concurrent_runs=None,
    metrics=False if os.environ.get("BENCH_METRICS") == "off" else None,
)

if os.environ.get("BENCH_JOURNAL") == "off":
    from .null_journal import NullJournal

    app.context.store.runs = NullJournal()
