"""The run log: one structured record per run end, on the `orbiter_asgi.runs` logger.

A record's message reads on its own (`run 3f2a... completed in 812 ms`); its
fields are in `record.run`, for a formatter that writes them out, such as
the JSON lines of `orbiter-asgi serve --log-format json`. Nothing is built
unless the logger is enabled for INFO, so a run that nobody logs pays one
level check.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import Run

__all__ = ["log_run_end", "logger"]

logger = logging.getLogger("orbiter_asgi.runs")


def log_run_end(run: Run) -> None:
    """Log `run`, which has just ended (its record says how)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    info = run.info
    assert info is not None
    duration_ms = (time.monotonic() - run.created) * 1000
    first = run.first_output
    fields: dict[str, Any] = {
        "run_id": run.id,
        "agent": run.agent.name,
        "session_id": run.session_id,
        "status": info.status,
        "duration_ms": round(duration_ms, 1),
        "time_to_first_token_ms": round((first - run.created) * 1000, 1) if first is not None else None,
        "input_tokens": info.usage.input_tokens,
        "output_tokens": info.usage.output_tokens,
        "error_code": info.error.code if info.error is not None else None,
    }
    logger.info("run %s %s in %.0f ms", run.id, info.status, duration_ms, extra={"run": fields})
