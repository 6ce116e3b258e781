"""API-key authentication as pure ASGI middleware, and CORS.

Both are off by default and installed by `create_app(api_keys=...,
cors_origins=...)`:

```python
app = create_app(api_keys=["k-123"], cors_origins=["https://app.example"])
# curl -H "Authorization: Bearer k-123" ...   or   -H "X-API-Key: k-123"
```

Keys are compared in constant time (on their SHA-256 digests, so neither
the content nor the length of a key leaks through timing). HTTP requests
without a valid key get a 401 with `WWW-Authenticate: Bearer`; a WebSocket
handshake is refused before it is accepted: with that same 401 when the
server supports the ASGI WebSocket denial-response extension, else with a
`websocket.close` (code 1008), which servers answer with a 403.

Under `/v1/` (OpenAI's API, `orbiter_asgi.protocols.openai`) the 401 body is
OpenAI's `{"error": {..., "code": "invalid_api_key"}}`, so OpenAI's SDKs
raise their `AuthenticationError`.

What stays public, `DEFAULT_PUBLIC_PATHS`: `/openapi.json`, which
describes the API and holds no data, and clients and tools are generated
from it (and with it `/docs` and `/redoc`, which only show it); and the
health checks `/healthz` and `/readyz` (`health.py`), since load balancers
and Kubernetes probes send no key, and they tell only whether this worker
is up and ready; and the playground page `/playground` (`orbiter_asgi.playground`),
which holds no data and asks for a key itself (with it `/` while the
playground answers there, no route of the app serving it). `public_paths`
is taken as given: a list of your own replaces the defaults, so add them to it
(`public_paths=[*DEFAULT_PUBLIC_PATHS, "/status"]`) to keep probes
working; `public_paths=()` locks everything. CORS preflight
(`OPTIONS` with `Access-Control-Request-Method`) never needs a key; browsers
do not send one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import msgspec
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ._codec import encode
from .models import ErrorDetail
from .playground import serves_root

__all__ = [
    "API_KEYS_ENV",
    "DEFAULT_PUBLIC_PATHS",
    "APIKeyMiddleware",
    "cors_middleware",
    "idempotency_scope",
    "keys_from_env",
    "secure_openapi",
    "security_middleware",
]

API_KEYS_ENV = "ORBITER_API_KEYS"
DEFAULT_PUBLIC_PATHS = ("/openapi.json", "/healthz", "/readyz", "/playground")


def _openai_unauthorized(message: str) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    return encode({"error": error})


_MISSING = encode(ErrorDetail("Not authenticated: send Authorization: Bearer <key> or X-API-Key"))
_INVALID = encode(ErrorDetail("Invalid API key"))
_OPENAI_MISSING = _openai_unauthorized("You didn't provide an API key: send Authorization: Bearer <key>")
_OPENAI_INVALID = _openai_unauthorized("Incorrect API key provided")
_REF = "#/components/schemas/{name}"
_CHALLENGE = b'Bearer realm="orbiter"'
_CHALLENGE_INVALID = b'Bearer realm="orbiter", error="invalid_token"'


def idempotency_scope(scope: Scope, key: bytes) -> str:
    """An `Idempotency-Key` as stored: scoped to the API key that sent it, if
    any, so one client's keys never attach to another's runs."""
    presented = _presented_key(scope)
    owner = hashlib.sha256(presented).hexdigest()[:32] if presented else "-"
    return f"{owner}:{key.decode('latin-1')}"


def _presented_key(scope: Scope) -> bytes | None:
    bearer: bytes | None = None
    api_key: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer":
                bearer = credentials.strip()
        elif name == b"x-api-key":
            api_key = value.strip()
    return bearer if bearer is not None else api_key


def keys_from_env(environ: Any = None) -> list[str]:
    """`ORBITER_API_KEYS`, comma-separated; blanks ignored."""
    raw = (environ if environ is not None else os.environ).get(API_KEYS_ENV, "")
    return [key.strip() for key in raw.split(",") if key.strip()]


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class APIKeyMiddleware:
    """Lets a request through only with one of `api_keys`.

    Accepts `Authorization: Bearer <key>` and `X-API-Key: <key>`. Lifespan
    events, `public_paths` and CORS preflights pass untouched; with
    `public_root`, so does `GET`/`HEAD /` while no route of the app serves it
    (the playground answers it then).
    """

    def __init__(
        self,
        app: ASGIApp,
        api_keys: Iterable[str],
        public_paths: Collection[str] = DEFAULT_PUBLIC_PATHS,
        public_root: bool = False,
    ) -> None:
        self.app = app
        self.public_root = public_root
        self._digests = [_digest(key.encode()) for key in api_keys]
        assert self._digests, "APIKeyMiddleware needs at least one key"
        self.public_paths = frozenset(public_paths)

    def _valid(self, presented: bytes) -> bool:
        digest = _digest(presented)
        valid = False
        for known in self._digests:  # no early exit: every key is compared
            valid |= hmac.compare_digest(digest, known)
        return valid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or _app_path(scope) in self.public_paths:
            await self.app(scope, receive, send)
            return
        if kind == "http" and scope["method"] == "OPTIONS" and _is_preflight(scope):
            await self.app(scope, receive, send)
            return
        if self.public_root and kind == "http" and self._playground_root(scope):
            await self.app(scope, receive, send)
            return
        presented = _presented_key(scope)
        if presented is not None and self._valid(presented):
            await self.app(scope, receive, send)
            return
        body, challenge = (_MISSING, _CHALLENGE) if presented is None else (_INVALID, _CHALLENGE_INVALID)
        if _app_path(scope).startswith("/v1/"):  # OpenAI's API: its clients read OpenAI's shape
            body = _OPENAI_MISSING if presented is None else _OPENAI_INVALID
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", challenge),
        ]
        if kind == "http":
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "Not authenticated"})

    @staticmethod
    def _playground_root(scope: Scope) -> bool:
        # `/` is public only while the playground answers it: once a route serves `/`, it is locked
        method = scope["method"]
        if method not in ("GET", "HEAD") or _app_path(scope) != "/":
            return False
        app = scope.get("app")
        routes = getattr(getattr(app, "router", None), "routes", None)
        return routes is not None and not serves_root(routes, method)


def _app_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _is_preflight(scope: Scope) -> bool:
    names = {name for name, _ in scope["headers"]}
    return b"origin" in names and b"access-control-request-method" in names


def cors_middleware(origins: Sequence[str]) -> Middleware:
    """Starlette's CORS middleware for an allow-list of origins (`["*"]` for any)."""
    return Middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "X-API-Key", "Content-Type", "Last-Event-ID"],
        expose_headers=["X-Next-Cursor", "Link", "Retry-After"],
    )


def security_middleware(
    api_keys: Sequence[str],
    cors_origins: Sequence[str],
    public_paths: Collection[str] = DEFAULT_PUBLIC_PATHS,
    *,
    public_root: bool = False,
) -> list[Middleware]:
    """CORS outermost (so a 401 still carries CORS headers), then the key check."""
    stack: list[Middleware] = []
    if cors_origins:
        stack.append(cors_middleware(cors_origins))
    if api_keys:
        middleware = Middleware(
            APIKeyMiddleware, api_keys=list(api_keys), public_paths=public_paths, public_root=public_root
        )
        stack.append(middleware)
    return stack


def secure_openapi(document: dict[str, Any], public_paths: Collection[str] = ()) -> dict[str, Any]:
    """Declare the key schemes, require one of them, and document the 401,
    except on `public_paths`, whose operations need no key."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    if "ErrorDetail" not in schemas:
        (_,), extra = msgspec.json.schema_components([ErrorDetail], ref_template=_REF)
        schemas.update(extra)
    components["securitySchemes"] = {
        "bearerAuth": {"type": "http", "scheme": "bearer"},
        "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    document["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
    unauthorized = {
        "description": "Missing or invalid API key",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}},
    }
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            if path in public_paths:
                operation["security"] = []  # overrides the document's requirement
            else:
                operation["responses"].setdefault("401", unauthorized)
    return document
