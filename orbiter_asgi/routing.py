"""The FastAPI-style shim: `Router` and the decorators that build routes.

Routes are plain Starlette `Route`/`WebSocketRoute` objects; decorators such
as `@router.get("/health")` only build them. A decorated function receives
its parameters by name, the way FastAPI passes them:

- `request: Request` / `websocket: WebSocket` by annotation or name,
- path parameters, then query parameters, converted to their annotation,
- a parameter annotated with a `msgspec.Struct` decoded from the JSON body.

Whatever it returns that is not a `Response` is sent as JSON.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar, get_type_hints

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.routing import Router as StarletteRouter
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from ._codec import Decoder, RequestValidationError, encode
from ._context import get_context
from ._http import read_body
from .models import ValidationErrorItem

__all__ = ["MethodDecorators", "Operation", "Router"]

F = TypeVar("F", bound=Callable[..., Any])

_MISSING = object()


class Operation(msgspec.Struct, kw_only=True):
    """What the OpenAPI document says of one method on one path."""

    method: str
    path: str
    summary: str = ""
    request: Any = None
    response: Any = None
    status: int = 200
    query: list[tuple[str, Any, bool]] = msgspec.field(default_factory=list)
    headers: list[tuple[str, Any, bool]] = msgspec.field(default_factory=list)
    responses: dict[int, Any] = msgspec.field(default_factory=dict)
    tags: list[str] = msgspec.field(default_factory=list)
    media_type: str = "application/json"
    # also answers `text/event-stream`: of the run's `Event`s when True, else of this type
    events: Any = False


class JSONContent(Response):
    """A JSON response encoded with msgspec (structs, dicts, lists)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode(content)


def _convert(value: str, annotation: Any, loc: list[str | int]) -> Any:
    if annotation in (inspect.Parameter.empty, Any, str):
        return value
    try:
        return msgspec.convert(value, annotation, strict=False)
    except msgspec.ValidationError as exc:
        item = ValidationErrorItem(loc=loc, msg=str(exc), type="type_error")
        raise RequestValidationError([item]) from None


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return get_type_hints(func)
    except NameError:  # a hint names a local class; use what can be used
        return dict(getattr(func, "__annotations__", {}))


def _request_endpoint(func: Callable[..., Any], status_code: int) -> Callable[[Request], Awaitable[Response]]:
    hints = _hints(func)
    parameters = list(inspect.signature(func).parameters.values())
    is_async = inspect.iscoroutinefunction(func)
    body_params = [
        p for p in parameters
        if isinstance(hints.get(p.name), type) and issubclass(hints[p.name], msgspec.Struct)
    ]
    decoders = {p.name: Decoder(hints[p.name]) for p in body_params}

    async def endpoint(request: Request) -> Response:
        kwargs: dict[str, Any] = {}
        body: bytes | None = None
        for param in parameters:
            annotation = hints.get(param.name, param.annotation)
            if annotation is Request or param.name == "request":
                kwargs[param.name] = request
            elif param.name in decoders:
                if body is None:
                    limit = get_context(request.scope).limits.max_body_size
                    body = await read_body(request.scope, request.receive, limit)
                kwargs[param.name] = decoders[param.name].decode(body)
            elif param.name in request.path_params:
                kwargs[param.name] = request.path_params[param.name]
            elif param.name in request.query_params:
                loc: list[str | int] = ["query", param.name]
                kwargs[param.name] = _convert(request.query_params[param.name], annotation, loc)
            elif param.default is param.empty:
                item = ValidationErrorItem(loc=["query", param.name], msg="Field required", type="missing")
                raise RequestValidationError([item])
        result = await func(**kwargs) if is_async else await run_in_threadpool(func, **kwargs)
        if isinstance(result, Response):
            return result
        return JSONContent(result, status_code=status_code)

    endpoint.__name__ = func.__name__
    return endpoint


def _websocket_endpoint(func: Callable[..., Awaitable[None]]) -> Callable[[WebSocket], Awaitable[None]]:
    parameters = list(inspect.signature(func).parameters.values())

    async def endpoint(websocket: WebSocket) -> None:
        kwargs: dict[str, Any] = {}
        for param in parameters:
            if param.name in websocket.path_params:
                kwargs[param.name] = websocket.path_params[param.name]
            elif param.name in websocket.query_params:
                kwargs[param.name] = websocket.query_params[param.name]
            elif param.default is param.empty:
                kwargs[param.name] = websocket
        await func(**kwargs)

    endpoint.__name__ = func.__name__
    return endpoint


def prefixed(route: BaseRoute, prefix: str) -> BaseRoute:
    """A copy of `route` under `prefix`."""
    if not prefix:
        return route
    if isinstance(route, Route):
        return Route(
            prefix + route.path,
            route.endpoint,
            methods=sorted(route.methods) if route.methods else None,
            name=route.name,
            include_in_schema=route.include_in_schema,
        )
    if isinstance(route, WebSocketRoute):
        return WebSocketRoute(prefix + route.path, route.endpoint, name=route.name)
    raise TypeError(f"Cannot prefix {route!r}; mount it instead")


class MethodDecorators:
    """`.get/.post/.put/.patch/.delete(path)`, all built on `api_route`."""

    def api_route(
        self, path: str, *, methods: Sequence[str], status_code: int = 200, summary: str | None = None
    ) -> Callable[[F], F]:
        raise NotImplementedError

    def get(self, path: str, **options: Any) -> Callable[[F], F]:
        return self.api_route(path, methods=["GET"], **options)

    def post(self, path: str, **options: Any) -> Callable[[F], F]:
        return self.api_route(path, methods=["POST"], **options)

    def put(self, path: str, **options: Any) -> Callable[[F], F]:
        return self.api_route(path, methods=["PUT"], **options)

    def patch(self, path: str, **options: Any) -> Callable[[F], F]:
        return self.api_route(path, methods=["PATCH"], **options)

    def delete(self, path: str, **options: Any) -> Callable[[F], F]:
        return self.api_route(path, methods=["DELETE"], **options)


class Router(MethodDecorators):
    """A list of routes with their OpenAPI operations, like FastAPI's `APIRouter`.

    ```python
    router = Router(prefix="/v1")

    @router.get("/health")
    async def health():
        return {"status": "ok"}

    app.include_router(router)          # or Mount("/x", app=router) anywhere
    ```
    """

    def __init__(
        self,
        routes: Sequence[BaseRoute] = (),
        *,
        prefix: str = "",
        operations: Sequence[Operation] = (),
        tags: Sequence[str] = (),
    ) -> None:
        assert not prefix or (prefix.startswith("/") and not prefix.endswith("/")), (
            "A prefix must start with '/' and not end with '/'"
        )
        self.prefix = prefix
        self.tags = list(tags)
        self.routes: list[BaseRoute] = list(routes)
        self.operations: list[Operation] = list(operations)
        self._asgi: StarletteRouter | None = None

    def __iter__(self) -> Iterator[BaseRoute]:
        return iter(self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the routes on their own, e.g. as `Mount("/api", app=router)`."""
        if self._asgi is None:
            self._asgi = StarletteRouter([prefixed(r, self.prefix) for r in self.routes])
        await self._asgi(scope, receive, send)

    def add_api_route(
        self,
        path: str,
        func: Callable[..., Any],
        *,
        methods: Sequence[str],
        status_code: int = 200,
        summary: str | None = None,
    ) -> None:
        self._asgi = None
        self.routes.append(
            Route(path, _request_endpoint(func, status_code), methods=list(methods), name=func.__name__)
        )
        hints = _hints(func)
        doc = summary if summary is not None else (inspect.getdoc(func) or "").split("\n\n")[0]
        for method in methods:
            self.operations.append(
                Operation(
                    method=method.lower(),
                    path=path,
                    summary=doc,
                    response=hints.get("return"),
                    status=status_code,
                    tags=self.tags,
                )
            )

    def api_route(
        self, path: str, *, methods: Sequence[str], status_code: int = 200, summary: str | None = None
    ) -> Callable[[F], F]:
        def decorator(func: F) -> F:
            self.add_api_route(path, func, methods=methods, status_code=status_code, summary=summary)
            return func

        return decorator

    def websocket(self, path: str) -> Callable[[F], F]:
        def decorator(func: F) -> F:
            self._asgi = None
            self.routes.append(WebSocketRoute(path, _websocket_endpoint(func), name=func.__name__))
            return func

        return decorator

    def include_router(self, router: Router, *, prefix: str = "") -> None:
        """Copy another router's routes in, under `prefix` + its own prefix."""
        self._asgi = None
        full = prefix + router.prefix
        self.routes.extend(prefixed(r, full) for r in router.routes)
        self.operations.extend(
            msgspec.structs.replace(op, path=full + op.path) for op in router.operations
        )
