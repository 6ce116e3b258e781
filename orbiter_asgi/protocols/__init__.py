"""Protocols clients already speak, each one encoder over the one run pipeline.

- `openai`: OpenAI's Chat Completions (`GET /v1/models`, `POST /v1/chat/completions`).
- `agui`: AG-UI (`POST /agents/{name}/ag-ui`), for agent frontends.
"""

from __future__ import annotations

from .agui import agui_router
from .openai import openai_router

__all__ = ["agui_router", "openai_router"]
