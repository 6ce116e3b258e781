"""`create_app`, `register_agent`, the chat endpoint and the app class.

```python
from orbiter_asgi import Agent, create_app, register_agent

register_agent("assistant", Agent(name="assistant", model="openai:gpt-4o"))
app = create_app()          # a Starlette app; also has FastAPI-style decorators
```
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from ._codec import Decoder, encode
from ._context import DEFAULT_SESSION_ID_PATTERN, SCOPE_KEY, AppContext, Limits, get_context
from ._docs import DocsPage
from ._http import (
    DEFAULT_MAX_BODY,
    Endpoint,
    SocketEndpoint,
    error_body,
    read_json_body,
    send_json,
)
from ._middleware import HTTPFunctionMiddleware
from ._openapi import openapi_document
from ._openapi_limits import document_limits
from ._sse import resume_point, send_event_stream, send_journal_stream
from ._version import __version__
from .agents import agent_router
from .exceptions import OrbiterError
from .health import health_router
from .metrics import HTTPMetrics, TimedStore, open_metrics
from .models import ChatRequest, ChatResponse, DoneEvent, ErrorDetail, RunAccepted
from .playground import PlaygroundPage, RootFallback
from .protocols import agui_router, openai_router
from .providers import aclose_providers
from .registry import AgentRegistry, registered_agents
from .routing import MethodDecorators, Operation, Router
from .run_routes import run_router
from .runs import Run, RunItem, drain_on_signals, run_failure, start_chat, wait_for_end
from .security import (
    DEFAULT_PUBLIC_PATHS,
    idempotency_scope,
    keys_from_env,
    secure_openapi,
    security_middleware,
)
from .sessions import session_router
from .stores import SessionStore, open_store
from .stores.base import MAX_PAGE_SIZE
from .streaming import stream_router
from .tracing import tracing_middleware

if TYPE_CHECKING:
    from .metrics.prometheus import Metrics

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "OrbiterApp",
    "chat_router",
    "create_app",
    "register_agent",
    "registered_agents",
]

F = TypeVar("F", bound=Callable[..., Any])

_chat: Decoder[ChatRequest] = Decoder(ChatRequest)


class ChatEndpoint(Endpoint):
    """`POST /chat`: a `ChatResponse`, or SSE events when `stream` is true.

    With `Last-Event-ID: <run_id>:<n>` it resumes that run instead of
    starting one; with an `Idempotency-Key` seen before, it attaches to the
    run that key started; with `background`, a JSON request is answered 202
    at once and the run goes on by itself.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = get_context(scope)
        heartbeat = context.limits.heartbeat_interval
        request: ChatRequest
        request, body = await read_json_body(scope, receive, _chat, context.limits.max_body_size)
        last_event_id, key = _run_headers(scope)
        resume = resume_point(last_event_id) if last_event_id is not None else None
        if resume is not None:
            await _answer_run(send, context, *resume, stream=request.stream, heartbeat=heartbeat)
            return
        run = start_chat(context, request)
        if key:
            info = await run.open(
                idempotency_key=idempotency_scope(scope, key), fingerprint=hashlib.sha256(body).hexdigest()
            )
            if info.id != run.id:  # a repeat of an earlier request: its run answers
                await _answer_run(send, context, info.id, 0, stream=request.stream, heartbeat=heartbeat)
                return
        # else the run is recorded as it starts (`drive`), or before a background run is answered
        if request.stream:
            await send_event_stream(send, run, receive, heartbeat=heartbeat)
        elif request.background:
            if run.info is None:
                await run.open()  # recorded before its id is handed out
            context.spawn(_in_background(run))
            location = scope.get("root_path", "") + f"/runs/{run.id}"
            headers = [(b"location", location.encode()), (b"x-run-id", run.id.encode())]
            await send_json(send, encode(RunAccepted(run_id=run.id)), 202, headers)
        else:
            try:
                done = await run.drive(receive=receive)
            except OrbiterError as exc:
                exc.run_id = run.id
                raise
            if done is not None:  # else the client went away; nobody is left to answer
                try:  # noqa: SIM105 (contextlib.suppress costs three calls on every answer)
                    await _send_chat_response(send, done)
                except OSError:  # a client gone during the run's grace
                    pass


def _run_headers(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """`Last-Event-ID` and `Idempotency-Key` (the last of each), from one dict made in C."""
    headers = dict(scope["headers"])
    return headers.get(b"last-event-id"), headers.get(b"idempotency-key")


async def _in_background(run: Run) -> None:
    # emitting to no one still journals every event, for clients that follow the run
    with contextlib.suppress(Exception):  # how it failed is in its journal
        await run.drive(_nobody)


async def _nobody(item: RunItem, chunk: bytes) -> None:
    pass


def _send_chat_response(send: Send, done: DoneEvent) -> Awaitable[None]:
    """Send the `ChatResponse` of a run that ended with `done`: `send_json`'s awaitable."""
    response = ChatResponse(
        output=done.output,
        agent_name=done.agent_name,
        session_id=done.session_id,
        steps=done.steps,
        usage=done.usage,
        run_id=done.run_id,
    )
    assert done.run_id is not None
    return send_json(send, encode(response), headers=[(b"x-run-id", done.run_id.encode())])


async def _answer_run(
    send: Send, context: AppContext, run_id: str, after: int, *, stream: bool, heartbeat: float
) -> None:
    """Serve a run that already exists: its frames after `after`, or (for a
    JSON request) its answer, once it has ended."""
    journal = context.store.runs
    if stream:
        await send_journal_stream(send, journal, run_id, after, heartbeat=heartbeat)
        return
    info = await wait_for_end(journal, run_id)
    if info.status != "completed":
        raise run_failure(info)
    await _send_chat_response(send, DoneEvent.of_run(info))


chat_router = Router(
    [Route("/chat", ChatEndpoint(), methods=["POST"], name="chat")],
    operations=[
        Operation(
            method="post",
            path="/chat",
            summary="Run an agent: JSON, or SSE events when stream is true",
            request=ChatRequest,
            response=ChatResponse,
            responses={
                202: RunAccepted,
                400: ErrorDetail,
                404: ErrorDetail,
                410: ErrorDetail,
                502: ErrorDetail,
                503: ErrorDetail,
            },
            headers=[("Last-Event-ID", str, False), ("Idempotency-Key", str, False)],
            tags=["chat"],
            events=True,
        ),
    ],
)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    body = encode(ErrorDetail(str(exc.detail)))
    return Response(body, exc.status_code, headers, media_type="application/json")


def _matched_by(routes: Sequence[BaseRoute], method: str, path: str) -> bool:
    """Whether one of `routes` takes a request for `method` and `path` (a
    WebSocket when `method` is `websocket`)."""
    if method == "websocket":
        scope: Scope = {"type": "websocket", "path": path, "root_path": ""}
    else:
        scope = {"type": "http", "path": path, "root_path": "", "method": method}
    return any(route.matches(scope)[0] is Match.FULL for route in routes)


def _allowed_methods(request: Request) -> str:
    """Every method the path answers: Starlette names only those of the first
    route that matched the path, and one path has a route per method here."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] is Match.PARTIAL:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def _orbiter_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OrbiterError)
    return Response(error_body(exc), exc.status_code, media_type="application/json")


async def _server_error(request: Request, exc: Exception) -> Response:
    return Response(encode(ErrorDetail("Internal Server Error")), 500, media_type="application/json")


class OrbiterApp(MethodDecorators, Starlette):
    """A Starlette app serving agents, with FastAPI-style decorators.

    Build it with `create_app()`. Besides everything `Starlette` offers:
    `@app.get/post/put/patch/delete(path)`, `@app.websocket(path)`,
    `@app.middleware("http")`, `@app.exception_handler(...)` and
    `app.include_router(router, prefix=...)`.
    """

    def __init__(
        self,
        context: AppContext,
        routers: Sequence[Router],
        *,
        title: str,
        version: str,
        debug: bool = False,
        middleware: Sequence[Middleware] | None = None,
        lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
        secured: bool = False,
        public_paths: Sequence[str] = (),
        drain_on_signal: bool = True,
        docs_url: str | None = "/docs",
        redoc_url: str | None = "/redoc",
        metrics: Metrics | None = None,
        playground: bool = True,
    ) -> None:
        self.context = context
        self.metrics = metrics
        self.secured = secured
        self.public_paths = frozenset(public_paths)
        self.drain_on_signal = drain_on_signal
        self.title = title
        self.version = version
        self.operations: list[Operation] = []
        self._openapi: bytes | None = None
        self._direct_routes: dict[tuple[str, str], ASGIApp] | None = None
        self._user_lifespan = lifespan
        super().__init__(
            debug=debug,
            middleware=middleware,
            exception_handlers={
                HTTPException: _http_exception,
                OrbiterError: _orbiter_exception,
                Exception: _server_error,
            },
            lifespan=self._lifespan,
        )
        for router in routers:
            self.include_router(router)
        self.router.routes.append(Route("/openapi.json", _OpenAPIEndpoint(self), methods=["GET"]))
        for url, kind in ((docs_url, "swagger"), (redoc_url, "redoc")):
            if url is not None:
                self.router.routes.append(Route(url, DocsPage(kind, title=title), methods=["GET"]))
        if playground:
            page = PlaygroundPage()
            self.router.routes.append(Route("/playground", page, methods=["GET"]))
            # `/` only as a fallback: user routes added after create_app come first
            self.router.default = RootFallback(page, self.router.default)
        self._counted: HTTPMetrics | None = None
        if metrics is not None:
            self.router.routes.append(Route("/metrics", metrics.endpoint, methods=["GET"]))
            # outermost, around the whole stack: it sees every status, 401s and 500s too
            self._counted = HTTPMetrics(self._serve, metrics, self.router.routes)

    @property
    def agents(self) -> AgentRegistry:
        return self.context.agents

    @property
    def store(self) -> SessionStore:
        """The store the app was given (requests reach it through a timing
        proxy when metrics are on)."""
        store = self.context.store
        return store.wrapped if isinstance(store, TimedStore) else store

    def drain(self, grace: float | None = None) -> None:
        """Begin a graceful shutdown: refuse new turns (503, code `shutdown`) and
        end running ones after `grace` seconds (default: `grace_period`) with an
        `error` event of code `shutdown`. SIGTERM does this by itself while the
        app runs under a server that sends lifespan events."""
        self.context.guard.drain(grace)

    @asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[Any]:
        self.context.guard.resume()
        restore = drain_on_signals() if self.drain_on_signal else None
        try:
            if self._user_lifespan is not None:
                async with self._user_lifespan(app) as state:
                    yield state
            else:
                yield None
        finally:
            self.context.guard.drain(0)  # the server stopped waiting: end what is left
            if restore is not None:
                restore()
            await self.context.store.aclose()
            await aclose_providers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SCOPE_KEY] = self.context
        counted = self._counted
        if counted is not None and scope["type"] != "lifespan":
            await counted(scope, receive, send)
        else:
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "lifespan" and not self.user_middleware:
            # our own endpoints on fixed paths render their own errors: with no
            # middleware in between they skip Starlette's middleware and route scan
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            direct = self._direct_routes
            if direct is None:
                direct = self._direct_routes = self._fixed_path_endpoints()
            endpoint = direct.get((scope["method"] if kind == "http" else kind, path))
            if endpoint is not None:
                scope["app"] = self
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _fixed_path_endpoints(self) -> dict[tuple[str, str], ASGIApp]:
        """Our endpoints on fixed paths, by (method, or `websocket`, and path):
        each one the route scan would reach, no route before it matching first."""
        table: dict[tuple[str, str], ASGIApp] = {}
        routes = self.router.routes
        for index, route in enumerate(routes):
            if isinstance(route, Route) and isinstance(route.endpoint, Endpoint):
                keys = [(method, route.path) for method in route.methods or ()]
            elif isinstance(route, WebSocketRoute) and isinstance(route.endpoint, SocketEndpoint):
                keys = [("websocket", route.path)]
            else:
                continue
            if "{" in route.path:  # path parameters: left to the route scan
                continue
            for key in keys:
                if key not in table and not _matched_by(routes[:index], *key):
                    table[key] = route.endpoint
        return table

    def openapi(self) -> bytes:
        if self._openapi is None:
            document = openapi_document(self.operations, title=self.title, version=self.version)
            document_limits(document, self.context.limits)
            if self.secured:
                secure_openapi(document, self.public_paths)
            self._openapi = encode(document)
        return self._openapi

    # --- the FastAPI-style shim -------------------------------------------

    def include_router(self, router: Router, *, prefix: str = "") -> None:
        merged = Router()
        merged.include_router(router, prefix=prefix)
        self.router.routes.extend(merged.routes)
        self.operations.extend(merged.operations)
        self._openapi = None
        self._direct_routes = None

    def api_route(
        self, path: str, *, methods: Sequence[str], status_code: int = 200, summary: str | None = None
    ) -> Callable[[F], F]:
        def decorator(func: F) -> F:
            router = Router()
            router.add_api_route(path, func, methods=methods, status_code=status_code, summary=summary)
            self.include_router(router)
            return func

        return decorator

    def websocket(self, path: str) -> Callable[[F], F]:
        def decorator(func: F) -> F:
            router = Router()
            router.websocket(path)(func)
            self.include_router(router)
            return func

        return decorator

    def middleware(self, middleware_type: str) -> Callable[[F], F]:
        """`@app.middleware("http")`: `async def f(request, call_next) -> Response`."""
        assert middleware_type == "http", 'Only @app.middleware("http") is supported'

        def decorator(func: F) -> F:
            self.add_middleware(HTTPFunctionMiddleware, dispatch=func)
            return func

        return decorator

    def exception_handler(self, exc_class_or_status_code: int | type[Exception]) -> Callable[[F], F]:
        def decorator(func: F) -> F:
            self.add_exception_handler(exc_class_or_status_code, func)
            return func

        return decorator


class _OpenAPIEndpoint:
    def __init__(self, app: OrbiterApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, self.app.openapi())


def create_app(
    *,
    agents: Mapping[str, Any] | Sequence[Any] | AgentRegistry | None = None,
    store: str | SessionStore | None = None,
    title: str = "orbiter-asgi",
    version: str = __version__,
    debug: bool = False,
    max_body_size: int = DEFAULT_MAX_BODY,
    max_input_length: int = 100_000,
    max_ws_message_size: int = DEFAULT_MAX_BODY,
    max_session_id_length: int = 128,
    session_id_pattern: str = DEFAULT_SESSION_ID_PATTERN,
    max_page_size: int = MAX_PAGE_SIZE,
    max_json_depth: int = 32,
    max_concurrent_runs: int | None = 1024,
    run_timeout: float | None = 300.0,
    grace_period: float = 10.0,
    heartbeat_interval: float = 15.0,
    disconnect_grace: float = 5.0,
    run_retention: float = 600.0,
    max_run_journal_bytes: int = 8 * 1024 * 1024,
    api_keys: Sequence[str] | None = None,
    cors_origins: Sequence[str] | None = None,
    public_paths: Sequence[str] = DEFAULT_PUBLIC_PATHS,
    docs_url: str | None = "/docs",
    redoc_url: str | None = "/redoc",
    drain_on_signal: bool = True,
    middleware: Sequence[Middleware] | None = None,
    lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
    metrics: bool | None = None,
    tracing: bool | None = None,
    playground: bool = True,
) -> OrbiterApp:
    """Build the app: `/chat`, `/agents`, `/sessions`, `/stream`, `/ws/chat`,
    `/runs`, `/v1` (OpenAI), `/agents/{name}/ag-ui`, `/healthz`, `/readyz`,
    `/openapi.json`, `/docs`, `/redoc` and `/playground`.

    Parameters:
        agents: the agents to serve; by default the module-level registry that
            `register_agent("name", agent)` fills, read live, plus those
            registered on this app alone with `register_agent(app, agent)`.
        store: a `SessionStore` or a store URL (`memory://`, `sqlite:///path.db`,
            `redis://host:port/0`); by default `$ORBITER_STORE`, else `memory://`.
        max_body_size: largest request body, in bytes (413 beyond, unread).
        max_input_length: longest `input`, in characters (422 beyond).
        max_ws_message_size: largest WebSocket message, in bytes (closed with 1009 beyond).
        max_session_id_length, session_id_pattern: what a session id may be (400 otherwise).
        max_page_size: largest `?limit=` of `GET /sessions` (422 beyond).
        max_json_depth: deepest nesting of free JSON (`metadata`, tool arguments; 422 beyond).
        max_concurrent_runs: turns running at once in this app; beyond it a 503
            with `Retry-After` (an `overloaded` error event on a WebSocket). None: no limit.
        run_timeout: wall-clock seconds per turn; then a 504, or an `error` event
            of code `timeout` once streaming. None: no limit.
        grace_period: seconds running turns get to finish after SIGTERM (or
            `app.drain()`) before they end with an `error` event of code `shutdown`.
        heartbeat_interval: seconds of silence before an SSE comment heartbeat.
        disconnect_grace: seconds a run whose client left goes on, for a client
            that resumes it (`Last-Event-ID`, `/runs/{id}/events`); then it is
            cancelled. Background runs are never cancelled so.
        run_retention: seconds a run and its journal are kept after it ends.
        max_run_journal_bytes: the most of a run's events its journal keeps;
            older ones are dropped first (resuming from them is a 410).
        api_keys: keys accepted as `Authorization: Bearer <key>` or `X-API-Key`;
            by default `$ORBITER_API_KEYS` (comma-separated); empty: no auth.
        cors_origins: origins allowed by CORS (`["*"]` for any); None: no CORS.
        public_paths: paths served without a key (default: `/openapi.json`, with
            the pages that show it, `/healthz`, `/readyz` and `/playground`).
        docs_url, redoc_url: where Swagger UI and ReDoc show the OpenAPI
            document, as in FastAPI; None turns a page off.
        drain_on_signal: drain on SIGTERM/SIGINT while the lifespan runs.
        metrics: Prometheus metrics at `GET /metrics` (README: Monitoring); None:
            on when prometheus-client is installed (`orbiter-asgi[metrics]`).
        tracing: continue a caller's W3C `traceparent` in run spans (OpenTelemetry,
            `orbiter-asgi[otel]`). None: when an SDK is configured by the time the
            app is built; False: never. Runs are traced whenever an SDK is set.
        playground: the chat page at `GET /playground`, and at `/` when no route
            serves `/` (public, it holds no data); False turns it off.
    """
    if agents is None:
        registry = AgentRegistry(parent=registered_agents)  # its own, over the module's
    elif isinstance(agents, AgentRegistry):
        registry = agents
    else:
        registry = AgentRegistry(agents)
    if store is None:
        store = os.environ.get("ORBITER_STORE") or "memory://"
    session_store = open_store(store) if isinstance(store, str) else store
    limits = Limits(
        max_body_size=max_body_size,
        max_input_length=max_input_length,
        max_ws_message_size=max_ws_message_size,
        max_session_id_length=max_session_id_length,
        session_id_pattern=session_id_pattern,
        max_page_size=max_page_size,
        max_json_depth=max_json_depth,
        max_concurrent_runs=max_concurrent_runs,
        run_timeout=run_timeout,
        grace_period=grace_period,
        heartbeat_interval=heartbeat_interval,
        disconnect_grace=disconnect_grace,
        run_retention=run_retention,
        max_run_journal_bytes=max_run_journal_bytes,
    )
    keys = keys_from_env() if api_keys is None else list(api_keys)
    public = list(public_paths)
    if "/openapi.json" in public:  # the pages show nothing the document does not
        public += [url for url in (docs_url, redoc_url) if url is not None]
    stack = security_middleware(
        keys, cors_origins or (), public, public_root=playground and "/playground" in public
    )
    traced = [] if tracing is False else tracing_middleware(always=tracing is True)
    context = AppContext(registry, session_store, limits)
    store_kind = store if isinstance(store, str) else type(store).__name__.removesuffix("Store").lower()
    return OrbiterApp(
        context,
        [
            chat_router,
            agent_router,
            session_router,
            stream_router,
            run_router,
            health_router,
            openai_router,
            agui_router,
        ],
        title=title,
        version=version,
        debug=debug,
        middleware=[*traced, *stack, *(middleware or ())],
        lifespan=lifespan,
        secured=bool(keys),
        public_paths=public,
        drain_on_signal=drain_on_signal,
        docs_url=docs_url,
        redoc_url=redoc_url,
        metrics=open_metrics(context, metrics, store=store_kind),
        playground=playground,
    )


def register_agent(target: Any, agent: Any = None, /, *, default: bool = False) -> Any:
    """Register an agent; returns it.

    ```python
    register_agent("assistant", agent)             # the module registry
    register_agent(agent)                          # named by agent.name
    register_agent(app, agent, default=True)       # that app alone
    ```
    """
    if isinstance(target, OrbiterApp):
        if agent is None:
            raise TypeError("register_agent(app, agent) needs the agent")
        target.context.agents.register(agent, default=default)
        return agent
    if isinstance(target, str):
        if agent is None:
            raise TypeError("register_agent(name, agent) needs the agent")
        registered_agents.register(agent, name=target, default=default)
        return agent
    if agent is not None:
        raise TypeError("register_agent takes (name, agent), (app, agent) or (agent)")
    registered_agents.register(target, default=default)
    return target
