"""The model-provider interface: one streamed completion per call.

A provider is to the run loop what an httpx transport is to a client: it
turns one `ModelRequest` into an async stream of `TextEvent` deltas, complete
`ToolCallEvent`s (arguments already assembled and parsed) and one `Usage` at
the end of the call. A tool call whose arguments are not a JSON object comes
as an `InvalidToolCall`, so the loop can answer the model with an error
result instead of failing the run. Text deltas that are ready at once (all
those parsed from one network read, or all of an `echo` answer) may come as
one list of strings, in order: every layer above passes the list on whole
and makes no object per delta, so a batch costs one hop per layer instead of
one per word. (A list may also hold events; the run loop then splits it.) It
owns its HTTP connection pool and closes it in `aclose()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

import msgspec

from ..models import Message, TextEvent, ToolCallEvent, Usage

__all__ = ["InvalidToolCall", "ModelEvent", "ModelItem", "ModelRequest", "Provider", "ToolSpec"]


class ToolSpec(msgspec.Struct, kw_only=True, frozen=True):
    """A tool as the model sees it: a name, a description, a JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


class ModelRequest(msgspec.Struct, kw_only=True):
    """Everything one model call needs; provider-neutral."""

    model: str
    messages: list[Message]
    system: str | None = None
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    temperature: float | None = None
    max_tokens: int | None = None


class InvalidToolCall(msgspec.Struct, kw_only=True, frozen=True):
    """A tool call whose arguments did not parse; `error` says why."""

    id: str
    name: str
    raw_arguments: str
    error: str


ModelEvent = TextEvent | ToolCallEvent | InvalidToolCall | Usage
ModelItem = ModelEvent | list[str] | list[ModelEvent | str]  # what `Provider.stream` yields


@runtime_checkable
class Provider(Protocol):
    """Streams one completion. Implementations take keyword-only options."""

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelItem]: ...

    async def aclose(self) -> None: ...
