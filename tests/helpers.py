"""Small helpers shared by the tests."""

from __future__ import annotations

import json
from typing import Any

import httpx


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def sse_events(body: str) -> list[dict[str, Any] | str]:
    """The `data:` payloads of an SSE body, JSON-decoded except `[DONE]`."""
    events: list[dict[str, Any] | str] = []
    for block in body.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[6:]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
