"""Runs: a chat turn from request to stored history, and what bounds it.

The only door into the turn machinery; transports import from here.

- `run`: `Run`, one turn of an agent, driven by the transport that sends its events;
- `turn`: `Turn`, the cancel scope of a running turn;
- `guard`: `RunGuard`, admission, deadlines and draining of an app's turns;
- `follow`: serving a run that already exists, from the store's run journal
  (`orbiter_asgi.stores.journal`);
- `log`: the run log, one record per run end.
"""

from __future__ import annotations

from .follow import run_failure, run_not_found, wait_for_end
from .guard import ARM_AFTER, RunGuard, drain_all, drain_on_signals
from .run import Emit, Run, RunItem, as_agent_error, start_chat, start_run
from .turn import AnyioTurn, Turn

__all__ = [
    "ARM_AFTER",
    "AnyioTurn",
    "Emit",
    "Run",
    "RunGuard",
    "RunItem",
    "Turn",
    "as_agent_error",
    "drain_all",
    "drain_on_signals",
    "run_failure",
    "run_not_found",
    "start_chat",
    "start_run",
    "wait_for_end",
]
