"""The built-in `Agent`: a model, instructions and tools, run by `run_loop`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from ..models import Message, TextEvent, Usage
from ..providers import Provider, get_provider, split_model
from .loop import AgentEvent, run_loop
from .tools import Tool, as_tool

__all__ = ["Agent", "AgentResult"]


class AgentResult:
    """What `Agent.run` returns: the final text, steps and summed usage."""

    __slots__ = ("output", "steps", "usage")

    def __init__(self, output: str, steps: int, usage: Usage) -> None:
        self.output = output
        self.steps = steps
        self.usage = usage


class Agent:
    """An LLM agent: a model string, instructions, tools and limits.

    ```python
    agent = Agent(
        name="assistant",
        model="openai:gpt-4o",          # or "anthropic:...", "ollama:...", "echo"
        instructions="You are a helpful assistant.",
        tools=[get_weather],
    )
    ```

    `model` is `provider:name`; `echo` (the default) needs no network.
    `workspace` is a directory served read-only under
    `/agents/{name}/workspace`. `provider` overrides the shared provider of
    the model's prefix (tests pass one built on `httpx.MockTransport`).
    """

    def __init__(
        self,
        name: str,
        model: str = "echo",
        instructions: str = "",
        description: str = "",
        tools: Sequence[Tool | Callable[..., Any]] = (),
        max_steps: int = 10,
        temperature: float | None = None,
        max_tokens: int | None = None,
        workspace: str | Path | None = None,
        *,
        provider: Provider | None = None,
        history_limit: int | None = None,
    ) -> None:
        assert max_steps >= 1, "max_steps must be at least 1"
        assert history_limit is None or history_limit >= 0, "history_limit must be at least 0"
        split_model(model)  # fail at construction on a malformed model string
        self.name = name
        self.model = model
        self.instructions = instructions
        self.description = description
        self.tool_map: dict[str, Tool] = {t.name: t for t in map(as_tool, tools)}
        self.max_steps = max_steps
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.workspace = Path(workspace) if workspace is not None else None
        self.provider = provider
        self.history_limit = history_limit

    @property
    def tools(self) -> list[str]:
        return list(self.tool_map)

    def provider_and_model(self) -> tuple[Provider, str]:
        if self.provider is not None:
            return self.provider, split_model(self.model)[1]
        return get_provider(self.model)

    async def stream(
        self, input: str, *, messages: Sequence[Message] = ()
    ) -> AsyncIterator[AgentEvent]:
        """Events of one run: text, tool calls and results, and usage per step."""
        async for item in run_loop(self, input, messages):
            if type(item) is list:  # text deltas that were ready together
                for text in item:
                    yield TextEvent(text)
            else:
                yield item  # type: ignore[misc]

    async def run(self, input: str, *, messages: Sequence[Message] = ()) -> AgentResult:
        """Run to the end and return the final answer."""
        text: list[str] = []
        usage = Usage()
        steps = 0
        async for event in self.stream(input, messages=messages):
            if isinstance(event, TextEvent):
                text.append(event.content)
            elif isinstance(event, Usage):
                usage += event
                steps += 1
            else:
                text.clear()  # only the text after the last tool round is the answer
        return AgentResult("".join(text), max(steps, 1), usage)

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, model={self.model!r})"
