"""`health_router`: `GET /healthz` (liveness) and `GET /readyz` (readiness).

The two answer different questions, as load balancers and Kubernetes ask
them: `/healthz` is 200 as long as the process serves HTTP at all, so a
failing store never gets a healthy process restarted; `/readyz` is 200 only
while this app would serve a turn: its store answers a ping within
`READY_TIMEOUT` seconds and it is not draining. Otherwise a 503 with
`Retry-After: 1`, saying why in `status`, so traffic moves to other workers
until this one is back, without a restart.

Both are public when API keys are on (`security.DEFAULT_PUBLIC_PATHS`):
probes do not carry keys.
"""

from __future__ import annotations

from typing import Literal

import anyio
import msgspec
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._codec import encode
from ._context import AppContext, get_context
from ._http import Endpoint, send_json
from .exceptions import StoreError
from .routing import Operation, Router

__all__ = [
    "READY_TIMEOUT",
    "Healthy",
    "NotReady",
    "Ready",
    "health_router",
    "healthz",
    "readyz",
]

READY_TIMEOUT = 2.0  # seconds `/readyz` waits for the store's ping: below a probe's own timeout


class Healthy(msgspec.Struct, frozen=True):
    """`GET /healthz`: the process serves."""

    status: Literal["ok"]


class Ready(msgspec.Struct, frozen=True):
    """`GET /readyz`: the store answers and the app takes new turns."""

    status: Literal["ready"]


class NotReady(msgspec.Struct, frozen=True):
    """`GET /readyz`, 503: why this worker should get no traffic for now."""

    detail: str
    status: Literal["draining", "store_unavailable"]


_HEALTHY = encode(Healthy("ok"))
_READY = encode(Ready("ready"))
_RETRY = [(b"retry-after", b"1")]


class Healthz(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, _HEALTHY)


class Readyz(Endpoint):
    """200 while the store answers and the app is not draining, else 503."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        not_ready = await _not_ready(get_context(scope))
        if not_ready is None:
            await send_json(send, _READY)
        else:
            await send_json(send, encode(not_ready), 503, _RETRY)


async def _not_ready(context: AppContext) -> NotReady | None:
    if context.guard.draining:  # asked first: a draining app may be closing its store
        return NotReady("The server is shutting down", "draining")
    try:
        with anyio.fail_after(READY_TIMEOUT):
            await context.store.ping()
    except StoreError:  # its message names hosts and paths: not for a public endpoint
        return NotReady("The session store is unavailable", "store_unavailable")
    except TimeoutError:
        return NotReady(f"The session store did not answer within {READY_TIMEOUT:g} s", "store_unavailable")
    return None


healthz = Healthz()
readyz = Readyz()

_TAGS = ["health"]

health_router = Router(
    [
        Route("/healthz", healthz, methods=["GET"], name="healthz"),
        Route("/readyz", readyz, methods=["GET"], name="readyz"),
    ],
    operations=[
        Operation(
            method="get", path="/healthz", summary="Liveness: 200 while the process serves",
            response=Healthy, tags=_TAGS,
        ),
        Operation(
            method="get", path="/readyz",
            summary="Readiness: 200 while the store answers and the app is not draining",
            response=Ready, responses={503: NotReady}, tags=_TAGS,
        ),
    ],
)
