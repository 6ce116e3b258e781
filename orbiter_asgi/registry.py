"""The agent registry, and the adapters that give every agent one shape.

Whatever is registered (the built-in `Agent`, an object with an async
`stream` or `run`, a plain async function or async generator), the server
only ever sees a `RegisteredAgent` whose `stream(input, messages)` yields
events. Adapting happens once, at registration.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .exceptions import AgentError, AgentNotFound, NoAgentsRegistered
from .models import Message, TextEvent, ToolCallEvent, ToolResultEvent, Usage
from .runtime.agent import Agent
from .runtime.loop import AgentEvent, AgentItem, run_loop

__all__ = ["AgentRegistry", "RegisteredAgent", "adapt_agent", "registered_agents"]

StreamFn = Callable[..., AsyncIterator[AgentItem]]
"""`stream(input, messages)`: an agent's events; see `RegisteredAgent.takes_settings`."""

_EVENT_TYPES = (TextEvent, ToolCallEvent, ToolResultEvent, Usage)


def _accepts_messages(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "messages" or p.kind is p.VAR_KEYWORD for p in parameters)


def _as_event(item: Any) -> AgentEvent:
    if isinstance(item, str):
        return TextEvent(item)
    if isinstance(item, _EVENT_TYPES):
        return item
    raise AgentError(f"Agent yielded {type(item).__name__}; expected str or an event")


def _output_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    output = getattr(result, "output", None)
    if isinstance(output, str):
        return output
    if result is None:
        return ""
    raise AgentError(f"Agent returned {type(result).__name__}; expected str or an object with .output")


def _name_of(item: Any) -> str:
    """A tool's or handoff's name: given as a string, a named object or a function."""
    if isinstance(item, str):
        return item
    return str(getattr(item, "name", None) or getattr(item, "__name__", None) or repr(item))


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    return kind(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _from_generator(fn: Callable[..., Any]) -> StreamFn:
    with_messages = _accepts_messages(fn)

    async def stream(input: str, messages: Sequence[Message]) -> AsyncIterator[AgentEvent]:
        items = fn(input, messages=messages) if with_messages else fn(input)
        try:
            async for item in items:
                yield _as_event(item)
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    return stream


def _from_coroutine(fn: Callable[..., Any]) -> StreamFn:
    with_messages = _accepts_messages(fn)

    async def stream(input: str, messages: Sequence[Message]) -> AsyncIterator[AgentEvent]:
        result = await (fn(input, messages=messages) if with_messages else fn(input))
        usage = getattr(result, "usage", None)
        yield TextEvent(_output_text(result))
        if isinstance(usage, Usage):
            yield usage

    return stream


class RegisteredAgent:
    """An agent as the server sees it: metadata plus one `stream` form."""

    __slots__ = (
        "description",
        "handoffs",
        "history_limit",
        "instructions",
        "max_steps",
        "max_tokens",
        "model",
        "name",
        "stream",
        "takes_settings",
        "target",
        "temperature",
        "tools",
        "workspace",
    )

    def __init__(self, name: str, target: Any, stream: StreamFn) -> None:
        self.name = name
        self.target = target
        self.stream = stream
        # whether `stream` takes a request's model settings (`temperature`, `max_tokens`)
        # as keywords: the built-in `Agent` does; other agents run with their own
        self.takes_settings = False
        self.model: str = str(getattr(target, "model", None) or "custom")
        self.description: str = str(getattr(target, "description", None) or "")
        if not self.description and inspect.isroutine(target):
            self.description = inspect.getdoc(target) or ""
        self.instructions: str = str(getattr(target, "instructions", None) or "")
        # lists of tools or handoffs, or dicts of them by name (the original's Agent)
        self.tools: list[str] = [_name_of(t) for t in getattr(target, "tools", None) or ()]
        self.handoffs: list[str] = [_name_of(h) for h in getattr(target, "handoffs", None) or ()]
        self.max_steps: int = int(getattr(target, "max_steps", None) or 1)
        self.temperature: float | None = _number(getattr(target, "temperature", None), float)
        self.max_tokens: int | None = _number(getattr(target, "max_tokens", None), int)
        # the most history messages a turn shows the agent (runs/window.py); None: all
        self.history_limit: int | None = _number(getattr(target, "history_limit", None), int)
        workspace = getattr(target, "workspace", None)
        self.workspace: Path | None = Path(workspace) if workspace is not None else None


def adapt_agent(target: Any, name: str | None = None) -> RegisteredAgent:
    """Wrap anything the contract accepts as an agent; `TypeError` otherwise."""
    name = name or getattr(target, "name", None) or getattr(target, "__name__", None)
    if not isinstance(name, str) or not name:
        raise TypeError("An agent needs a name: pass one, or give the object a .name")
    stream_method = getattr(target, "stream", None)
    run_method = getattr(target, "run", None)
    if type(target) is Agent:
        # the built-in agent already yields the server's events, batches included:
        # no per-event check, no adapter layer, not even a Python frame
        entry = RegisteredAgent(name, target, functools.partial(run_loop, target))
        entry.takes_settings = True
        return entry
    if stream_method is not None and callable(stream_method):
        return RegisteredAgent(name, target, _from_generator(stream_method))
    if run_method is not None and inspect.iscoroutinefunction(run_method):
        return RegisteredAgent(name, target, _from_coroutine(run_method))
    if inspect.isasyncgenfunction(target):
        return RegisteredAgent(name, target, _from_generator(target))
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - async callable objects count too
    ):
        return RegisteredAgent(name, target, _from_coroutine(target))
    raise TypeError(
        f"Cannot serve {target!r} as an agent: give it an async stream(input, *, messages) "
        "or run(input, *, messages), or pass an async function or async generator"
    )


class AgentRegistry(Mapping[str, Any]):
    """Agents by name. As a mapping it shows what was registered, unwrapped.

    The default agent (used when a request names none) is the first one
    registered, unless another is registered with `default=True`.

    A registry with a `parent` also serves the parent's agents, live; its
    own shadow the parent's of the same name, and its own default, once it
    has agents, wins. Each app built without `agents=` has such a registry
    over `registered_agents`, so `register_agent(app, ...)` touches that app
    alone.
    """

    def __init__(
        self,
        agents: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        parent: AgentRegistry | None = None,
    ) -> None:
        self._agents: dict[str, RegisteredAgent] = {}
        self._default: str | None = None
        self._parent = parent
        self._changes = 0
        if isinstance(agents, Mapping):
            for agent_name, agent in agents.items():
                self.register(agent, name=agent_name)
        elif agents is not None:
            for agent in agents:
                self.register(agent)

    @property
    def version(self) -> int:
        """Grows with every change, the parent's included, so listings can be cached."""
        return self._changes + (self._parent.version if self._parent is not None else 0)

    def register(self, agent: Any, *, name: str | None = None, default: bool = False) -> RegisteredAgent:
        entry = adapt_agent(agent, name)
        self._agents[entry.name] = entry
        self._changes += 1
        if default or self._default is None:
            self._default = entry.name
        return entry

    def unregister(self, name: str) -> None:
        """Forget one of this registry's own agents (a parent's stay)."""
        self._agents.pop(name, None)
        self._changes += 1
        if self._default == name:
            self._default = next(iter(self._agents), None)

    def clear(self) -> None:
        self._agents.clear()
        self._changes += 1
        self._default = None

    def _find(self, name: str) -> RegisteredAgent | None:
        entry = self._agents.get(name)
        if entry is None and self._parent is not None:
            return self._parent._find(name)
        return entry

    def resolve(self, name: str | None) -> RegisteredAgent:
        """The named agent, or the default one when `name` is None.

        No agent registered at all is a 503, as in the original package: the
        server is not set up, whatever the request asked for.
        """
        key = self.default_name if name is None else name
        entry = self._agents.get(key) if key is not None else None  # own agents first, no call
        if entry is None and key is not None and self._parent is not None:
            entry = self._parent._find(key)
        if entry is None:
            if name is None or not self:
                raise NoAgentsRegistered("No agents registered")
            raise AgentNotFound(f"Agent {name!r} not found")
        return entry

    def entries(self) -> list[RegisteredAgent]:
        if self._parent is None:
            return list(self._agents.values())
        merged = {entry.name: entry for entry in self._parent.entries()}
        merged.update(self._agents)
        return list(merged.values())

    @property
    def default_name(self) -> str | None:
        if self._default is not None or self._parent is None:
            return self._default
        return self._parent.default_name

    def __getitem__(self, name: str) -> Any:
        entry = self._find(name)
        if entry is None:
            raise KeyError(name)
        return entry.target

    def __iter__(self) -> Iterator[str]:
        return iter([entry.name for entry in self.entries()])

    def __len__(self) -> int:
        if self._parent is None:
            return len(self._agents)
        return len(self.entries())

    def __repr__(self) -> str:
        return f"AgentRegistry({list(self)!r})"


registered_agents = AgentRegistry()
"""The module-level registry: `register_agent("name", agent)` fills it and
`create_app()` serves it, live, so agents registered later are seen too."""
