"""OpenAI's Chat Completions wire format: requests, messages, completions, chunks, models, errors.

The structs as OpenAI defines them, apart from the endpoints in `openai.py`
that speak them: clients can read them, and the OpenAPI document names its
components after them, without the run machinery.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ..models import Usage

__all__ = [
    "ChatCompletion",
    "ChatCompletionAssistantMessage",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionChunkDelta",
    "ChatCompletionDeveloperMessage",
    "ChatCompletionFunctionCall",
    "ChatCompletionMessage",
    "ChatCompletionMessageParam",
    "ChatCompletionMessageToolCall",
    "ChatCompletionRequest",
    "ChatCompletionStreamOptions",
    "ChatCompletionSystemMessage",
    "ChatCompletionTextPart",
    "ChatCompletionToolMessage",
    "ChatCompletionUserMessage",
    "CompletionUsage",
    "ModelList",
    "ModelObject",
    "OpenAIError",
    "OpenAIErrorDetail",
]

# Request and response structs are `gc=False`: decoded JSON and the answers
# built from it hold no reference cycles.


class ChatCompletionTextPart(msgspec.Struct, kw_only=True, gc=False):
    """A text content part; other kinds (`image_url`, ...) are refused by their `type`."""

    type: Literal["text"]  # a field, not a tag: msgspec would take a part without one
    text: Annotated[str, Meta(min_length=1)]


_Content = str | list[ChatCompletionTextPart]


class ChatCompletionSystemMessage(msgspec.Struct, tag="system", tag_field="role", kw_only=True, gc=False):
    content: _Content
    name: str | None = None


class ChatCompletionDeveloperMessage(ChatCompletionSystemMessage, tag="developer"):
    """The newer name of a system message."""


class ChatCompletionUserMessage(msgspec.Struct, tag="user", tag_field="role", kw_only=True, gc=False):
    content: Annotated[str, Meta(min_length=1)] | Annotated[list[ChatCompletionTextPart], Meta(min_length=1)]
    name: str | None = None


class ChatCompletionFunctionCall(msgspec.Struct, kw_only=True, gc=False):
    name: str
    arguments: str  # JSON, as the model wrote it


class ChatCompletionMessageToolCall(msgspec.Struct, kw_only=True, gc=False):
    id: str
    type: Literal["function"] = "function"
    function: ChatCompletionFunctionCall


class ChatCompletionAssistantMessage(
    msgspec.Struct, tag="assistant", tag_field="role", kw_only=True, gc=False
):
    content: _Content | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    name: str | None = None
    refusal: str | None = None


class ChatCompletionToolMessage(msgspec.Struct, tag="tool", tag_field="role", kw_only=True, gc=False):
    content: _Content
    tool_call_id: str


ChatCompletionMessageParam = (
    ChatCompletionSystemMessage
    | ChatCompletionDeveloperMessage
    | ChatCompletionUserMessage
    | ChatCompletionAssistantMessage
    | ChatCompletionToolMessage
)


class ChatCompletionStreamOptions(msgspec.Struct, kw_only=True, gc=False):
    include_usage: bool = False


# whole numbers, `3.0` included as JSON Schema's `integer` includes it (msgspec's `int` refuses it)
_WHOLE = Meta(multiple_of=1)
_NO_CLIENT_TOOLS = Meta(
    max_length=0, description="Client-side tools are not supported: the agent runs its own on the server."
)


class ChatCompletionRequest(msgspec.Struct, kw_only=True, gc=False):
    """Body of `POST /v1/chat/completions`; fields OpenAI has and these lack are ignored.

    `model` is the agent's name. `max_completion_tokens` wins over
    `max_tokens`; both, with `temperature`, reach agents built on `Agent`.
    `user` and `metadata` are accepted and ignored.
    """

    model: str
    # a user message is required: the last one is the run's input
    messages: Annotated[
        list[ChatCompletionMessageParam],
        Meta(
            min_length=1,
            extra_json_schema={"contains": {"properties": {"role": {"const": "user"}}, "required": ["role"]}},
        ),
    ]
    stream: bool = False
    stream_options: ChatCompletionStreamOptions | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[float, Meta(ge=1), _WHOLE] | None = None
    max_completion_tokens: Annotated[float, Meta(ge=1), _WHOLE] | None = None
    n: Annotated[float, Meta(ge=1, le=1, description="Only one choice is supported."), _WHOLE] | None = None
    tools: Annotated[list[dict[str, Any]], _NO_CLIENT_TOOLS] | None = None
    functions: Annotated[list[dict[str, Any]], _NO_CLIENT_TOOLS] | None = None
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None


class CompletionUsage(msgspec.Struct, kw_only=True, gc=False):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> CompletionUsage:
        return cls(
            prompt_tokens=usage.input_tokens,
            completion_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
        )


class ChatCompletionMessage(msgspec.Struct, kw_only=True, gc=False):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(msgspec.Struct, kw_only=True, gc=False):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatCompletion(msgspec.Struct, kw_only=True, gc=False):
    """A non-streamed answer: one choice, the run's output."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage


class ChatCompletionChunkDelta(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionChunkChoice(msgspec.Struct, kw_only=True, gc=False):
    index: int = 0
    delta: ChatCompletionChunkDelta
    finish_reason: Literal["stop"] | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True, gc=False):
    """One event of a streamed answer. With `stream_options.include_usage`
    every chunk has `usage`: null but the last, which has no choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: CompletionUsage | msgspec.UnsetType | None = msgspec.UNSET


class ModelObject(msgspec.Struct, kw_only=True, gc=False):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "orbiter"


class ModelList(msgspec.Struct, kw_only=True, gc=False):
    """`GET /v1/models`: every agent of the app, as a model."""

    object: Literal["list"] = "list"
    data: list[ModelObject]


class OpenAIErrorDetail(msgspec.Struct, kw_only=True, gc=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(msgspec.Struct, gc=False):
    """OpenAI's error body, of every error on the `/v1` routes."""

    error: OpenAIErrorDetail
