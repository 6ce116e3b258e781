"""The tool-calling run loop: model call, tools, results fed back, repeat.

It yields the contract's events as they happen, plus one `Usage` per model
call (a step); the caller sums usage and counts steps. The provider's stream
is closed explicitly when the run stops early, so a cancelled
run closes the upstream HTTP request at once instead of when the garbage
collector gets to it. A tool's failure, unknown tool or unparsable arguments
go back to the model as an `is_error` result; only provider failures and the
step limit end the run with an error. Text deltas a provider yields as one
list are passed on as that list, untouched: a streamed answer costs the loop
one step per batch, not per word.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from ..exceptions import MaxStepsExceeded, ProviderError
from ..models import Message, TextEvent, ToolCall, ToolCallEvent, ToolResultEvent, Usage
from ..providers.base import InvalidToolCall, ModelEvent, ModelRequest
from ..tracing import ChatSpan, tracer
from .tools import Tool

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["AgentEvent", "AgentItem", "run_loop", "tool_message"]

AgentEvent = TextEvent | ToolCallEvent | ToolResultEvent | Usage
AgentItem = AgentEvent | list[str]  # a list: text deltas that were ready together

_encode = msgspec.json.Encoder().encode


def tool_message(result: ToolResultEvent) -> Message:
    """A tool's result as the history message that answers the model's call."""
    return Message(
        role="tool",
        content=result.content,
        tool_call_id=result.id,
        name=result.name,
        is_error=result.is_error,
    )


def _tool_output(value: Any) -> str:
    if isinstance(value, str):
        return value
    return _encode(value).decode()


async def _call_tool(
    tools: dict[str, Tool], call: ToolCallEvent, invalid: InvalidToolCall | None
) -> ToolResultEvent:
    if invalid is not None:
        return ToolResultEvent(
            id=call.id,
            name=call.name,
            content=f"Invalid arguments for {call.name}: {invalid.error}. "
            "Call the tool again with a JSON object.",
            is_error=True,
        )
    tool = tools.get(call.name)
    if tool is None:
        return ToolResultEvent(
            id=call.id, name=call.name, content=f"Unknown tool {call.name!r}", is_error=True
        )
    try:
        content = _tool_output(await tool(call.arguments))
    except Exception as exc:  # a tool's failure goes back to the model, not to the client
        return ToolResultEvent(
            id=call.id, name=call.name, content=f"{type(exc).__name__}: {exc}", is_error=True
        )
    return ToolResultEvent(id=call.id, name=call.name, content=content)


async def _call_tools(
    tools: dict[str, Tool],
    calls: Sequence[ToolCallEvent],
    invalid: dict[str, InvalidToolCall],
) -> list[ToolResultEvent]:
    if len(calls) == 1:
        return [await _call_tool(tools, calls[0], invalid.get(calls[0].id))]
    results: list[ToolResultEvent | None] = [None] * len(calls)

    async def call_one(index: int, call: ToolCallEvent) -> None:
        results[index] = await _call_tool(tools, call, invalid.get(call.id))

    async with anyio.create_task_group() as group:
        for index, call in enumerate(calls):
            group.start_soon(call_one, index, call)
    return [r for r in results if r is not None]


def _split(items: list[Any]) -> list[Any]:
    """A list that holds events too, as runs of text deltas and single events, in order."""
    parts: list[Any] = []
    text: list[str] = []
    for item in items:
        if isinstance(item, str) or type(item) is TextEvent:
            text.append(item if isinstance(item, str) else item.content)
            continue
        if text:
            parts.append(text)
            text = []
        parts.append(item)
    if text:
        parts.append(text)
    return parts


class _Step:
    """What one model call said so far: its text and its tool calls."""

    __slots__ = ("calls", "invalid", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: list[ToolCallEvent] = []
        self.invalid: dict[str, InvalidToolCall] = {}

    def accept(self, event: ModelEvent) -> AgentEvent:
        """Record `event`; returns what the loop passes on for it."""
        # exact type checks: the hot path of every streamed token
        kind = type(event)
        if kind is TextEvent:
            self.text.append(event.content)  # type: ignore[union-attr]
            return event  # type: ignore[return-value]
        if kind is ToolCallEvent:
            self.calls.append(event)  # type: ignore[arg-type]
            return event  # type: ignore[return-value]
        if kind is Usage:
            return event  # type: ignore[return-value]
        if isinstance(event, InvalidToolCall):
            self.invalid[event.id] = event
            call = ToolCallEvent(id=event.id, name=event.name)
            self.calls.append(call)
            return call
        raise ProviderError(
            f"Model provider yielded {kind.__name__}; expected a text, tool call or usage event"
        )

    def content(self) -> str:
        return "".join(self.text)


async def run_loop(
    agent: Agent,
    input: str,
    messages: Sequence[Message],
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> AsyncIterator[AgentItem]:
    """Run `agent` on `input` after `messages`; yields events as they come,
    and lists of the text deltas that came together. `temperature` and
    `max_tokens` override the agent's own for this run (a request's settings)."""
    provider, model_name = agent.provider_and_model()
    history = [*messages, Message(role="user", content=input)]
    tools = agent.tool_map
    specs = [t.spec for t in tools.values()]
    tracer_ = tracer()  # None unless an OpenTelemetry SDK records spans
    for _ in range(agent.max_steps):
        request = ModelRequest(
            model=model_name,
            messages=history,
            system=agent.instructions or None,
            tools=specs,
            temperature=agent.temperature if temperature is None else temperature,
            max_tokens=agent.max_tokens if max_tokens is None else max_tokens,
        )
        step = _Step()
        events = provider.stream(request)
        if tracer_ is not None:  # a `chat {model}` span around the call
            events = ChatSpan.start(tracer_, agent.model, request, events)
        try:
            async for item in events:
                if type(item) is not list:
                    yield step.accept(item)  # type: ignore[arg-type]
                    continue
                try:
                    # joined in C, text deltas are checked and recorded at once
                    step.text.append("".join(item))  # type: ignore[arg-type]
                except TypeError:  # a list that holds events too (from a custom provider)
                    for part in _split(item):
                        if type(part) is list:
                            step.text += part
                            yield part
                        else:
                            yield step.accept(part)
                    continue
                if item:  # text deltas: passed on whole, no work per delta
                    yield item  # type: ignore[misc]
        finally:
            # close the provider's stream now, so a cancelled run ends its HTTP request
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        calls, invalid = step.calls, step.invalid
        if not calls:
            return
        history.append(
            Message(
                role="assistant",
                content=step.content(),
                tool_calls=[ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in calls],
            )
        )
        for result in await _call_tools(tools, calls, invalid):
            yield result
            history.append(tool_message(result))
    raise MaxStepsExceeded(
        f"Agent {agent.name!r} hit its step limit (max_steps={agent.max_steps}): the model "
        "was still calling tools and gave no final answer"
    )
