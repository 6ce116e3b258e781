"""`run_router`: `/runs/{run_id}`, its events and its cancel, on any worker.

Everything here reads the store's run journal, so a client may ask any
worker about a run that another one runs.
"""

from __future__ import annotations

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._codec import encode
from ._context import get_context
from ._http import Endpoint, header, query_params, send_json
from ._sse import resume_point, send_journal_stream
from .exceptions import RequestError
from .models import ErrorDetail, Event, RunInfo
from .routing import Operation, Router
from .runs import run_not_found

__all__ = ["cancel_run", "get_run", "run_events", "run_router"]


class GetRun(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        run_id = scope["path_params"]["run_id"]
        info = await get_context(scope).store.runs.get(run_id)
        if info is None:
            raise run_not_found(run_id)
        await send_json(send, encode(info))


class RunEvents(Endpoint):
    """SSE: the run's events after `Last-Event-ID: <run_id>:<n>` (or `?after=n`),
    then live ones until `[DONE]`; 204 when the client saw the end."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        run_id = scope["path_params"]["run_id"]
        context = get_context(scope)
        after = _after(scope, run_id)
        await send_journal_stream(
            send, context.store.runs, run_id, after, heartbeat=context.limits.heartbeat_interval
        )


def _after(scope: Scope, run_id: str) -> int:
    resume = resume_point(header(scope, b"last-event-id"))
    if resume is not None and resume[0] == run_id:
        return resume[1]
    raw = query_params(scope).get("after")
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise RequestError("Query parameter 'after' must be a non-negative integer")
    return min(int(raw), _PAST_ANY_RUN)


_PAST_ANY_RUN = 1 << 62  # an `after` beyond every run's frames, and within a database integer


class CancelRun(Endpoint):
    """202: the cancel is on its way to whichever worker runs the run; it ends
    with an `error` of code `cancelled` within a second."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        run_id = scope["path_params"]["run_id"]
        info = await get_context(scope).store.runs.cancel(run_id)
        if info is None:
            raise run_not_found(run_id)
        await send_json(send, encode(info), 202)


get_run = GetRun()
run_events = RunEvents()
cancel_run = CancelRun()

_TAGS = ["runs"]
_ERRORS = {404: ErrorDetail}

run_router = Router(
    [
        Route("/runs/{run_id}", get_run, methods=["GET"], name="get_run"),
        Route("/runs/{run_id}/events", run_events, methods=["GET"], name="run_events"),
        Route("/runs/{run_id}/cancel", cancel_run, methods=["POST"], name="cancel_run"),
    ],
    operations=[
        Operation(
            method="get", path="/runs/{run_id}", summary="A run: running or how it ended",
            response=RunInfo, responses=_ERRORS, tags=_TAGS,
        ),
        Operation(
            method="get", path="/runs/{run_id}/events",
            summary="Follow a run's events (SSE), after Last-Event-ID or ?after=",
            query=[("after", int, False)], response=Event,
            responses={**_ERRORS, 410: ErrorDetail}, tags=_TAGS, media_type="text/event-stream",
        ),
        Operation(
            method="post", path="/runs/{run_id}/cancel", summary="Cancel a run, on whichever worker runs it",
            response=RunInfo, status=202, responses=_ERRORS, tags=_TAGS,
        ),
    ],
)
