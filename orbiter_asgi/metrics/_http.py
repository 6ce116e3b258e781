"""`HTTPMetrics`: counts requests by route template, and open streams."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .prometheus import Metrics

__all__ = ["EXCLUDED_ROUTES", "HTTPMetrics"]

# probes and scrapes: frequent, and saying nothing about the traffic
EXCLUDED_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})

# any other method a client invents is `other`: labels stay bounded
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HTTPMetrics:
    """Pure ASGI middleware: `orbiter_http_requests_total{route,method,status}`,
    `orbiter_open_sse_streams` and `orbiter_open_websockets`.

    The route is the template of the route that served the request
    (`/sessions/{session_id}`), as Starlette's router leaves it in
    `scope["route"]`; a request answered before routing (our own endpoints
    on fixed paths, a 401) is matched against `routes` then, and a path no
    route takes is `other`. A request that got no response (its client left)
    counts as status 499; one that raised before responding, 500.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self._fixed: dict[tuple[str, str], str] = {}  # (method, raw path) of parameterless routes
        self._tick: Callable[[], None] | None = metrics.tick if metrics.multiprocess else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # HTTP inline: a coroutine less on the hot path
            await self._other(scope, receive, send)
            return
        if self._tick is not None:  # the first request: this worker's loop runs
            self._tick()
            self._tick = None
        status = 0
        streams = self.metrics.sse_streams
        streaming = False

        def watch(message: Message) -> Awaitable[None]:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"content-type":
                        if value.startswith(b"text/event-stream"):
                            streaming = True
                            streams.inc()
                        break
            elif streaming and not message.get("more_body", False):
                streaming = False
                streams.dec()
            return send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if not status:
                status = 500
            raise
        finally:
            if streaming:
                streams.dec()
            route = scope.get("route")
            if route is not None:
                template = getattr(route, "path", None)
            else:  # answered before routing: most often a direct endpoint, known by its path
                template = self._fixed.get((scope["method"], scope["path"])) or self._template(scope)
            if template not in EXCLUDED_ROUTES:
                method = scope["method"]
                self.metrics.count_request(
                    template or "other", method if method in _METHODS else "other", status or 499
                )

    def _template(self, scope: Scope) -> str | None:
        """The template of the route that takes `scope`: a scan, remembered
        (in `_fixed`) for routes without parameters."""
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                template = getattr(route, "path", None)
                break
            if match is Match.PARTIAL and partial is None:
                partial = route
        else:
            template = getattr(partial, "path", None) if partial is not None else None
        if template is not None and "{" not in template:  # one raw path per template: bounded
            self._fixed[scope["method"], scope["path"]] = template
        return template

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        sockets = self.metrics.websockets
        accepted = False

        def watch(message: Message) -> Awaitable[None]:
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                sockets.inc()
            return send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if accepted:
                sockets.dec()
