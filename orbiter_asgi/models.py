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

import functools
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from ._model import Model

__all__ = [
    "AgentInfo",
    "AgentSummary",
    "AppendMessageRequest",
    "ChatRequest",
    "ChatResponse",
    "CreateSessionRequest",
    "DoneEvent",
    "ErrorDetail",
    "ErrorEvent",
    "Event",
    "Message",
    "Model",
    "Role",
    "RunAccepted",
    "RunError",
    "RunInfo",
    "RunStatus",
    "Session",
    "SessionMessage",
    "SessionSummary",
    "StartEvent",
    "TextEvent",
    "ToolCall",
    "ToolCallEvent",
    "ToolResultEvent",
    "UpdateSessionRequest",
    "Usage",
    "ValidationErrorItem",
    "ValidationErrorResponse",
    "WorkspaceFile",
    "WorkspaceFileContent",
]

# the clock as a default factory, all in C: no Python frame per struct made
_utcnow = functools.partial(datetime.now, UTC)


Role = Literal["system", "user", "assistant", "tool"]


class Usage(Model, kw_only=True, gc=False):
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


class ChatRequest(Model, kw_only=True, omit_defaults=True, gc=False):
    """Body of `POST /chat` and of each WebSocket turn.

    `message` is the original package's name for `input`; either may be sent.
    """

    input: str | None = None
    agent_name: str | None = None
    session_id: str | None = None
    stream: bool = False
    background: bool = False
    message: str | None = None

    def __post_init__(self) -> None:
        if self.input is None:
            if self.message is None:
                raise ValueError("Object missing required field `input`")
            self.input = self.message


class ChatResponse(Model, kw_only=True, gc=False):
    """Body of a non-streamed `POST /chat`."""

    output: str = ""
    agent_name: str = ""
    session_id: str | None = None
    steps: int = 0
    usage: Usage = msgspec.field(default_factory=Usage)
    run_id: str | None = None


class ToolCall(Model, kw_only=True):
    """A tool call the model asked for, as stored in an assistant message."""

    id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class Message(Model, kw_only=True, omit_defaults=True):
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


SessionMessage = Message
"""The original package's name for a history entry."""

AppendMessageRequest = Message
"""The original package's name for the body of `POST /sessions/{id}/messages`
(which also takes a list of them)."""


class CreateSessionRequest(Model, kw_only=True):
    """Body of `POST /sessions`; `id` lets a client choose the session id."""

    agent_name: str | None = None
    title: str = ""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None


class UpdateSessionRequest(Model, kw_only=True):
    """Body of `PATCH /sessions/{id}`: only the fields sent are changed."""

    title: str | msgspec.UnsetType = msgspec.UNSET
    agent_name: str | msgspec.UnsetType | None = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class Session(Model, kw_only=True):
    """A session with its whole history."""

    id: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex)
    agent_name: str | None = None
    title: str = ""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    messages: list[Message] = msgspec.field(default_factory=list)
    created_at: datetime = msgspec.field(default_factory=_utcnow)
    updated_at: datetime = msgspec.field(default_factory=_utcnow)


class SessionSummary(Model, kw_only=True):
    """A session in a listing: everything but the messages."""

    id: str
    agent_name: str | None = None
    title: str = ""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    message_count: int = 0
    created_at: datetime = msgspec.field(default_factory=_utcnow)
    updated_at: datetime = msgspec.field(default_factory=_utcnow)


class AgentSummary(Model, kw_only=True):
    """An agent in `GET /agents`."""

    name: str
    model: str = ""
    description: str = ""


class AgentInfo(Model, kw_only=True):
    """An agent in `GET /agents/{name}`: what the original package's listing said too.

    `temperature` and `max_tokens` are None where the agent leaves them to
    its model's defaults.
    """

    name: str
    model: str = ""
    description: str = ""
    is_default: bool = False
    instructions: str = ""
    tools: list[str] = msgspec.field(default_factory=list)
    handoffs: list[str] = msgspec.field(default_factory=list)
    max_steps: int = 0
    temperature: float | None = None
    max_tokens: int | None = None


class WorkspaceFile(Model, kw_only=True):
    """A file in an agent's workspace; `path` is relative and uses `/`.

    `name` (the original package's field) is the same path; a file on disk
    has one version, and its `artifact_type` is `text` or `binary`.
    """

    name: str
    path: str = ""
    size: int = 0
    modified_at: datetime | None = None
    artifact_type: str = "text"
    version_count: int = 1

    def __post_init__(self) -> None:
        if not self.path:
            self.path = self.name


class WorkspaceFileContent(Model, kw_only=True):
    """A workspace file with its text, as the original package answered it.

    `GET /agents/{name}/workspace/{path}` serves the file itself (with its
    media type and `Range`); this model is kept for code that builds one.
    """

    name: str
    content: str
    artifact_type: str = "text"
    version_count: int = 1


RunStatus = Literal["running", "completed", "failed", "cancelled"]


class RunError(Model, kw_only=True, gc=False):
    """Why a run failed: the `code` and `error` of its `error` event."""

    code: str
    message: str


class RunInfo(Model, kw_only=True, gc=False):
    """`GET /runs/{run_id}`: a run, running or ended, as its journal keeps it."""

    id: str
    agent_name: str
    session_id: str | None = None
    status: RunStatus = "running"
    created_at: datetime = msgspec.field(default_factory=_utcnow)
    ended_at: datetime | None = None
    output: str = ""
    steps: int = 0
    usage: Usage = msgspec.field(default_factory=Usage)
    error: RunError | None = None


class RunAccepted(Model, kw_only=True, gc=False):
    """The 202 answer to a background `POST /chat`."""

    run_id: str
    status: RunStatus = "running"


class ErrorDetail(Model, gc=False):
    """`{"detail": "..."}`, the FastAPI error body."""

    detail: str


class ValidationErrorItem(Model, kw_only=True):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(Model):
    """A 422 body: where and why the request did not match its struct."""

    detail: list[ValidationErrorItem]


# --- stream events ---------------------------------------------------------
# One vocabulary for SSE, WebSocket and the Python API, tagged by `type`.


class StartEvent(Model, tag="start", tag_field="type", kw_only=True, gc=False):
    """The first event of every streamed run: the client knows the run before it ends."""

    run_id: str
    agent_name: str
    session_id: str | None = None


class TextEvent(Model, tag="text", tag_field="type", gc=False):
    """A text delta."""

    content: str


class ToolCallEvent(Model, tag="tool_call", tag_field="type", kw_only=True):
    """The model calls a tool; `arguments` are already parsed."""

    id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolResultEvent(Model, tag="tool_result", tag_field="type", kw_only=True, gc=False):
    """What a tool returned (or the error it raised, with `is_error`)."""

    id: str
    name: str
    content: str
    is_error: bool = False


class DoneEvent(Model, tag="done", tag_field="type", kw_only=True, gc=False):
    """The run ended; mirrors `ChatResponse`. A failed or cancelled turn has
    one too, after its `error`, with what it produced. `run_id` is None only
    for a WebSocket frame refused before it became a run."""

    run_id: str | None = None
    output: str = ""
    agent_name: str = ""
    session_id: str | None = None
    steps: int = 0
    usage: Usage = msgspec.field(default_factory=Usage)

    @classmethod
    def of_run(cls, info: RunInfo) -> DoneEvent:
        """The `done` of an ended run, from its record."""
        return cls(
            run_id=info.id,
            output=info.output,
            agent_name=info.agent_name,
            session_id=info.session_id,
            steps=info.steps,
            usage=info.usage,
        )


class ErrorEvent(Model, tag="error", tag_field="type", kw_only=True, gc=False):
    """The run failed or was refused; `code` is machine-readable."""

    run_id: str | None = None
    error: str
    code: str


Event = StartEvent | TextEvent | ToolCallEvent | ToolResultEvent | DoneEvent | ErrorEvent
