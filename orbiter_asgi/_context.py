"""What the endpoints of one app share: its agents, its store, its limits.

`create_app()` puts its context in every request's scope under
`"orbiter"`; a router mounted on its own, outside such an app, falls back to
the module-level context (the global agent registry and a memory store).
"""

from __future__ import annotations

from typing import Any

from starlette.types import Scope

from ._http import DEFAULT_MAX_BODY
from .registry import AgentRegistry, registered_agents
from .stores import MemoryStore, SessionStore

__all__ = ["SCOPE_KEY", "AppContext", "Limits", "default_context", "get_context"]

SCOPE_KEY = "orbiter"


class Limits:
    """Size limits; more arrive with the hardening work."""

    __slots__ = ("heartbeat_interval", "max_body_size", "max_ws_message_size")

    def __init__(
        self,
        *,
        max_body_size: int = DEFAULT_MAX_BODY,
        max_ws_message_size: int = DEFAULT_MAX_BODY,
        heartbeat_interval: float = 15.0,
    ) -> None:
        self.max_body_size = max_body_size
        self.max_ws_message_size = max_ws_message_size
        self.heartbeat_interval = heartbeat_interval


class AppContext:
    __slots__ = ("agents", "limits", "store")

    def __init__(self, agents: AgentRegistry, store: SessionStore, limits: Limits) -> None:
        self.agents = agents
        self.store = store
        self.limits = limits


default_context = AppContext(registered_agents, MemoryStore(), Limits())


def get_context(scope: Scope) -> AppContext:
    context: Any = scope.get(SCOPE_KEY)
    return context if context is not None else default_context
