"""`orbiter_asgi` as a benchmark target: one `echo` agent named `assistant`.

`BENCH_ECHO_DELAY` selects `echo?delay=...`; `BENCH_STORE` a store URL
(default `memory://`); `BENCH_HISTORY_LIMIT=N` builds the agent with
`history_limit=N` (left out, with a warning, where this `orbiter_asgi`
predates it); `BENCH_JOURNAL=off` switches the run journal off, and
`BENCH_METRICS=off` the Prometheus metrics (on when prometheus-client is
installed), to measure what each costs.
"""

from __future__ import annotations

import os
import sys

from orbiter_asgi import Agent, create_app

__all__ = ["app"]

_delay = os.environ.get("BENCH_ECHO_DELAY")
_model = f"echo?delay={_delay}" if _delay else "echo"
_limit = os.environ.get("BENCH_HISTORY_LIMIT")


def _agent() -> Agent:
    if not _limit:
        return Agent("assistant", model=_model)
    try:
        return Agent("assistant", model=_model, history_limit=int(_limit))
    except TypeError:
        print("orbiter_app: Agent has no history_limit here; shown the whole history", file=sys.stderr)
        return Agent("assistant", model=_model)


app = create_app(
    agents=[_agent()],
    store=os.environ.get("BENCH_STORE") or "memory://",
    # idle_streams holds 10,000 turns open at once; the default limit of 1,024
    # concurrent turns per worker would refuse the rest with 503s
    max_concurrent_runs=None,
    metrics=False if os.environ.get("BENCH_METRICS") == "off" else None,
)

if os.environ.get("BENCH_JOURNAL") == "off":
    from .null_journal import NullJournal

    app.context.store.runs = NullJournal()
