"""Serving a run that already exists, from its journal: waiting for its end."""

from __future__ import annotations

import anyio

from ..exceptions import AgentError, NotFoundError, OrbiterError, RunCancelled, RunTimeout, StoreError
from ..models import RunInfo
from ..stores.journal import JournalGone, RunJournal

__all__ = ["run_failure", "run_not_found", "wait_for_end"]

_FAILURES: dict[str, type[OrbiterError]] = {
    "cancelled": RunCancelled,
    "timeout": RunTimeout,
    "store_unavailable": StoreError,
}


def run_not_found(run_id: str) -> NotFoundError:
    return NotFoundError(f"Run {run_id!r} not found; runs are kept for run_retention seconds after they end")


def run_failure(info: RunInfo) -> OrbiterError:
    """The error a JSON client of an ended, unsuccessful run gets: its
    status code follows the run's error code (502 for an agent's failure)."""
    message = info.error.message if info.error is not None else f"The run ended {info.status}"
    code = info.error.code if info.error is not None else ""
    return _FAILURES.get(code, AgentError)(message)


async def wait_for_end(journal: RunJournal, run_id: str) -> RunInfo:
    """The run once it has ended; `NotFoundError` when it is unknown or expires meanwhile."""
    after = 0
    while True:
        info = await journal.get(run_id)
        if info is None:
            raise run_not_found(run_id)
        if info.status != "running":
            return info
        try:
            piece = await journal.read(run_id, after, wait=5.0)
        except JournalGone:  # only the end matters here, not the frames dropped
            await anyio.sleep(0.1)
            continue
        if piece is not None:
            after = piece.first + len(piece.frames) - 1
