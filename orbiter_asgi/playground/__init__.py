"""The playground: one self-contained HTML page to chat with the app's agents.

Served at `GET /playground`, and at `/` when no route of the app serves `/`
(`create_app(playground=False)` turns both off). The page is package data
with its CSS and JavaScript inline and no external URL, so it works offline;
it talks to the app's own API (`/agents`, `/sessions`, `/chat`, `/runs`)
with relative URLs, so it works under a `root_path` too.

The page holds no data, so it is public like `/openapi.json`: a browser loads
it and then asks for an API key when the API answers 401.

Its Content-Security-Policy allows nothing but the app itself (`connect-src
'self'`) and the page's one inline `<script>` and one inline `<style>`, by
their SHA-256 hashes, not `'unsafe-inline'`: injected markup cannot run.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["PlaygroundPage", "RootFallback", "serves_root"]

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def _csp(page: str) -> str:
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(page):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[tag].append(f"'sha256-{digest}'")
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(hashes["script"]),
            "style-src " + " ".join(hashes["style"]),
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


class PlaygroundPage:
    """An ASGI endpoint answering the playground page (read once, on first use)."""

    def __init__(self) -> None:
        self._response: tuple[bytes, list[tuple[bytes, bytes]]] | None = None

    def _load(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        if self._response is None:
            page = files(__name__).joinpath("index.html").read_text(encoding="utf-8")
            body = page.encode()
            headers = [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"content-security-policy", _csp(page).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"no-referrer"),
                (b"cache-control", b"no-cache"),
            ]
            self._response = body, headers
        return self._response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, headers = self._load()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def serves_root(routes: list[BaseRoute], method: str) -> bool:
    """Whether a route takes `method /` (fully or for another method: then it is
    that route's 405, not the playground)."""
    scope: Scope = {"type": "http", "path": "/", "root_path": "", "method": method}
    return any(route.matches(scope)[0] is not Match.NONE for route in routes)


class RootFallback:
    """The router's `default`: the playground for `GET`/`HEAD /`, which only
    reaches it when no route serves `/` (user routes are often added after
    `create_app`, and win); anything else goes on to `not_found`."""

    def __init__(self, page: PlaygroundPage, not_found: ASGIApp) -> None:
        self.page = page
        self.not_found = not_found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["type"] == "http" and path == "/" and scope["method"] in ("GET", "HEAD"):
            await self.page(scope, receive, send)
        else:
            await self.not_found(scope, receive, send)
