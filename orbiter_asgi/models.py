"""Wire types: every body the server reads or writes, as a msgspec struct.

Requests decode with the typed decoders in `orbiter_asgi._codec`; responses
and stream events encode with its one shared encoder.

Structs whose fields are strings, numbers and other such structs are
declared `gc=False`: they cannot be part of a reference cycle, so the
garbage collector need not track them. A streamed answer makes one
`TextEvent` per word; untracked, they are cheaper to make and do not
trigger collections.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

__all__ = [
    "AgentDetail",
    "AgentInfo",
    "ChatRequest",
    "ChatResponse",
    "DoneEvent",
    "ErrorDetail",
    "ErrorEvent",
    "Event",
    "Message",
    "Role",
    "Session",
    "SessionCreate",
    "SessionSummary",
    "SessionUpdate",
    "TextEvent",
    "ToolCall",
    "ToolCallEvent",
    "ToolResultEvent",
    "Usage",
    "ValidationErrorItem",
    "ValidationErrorResponse",
    "WorkspaceFile",
]

Role = Literal["system", "user", "assistant", "tool"]


class Usage(msgspec.Struct, kw_only=True, gc=False):
    """Token counts of one model call, or summed over a run."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class ChatRequest(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Body of `POST /chat` and of each WebSocket turn.

    `message` is the original package's name for `input`; either may be sent.
    """

    input: str | None = None
    agent_name: str | None = None
    session_id: str | None = None
    stream: bool = False
    message: str | None = None

    def __post_init__(self) -> None:
        if self.input is None:
            if self.message is None:
                raise ValueError("Object missing required field `input`")
            self.input = self.message


class ChatResponse(msgspec.Struct, kw_only=True, gc=False):
    """Body of a non-streamed `POST /chat`."""

    output: str
    agent_name: str
    session_id: str | None = None
    steps: int = 1
    usage: Usage = msgspec.field(default_factory=Usage)


class ToolCall(msgspec.Struct, kw_only=True):
    """A tool call the model asked for, as stored in an assistant message."""

    id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One entry of a session's history.

    Assistant messages may carry `tool_calls`; `tool` messages answer one call
    by `tool_call_id`. This shape replays on both OpenAI and Anthropic.
    """

    role: Role
    content: str = ""
    created_at: datetime | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False


class SessionCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /sessions`; `id` lets a client choose the session id."""

    agent_name: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None


class SessionUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of `PATCH /sessions/{id}`: only the fields sent are changed."""

    agent_name: str | msgspec.UnsetType | None = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class Session(msgspec.Struct, kw_only=True):
    """A session with its whole history."""

    id: str
    agent_name: str | None
    metadata: dict[str, Any]
    messages: list[Message]
    created_at: datetime
    updated_at: datetime


class SessionSummary(msgspec.Struct, kw_only=True):
    """A session in a listing: everything but the messages."""

    id: str
    agent_name: str | None
    metadata: dict[str, Any]
    message_count: int
    created_at: datetime
    updated_at: datetime


class AgentInfo(msgspec.Struct, kw_only=True):
    """An agent in `GET /agents`."""

    name: str
    model: str
    description: str


class AgentDetail(msgspec.Struct, kw_only=True):
    """`GET /agents/{name}`."""

    name: str
    model: str
    description: str
    instructions: str
    tools: list[str]
    max_steps: int


class WorkspaceFile(msgspec.Struct, kw_only=True):
    """A file in an agent's workspace; `path` is relative and uses `/`."""

    path: str
    size: int
    modified_at: datetime


class ErrorDetail(msgspec.Struct, gc=False):
    """`{"detail": "..."}`, the FastAPI error body."""

    detail: str


class ValidationErrorItem(msgspec.Struct, kw_only=True):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(msgspec.Struct):
    """A 422 body: where and why the request did not match its struct."""

    detail: list[ValidationErrorItem]


# --- stream events ---------------------------------------------------------
# One vocabulary for SSE, WebSocket and the Python API, tagged by `type`.


class TextEvent(msgspec.Struct, tag="text", tag_field="type", gc=False):
    """A text delta."""

    content: str


class ToolCallEvent(msgspec.Struct, tag="tool_call", tag_field="type", kw_only=True):
    """The model calls a tool; `arguments` are already parsed."""

    id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolResultEvent(msgspec.Struct, tag="tool_result", tag_field="type", kw_only=True, gc=False):
    """What a tool returned (or the error it raised, with `is_error`)."""

    id: str
    name: str
    content: str
    is_error: bool = False


class DoneEvent(msgspec.Struct, tag="done", tag_field="type", kw_only=True, gc=False):
    """The run finished; mirrors `ChatResponse`."""

    output: str
    agent_name: str
    session_id: str | None = None
    steps: int = 1
    usage: Usage = msgspec.field(default_factory=Usage)


class ErrorEvent(msgspec.Struct, tag="error", tag_field="type", kw_only=True, gc=False):
    """The run failed or was refused; `code` is machine-readable."""

    error: str
    code: str


Event = TextEvent | ToolCallEvent | ToolResultEvent | DoneEvent | ErrorEvent
