"""What the endpoints of one app share: its agents, its store, its limits.

`create_app()` puts its context in every request's scope under
`"orbiter"`; a router mounted on its own, outside such an app, falls back to
the module-level context (the global agent registry and a memory store).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.types import Scope

from ._codec import RequestValidationError
from ._http import DEFAULT_MAX_BODY
from .exceptions import RequestError
from .models import ValidationErrorItem
from .registry import AgentRegistry, registered_agents
from .runs import Run, RunGuard
from .stores import MemoryStore, SessionStore
from .stores.base import MAX_PAGE_SIZE

__all__ = [
    "DEFAULT_SESSION_ID_PATTERN",
    "SCOPE_KEY",
    "AppContext",
    "Limits",
    "default_context",
    "get_context",
]

SCOPE_KEY = "orbiter"

# letters, digits and `._:-`, but not only dots (`.` and `..` are not addressable in a URL)
DEFAULT_SESSION_ID_PATTERN = r"[A-Za-z0-9._:\-]*[A-Za-z0-9_:\-][A-Za-z0-9._:\-]*"


class Limits:
    """Every limit an app enforces; each is a keyword of `create_app()`.

    The defaults suit a server facing the internet; see `docs/hardening.md`.
    `0` or `None` for `run_timeout` and `max_concurrent_runs` means no limit.
    """

    __slots__ = (
        "_session_id",
        "disconnect_grace",
        "grace_period",
        "heartbeat_interval",
        "max_body_size",
        "max_concurrent_runs",
        "max_input_length",
        "max_json_depth",
        "max_page_size",
        "max_run_journal_bytes",
        "max_session_id_length",
        "max_ws_message_size",
        "run_retention",
        "run_timeout",
        "session_id_pattern",
    )

    def __init__(
        self,
        *,
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
    ) -> None:
        assert max_body_size > 0 and max_ws_message_size > 0 and max_input_length > 0
        assert max_session_id_length > 0 and max_page_size > 0 and 0 < max_json_depth <= 256
        assert grace_period >= 0 and disconnect_grace >= 0 and run_retention >= 0
        assert max_run_journal_bytes > 0
        self.max_body_size = max_body_size
        self.max_input_length = max_input_length
        self.max_ws_message_size = max_ws_message_size
        self.max_session_id_length = max_session_id_length
        self.session_id_pattern = session_id_pattern
        self._session_id = re.compile(session_id_pattern)
        self.max_page_size = max_page_size
        self.max_json_depth = max_json_depth
        self.max_concurrent_runs = max_concurrent_runs or None
        self.run_timeout = run_timeout if run_timeout and not math.isinf(run_timeout) else None
        self.grace_period = grace_period
        self.heartbeat_interval = heartbeat_interval
        self.disconnect_grace = disconnect_grace
        self.run_retention = run_retention
        self.max_run_journal_bytes = max_run_journal_bytes

    def check_session_id(self, session_id: str) -> str:
        """A 400 unless `session_id` matches the pattern and the length limit."""
        if len(session_id) > self.max_session_id_length or self._session_id.fullmatch(session_id) is None:
            raise RequestError(
                f"Invalid session id: use 1 to {self.max_session_id_length} characters "
                f"matching {self.session_id_pattern}"
            )
        return session_id

    def check_input(self, text: str, loc: str = "body", field: str = "input") -> str:
        """A 422 (FastAPI's `string_too_short` / `string_too_long`) when `input`
        (or `message`) is empty or too long."""
        if not text:
            item = ValidationErrorItem(
                loc=[loc, field], msg="String should have at least 1 character", type="string_too_short"
            )
            raise RequestValidationError([item])
        if len(text) > self.max_input_length:
            item = ValidationErrorItem(
                loc=[loc, field],
                msg=f"String should have at most {self.max_input_length} characters",
                type="string_too_long",
            )
            raise RequestValidationError([item])
        return text

    def check_depth(self, value: Any, field: str) -> None:
        """A 422 when free JSON (`metadata`, tool arguments) nests too deeply.

        Stored JSON is encoded again on every read; a depth bound keeps that
        far from the interpreter's recursion limit.
        """
        if _depth_exceeds(value, self.max_json_depth):
            item = ValidationErrorItem(
                loc=["body", field],
                msg=f"JSON should nest at most {self.max_json_depth} levels deep",
                type="value_error",
            )
            raise RequestValidationError([item])


def _depth_exceeds(value: Any, budget: int) -> bool:
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    if budget == 0:
        return True
    return any(_depth_exceeds(child, budget - 1) for child in children)


class AppContext:
    __slots__ = ("_background", "agents", "guard", "limits", "run_observers", "store")

    def __init__(self, agents: AgentRegistry, store: SessionStore, limits: Limits) -> None:
        self.agents = agents
        self.store = store
        self.limits = limits
        self.guard = RunGuard(limits)
        self._background: set[asyncio.Task[Any]] = set()
        # called with each run of the app as it ends (its record says how): metrics and such
        self.run_observers: list[Callable[[Run], None]] = []

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` (a background run) in a task of its own; the guard's
        drain ends it with the others at shutdown."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio: nothing would own the task
            work.close()
            raise RequestError("Background runs need an asyncio server (uvicorn, hypercorn)") from None
        task = loop.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


default_context = AppContext(registered_agents, MemoryStore(), Limits())


def get_context(scope: Scope) -> AppContext:
    context: Any = scope.get(SCOPE_KEY)
    return context if context is not None else default_context
