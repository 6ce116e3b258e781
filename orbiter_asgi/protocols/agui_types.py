"""AG-UI's wire format: `RunAgentInput` with its messages, and the events this server sends.

The structs as AG-UI defines them, apart from the endpoint and encoder in
`agui.py` that speak them: clients can read them, and the OpenAPI document
names its components after them, without the run machinery.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .._context import DEFAULT_SESSION_ID_PATTERN, Limits
from .._model import Model
from ..models import StartEvent

__all__ = [
    "AguiActivityMessage",
    "AguiAssistantMessage",
    "AguiContext",
    "AguiDeveloperMessage",
    "AguiEvent",
    "AguiFunctionCall",
    "AguiInputContent",
    "AguiMessage",
    "AguiReasoningMessage",
    "AguiSystemMessage",
    "AguiTool",
    "AguiToolCall",
    "AguiToolMessage",
    "AguiUserMessage",
    "RunAgentInput",
    "RunErrorEvent",
    "RunFinishedEvent",
    "RunStartedEvent",
    "TextMessageContentEvent",
    "TextMessageEndEvent",
    "TextMessageStartEvent",
    "ToolCallArgsEvent",
    "ToolCallEndEvent",
    "ToolCallResultEvent",
    "ToolCallStartEvent",
]


# --- RunAgentInput -------------------------------------------------------------------
# What AG-UI defines, decoded leniently: unknown fields are ignored and the
# fields we ignore are typed loosely. Names carry `Agui` where the package
# already has a struct of that name (its OpenAPI components are by name).

_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string", "minLength": 1}},
}
_USER_MESSAGE = {"type": "object", "required": ["role"], "properties": {"role": {"const": "user"}}}
_DEFAULT_LIMITS = Limits()


class AguiInputContent(Model, kw_only=True, rename="camel"):
    """A part of a multimodal message; only `text` parts are read."""

    type: str
    text: str | None = None


class AguiFunctionCall(Model, kw_only=True, rename="camel"):
    name: str
    arguments: str = ""


class AguiToolCall(Model, kw_only=True, rename="camel"):
    id: str
    function: AguiFunctionCall
    type: str = "function"


class _AguiMessage(Model, kw_only=True, rename="camel", tag_field="role"):
    id: str = ""


class AguiUserMessage(_AguiMessage, tag="user"):
    """The new turn, or one in the client's history: it needs some text."""

    content: (
        Annotated[str, msgspec.Meta(min_length=1)]
        | Annotated[list[AguiInputContent], msgspec.Meta(extra_json_schema={"contains": _TEXT_PART})]
    )
    name: str | None = None


class AguiAssistantMessage(_AguiMessage, tag="assistant"):
    content: str | None = None
    tool_calls: list[AguiToolCall] | None = None
    name: str | None = None


class AguiToolMessage(_AguiMessage, tag="tool"):
    tool_call_id: str
    content: str | list[AguiInputContent] = ""
    error: str | None = None


class AguiSystemMessage(_AguiMessage, tag="system"):
    content: str = ""


class AguiDeveloperMessage(_AguiMessage, tag="developer"):
    content: str = ""


class AguiReasoningMessage(_AguiMessage, tag="reasoning"):
    """Not replayed: the model's reasoning stays with the client."""

    content: str = ""


class AguiActivityMessage(_AguiMessage, tag="activity"):
    """Not replayed: frontend UI state."""

    activity_type: str = ""
    content: dict[str, Any] = msgspec.field(default_factory=dict)


AguiMessage = (
    AguiUserMessage
    | AguiAssistantMessage
    | AguiToolMessage
    | AguiSystemMessage
    | AguiDeveloperMessage
    | AguiReasoningMessage
    | AguiActivityMessage
)
"""A message of AG-UI's, by its `role`: the roles AG-UI defines, as `ag_ui.core` takes them."""


class AguiTool(Model, kw_only=True, rename="camel"):
    name: str
    description: str = ""
    parameters: Any = None


class AguiContext(Model, kw_only=True, rename="camel"):
    description: str
    value: str


class RunAgentInput(Model, kw_only=True, rename="camel"):
    """The body of `POST /agents/{agent_name}/ag-ui`: AG-UI's `RunAgentInput`.

    `threadId` names the session; the last user message of `messages` is the
    input. `tools`, `context`, `state` and `forwardedProps` are accepted and
    ignored.
    """

    # the document promises the default session-id rule; an app's own is checked all the same
    thread_id: Annotated[
        str,
        msgspec.Meta(
            extra_json_schema={
                "minLength": 1,
                "maxLength": _DEFAULT_LIMITS.max_session_id_length,
                "pattern": f"^(?:{DEFAULT_SESSION_ID_PATTERN})$",
            }
        ),
    ]
    run_id: str
    messages: Annotated[list[AguiMessage], msgspec.Meta(extra_json_schema={"contains": _USER_MESSAGE})]
    parent_run_id: str | None = None
    state: Any = None
    tools: list[AguiTool] | None = None
    context: list[AguiContext] | None = None
    forwarded_props: Any = None


# --- events --------------------------------------------------------------------------


class _AguiEvent(Model, kw_only=True, rename="camel", tag_field="type", omit_defaults=True, gc=False):
    pass


class RunStartedEvent(_AguiEvent, tag="RUN_STARTED"):
    """`rawEvent` is the run's own `start`: our run id, agent and session."""

    thread_id: str
    run_id: str
    parent_run_id: str | None = None
    raw_event: StartEvent | None = None


class RunFinishedEvent(_AguiEvent, tag="RUN_FINISHED"):
    thread_id: str
    run_id: str


class RunErrorEvent(_AguiEvent, tag="RUN_ERROR"):
    message: str
    code: str | None = None


class TextMessageStartEvent(_AguiEvent, tag="TEXT_MESSAGE_START"):
    message_id: str
    role: Literal["assistant"]


class TextMessageContentEvent(_AguiEvent, tag="TEXT_MESSAGE_CONTENT"):
    message_id: str
    delta: str


class TextMessageEndEvent(_AguiEvent, tag="TEXT_MESSAGE_END"):
    message_id: str


class ToolCallStartEvent(_AguiEvent, tag="TOOL_CALL_START"):
    tool_call_id: str
    tool_call_name: str
    parent_message_id: str | None = None


class ToolCallArgsEvent(_AguiEvent, tag="TOOL_CALL_ARGS"):
    tool_call_id: str
    delta: str


class ToolCallEndEvent(_AguiEvent, tag="TOOL_CALL_END"):
    tool_call_id: str


class ToolCallResultEvent(_AguiEvent, tag="TOOL_CALL_RESULT"):
    message_id: str
    tool_call_id: str
    content: str
    role: Literal["tool"]


AguiEvent = (
    RunStartedEvent
    | RunFinishedEvent
    | RunErrorEvent
    | TextMessageStartEvent
    | TextMessageContentEvent
    | TextMessageEndEvent
    | ToolCallStartEvent
    | ToolCallArgsEvent
    | ToolCallEndEvent
    | ToolCallResultEvent
)
"""The AG-UI events this server sends."""
