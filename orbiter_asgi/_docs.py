"""`/docs` (Swagger UI) and `/redoc`: the pages FastAPI users open first.

Like FastAPI's, each page is a few lines of HTML that load the viewer from
the jsDelivr CDN and point it at the app's OpenAPI document, under the
`root_path` the app is mounted at.
"""

from __future__ import annotations

import html
import json

from starlette.types import Receive, Scope, Send

__all__ = ["DocsPage"]

_SWAGGER = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({{
  url: {url},
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
}});
</script>
</body>
</html>
"""

_REDOC = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<div id="redoc"></div>
<script src="https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"></script>
<script>Redoc.init({url}, {{}}, document.getElementById("redoc"));</script>
</body>
</html>
"""

_TEMPLATES = {"swagger": _SWAGGER, "redoc": _REDOC}


class DocsPage:
    """An ASGI endpoint serving one viewer page of the document at `openapi_url`."""

    def __init__(self, kind: str, *, title: str, openapi_url: str = "/openapi.json") -> None:
        self.template = _TEMPLATES[kind]
        self.title = html.escape(title)
        self.openapi_url = openapi_url

    def render(self, root_path: str) -> bytes:
        # a JSON string is a JS string; `<` escaped so no `</script>` can close the tag
        url = json.dumps(root_path.rstrip("/") + self.openapi_url).replace("<", "\\u003c")
        return self.template.format(title=self.title, url=url).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.render(scope.get("root_path", ""))
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
