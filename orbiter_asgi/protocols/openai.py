"""OpenAI's Chat Completions API over the run pipeline (being built)."""

from __future__ import annotations

from ..routing import Router

__all__ = ["openai_router"]

openai_router = Router([])
