"""AG-UI over the run pipeline (being built)."""

from __future__ import annotations

from ..routing import Router

__all__ = ["agui_router"]

agui_router = Router([])
