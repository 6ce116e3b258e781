"""OpenAI's Chat Completions API over the run pipeline, for clients that already speak it.

```python
from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="k-123")
client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}])
```

`model` names an agent (`GET /v1/models` lists them). The last user message
is the run's input and the messages before it its history, unless an
`X-Session-Id` header names a session: its stored history is used and the
turn is stored. The agent runs its own tools on the server, so a client's
`tools` are refused and answers carry text only. Errors, streamed ones
included, are OpenAI's `{"error": {...}}`, so the SDKs raise their own
exceptions.
"""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .._codec import Decoder, RequestValidationError, encode
from .._context import DEFAULT_SESSION_ID_PATTERN, Limits, get_context
from .._http import Endpoint, header, read_json, send_json
from .._sse import escape_separators, send_event_stream
from ..exceptions import AgentNotFound, OrbiterError, RequestError
from ..models import DoneEvent, Message, StartEvent, TextEvent, ToolCall
from ..registry import AgentRegistry
from ..routing import Operation, Router
from ..runs import Run, RunItem, start_run
from .openai_types import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCall,
    ChatCompletionRequest,
    ChatCompletionSystemMessage,
    ChatCompletionToolMessage,
    ChatCompletionUserMessage,
    CompletionUsage,
    ModelList,
    ModelObject,
    OpenAIError,
    OpenAIErrorDetail,
    _Content,
)

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChunkEncoder",
    "CompletionUsage",
    "ModelList",
    "OpenAIEndpoint",
    "OpenAIError",
    "openai_error",
    "openai_router",
]

# --- errors ------------------------------------------------------------------------

_UNSUPPORTED = {
    "n": "Only n=1 is supported",
    "tools": "Client-side tools are not supported: the agent runs its own tools on the server",
    "functions": "Client-side functions are not supported: the agent runs its own tools on the server",
}


class _InvalidParam(RequestError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _param(loc: list[str | int]) -> str:
    """`["body", "messages", 0, "content"]` as `messages[0].content`."""
    param = ""
    for part in loc[1:]:
        if isinstance(part, int):
            param += f"[{part}]"
        else:
            param += f".{part}" if param else part
    return param


def openai_error(exc: OrbiterError) -> tuple[int, OpenAIError]:
    """The status and OpenAI-shaped body of an error: 400s for every bad request,
    `model_not_found` for an unknown agent, and the package's own code otherwise."""
    status, message, code = exc.status_code, exc.message, exc.code
    param: str | None = None
    if isinstance(exc, RequestValidationError):  # OpenAI answers these 400, not 422
        status, item = 400, exc.items[0]
        param = _param(item.loc) or None
        if param in _UNSUPPORTED:
            message, code = _UNSUPPORTED[param], "unsupported_value"
        elif param is not None and ".content[" in param and param.endswith(".type"):  # an image, ...
            param = param.removesuffix(".type")
            message, code = f"Only text content parts are supported ({param})", "unsupported_value"
        elif item.type == "missing":
            message = f"Missing required parameter: '{param}'"
        else:
            message = f"Invalid '{param}': {item.msg}" if param else item.msg
    elif isinstance(exc, _InvalidParam):
        param = exc.param
    elif isinstance(exc, AgentNotFound):
        param, code = "model", "model_not_found"
    kind = "invalid_request_error" if status < 500 else "api_error"
    return status, OpenAIError(OpenAIErrorDetail(message=message, type=kind, param=param, code=code))


_INTERNAL_ERROR = encode(OpenAIError(OpenAIErrorDetail(message="Internal Server Error", type="server_error")))


class OpenAIEndpoint(Endpoint):
    """An `Endpoint` that renders `OrbiterError` in OpenAI's shape, with
    `Retry-After` on 429 and 503 (the SDKs retry those by themselves)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.handle(scope, receive, send)
        except OrbiterError as exc:
            status, body = openai_error(exc)
            extra = [(b"retry-after", b"1")] if status in (429, 503) else []
            if exc.run_id is not None:
                extra.append((b"x-run-id", exc.run_id.encode()))
            await send_json(send, encode(body), status, extra)
        except Exception:
            with contextlib.suppress(Exception):  # the response may have started already
                await send_json(send, _INTERNAL_ERROR, 500)
            raise


# --- GET /v1/models ----------------------------------------------------------------

_STARTED = int(time.time())  # models are as old as the process that serves them


class ListModels(OpenAIEndpoint):
    def __init__(self) -> None:
        self._cached: tuple[AgentRegistry, int, bytes] | None = None  # as `GET /agents` caches

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        registry = get_context(scope).agents
        cached = self._cached
        if cached is None or cached[0] is not registry or cached[1] != registry.version:
            models = [ModelObject(id=agent.name, created=_STARTED) for agent in registry.entries()]
            cached = self._cached = (registry, registry.version, encode(ModelList(data=models)))
        await send_json(send, cached[2])


# --- POST /v1/chat/completions -----------------------------------------------------

_request: Decoder[ChatCompletionRequest] = Decoder(ChatCompletionRequest)
_arguments = msgspec.json.Decoder(dict[str, Any])


def _text(content: _Content | None) -> str:
    if type(content) is str:
        return content
    if content is None:
        return ""
    return "\n".join([part.text for part in content])  # type: ignore[union-attr]


def _tool_call(call: ChatCompletionMessageToolCall, limits: Limits, param: str) -> ToolCall:
    try:
        arguments = _arguments.decode(call.function.arguments)
    except msgspec.DecodeError:
        # the API takes any string here; a model replays what is no JSON object as no arguments
        arguments = {}
    except RecursionError:
        raise _InvalidParam(f"JSON should nest at most {limits.max_json_depth} levels deep", param) from None
    limits.check_depth(arguments, param)
    return ToolCall(id=call.id, name=call.function.name, arguments=arguments)


def _history_message(message: ChatCompletionMessageParam, limits: Limits, index: int) -> Message:
    if isinstance(message, ChatCompletionSystemMessage):  # developer messages too
        return Message(role="system", content=_text(message.content))
    if isinstance(message, ChatCompletionUserMessage):
        return Message(role="user", content=_text(message.content))
    if isinstance(message, ChatCompletionToolMessage):
        return Message(role="tool", content=_text(message.content), tool_call_id=message.tool_call_id)
    calls = [
        _tool_call(call, limits, f"messages[{index}].tool_calls[{n}].function.arguments")
        for n, call in enumerate(message.tool_calls or ())
    ]
    return Message(role="assistant", content=_text(message.content), tool_calls=calls or None)


def _conversation(
    messages: list[ChatCompletionMessageParam], limits: Limits, *, with_history: bool
) -> tuple[str, list[Message]]:
    """The run's input, the last user message, and the history before it.

    Messages after the last user message are left out: the agent answers it.
    """
    last = len(messages) - 1
    while last >= 0 and type(messages[last]) is not ChatCompletionUserMessage:
        last -= 1
    if last < 0:
        raise _InvalidParam("messages must include a user message", "messages")
    input = _text(messages[last].content)
    if not input or len(input) > limits.max_input_length:  # else the run's own check passes it
        limits.check_input(input, field=f"messages[{last}].content")
    if not with_history or last == 0:
        return input, []
    return input, [_history_message(m, limits, i) for i, m in enumerate(messages[:last])]


def _settings(request: ChatCompletionRequest) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if request.temperature is not None:
        settings["temperature"] = request.temperature
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is not None:
        settings["max_tokens"] = int(max_tokens)
    return settings


def _frame(payload: msgspec.Struct) -> bytes:
    return escape_separators(b"data: %b\n\n" % encode(payload))


_DONE = b"data: [DONE]\n\n"
# a `ChatCompletionChunk` up to its delta, and the pieces after it, as msgspec encodes them
_HEAD = (
    b'data: {"id":%b,"object":"chat.completion.chunk","created":%d,"model":%b,'
    b'"choices":[{"index":0,"delta":'
)
_ROLE = b'{"role":"assistant","content":""}'
_OPEN = b',"finish_reason":null,"logprobs":null}]'
_STOP = b'{},"finish_reason":"stop","logprobs":null}]'
_NULL_USAGE = b',"usage":null'
_END = b"}\n\n"


class ChunkEncoder:
    """Frames a run as `chat.completion.chunk` SSE events: a `StreamEncoder`.

    The first chunk has the role; each batch of text deltas the run emits
    together is one chunk with their text joined; tool calls and results are
    not sent, since the agent ran the tools itself. The end is a chunk with
    `finish_reason: "stop"`, then the usage chunk if asked for, then
    `[DONE]`; a failed run ends with `{"error": {...}}` and `[DONE]`.

    Chunks are spliced from bytes made once per stream around each text's
    JSON string, rather than encoded whole: they are most of what a stream
    costs. The tests read them with OpenAI's SDK.
    """

    __slots__ = ("_created", "_head", "_id", "_model", "_tail", "_usage")

    def __init__(self, completion_id: str, model: str, created: int, *, include_usage: bool = False) -> None:
        self._id = completion_id
        self._model = model
        self._created = created
        self._usage = include_usage  # then every chunk has `usage`, null but in the last
        self._head = escape_separators(_HEAD % (encode(completion_id), created, encode(model)))
        self._tail = _OPEN + _NULL_USAGE + _END if include_usage else _OPEN + _END

    def item(self, item: RunItem, chunk: bytes) -> bytes:
        kind = type(item)
        if kind is list:
            text = "".join(item)  # type: ignore[arg-type]
        elif kind is TextEvent:
            text = item.content  # type: ignore[union-attr]
        elif kind is StartEvent:
            return self._head + _ROLE + self._tail
        else:  # tool calls and results: the server's business
            return b""
        if not text:
            return b""
        return b'%b{"content":%b}%b' % (self._head, escape_separators(encode(text)), self._tail)

    def end(self, run: Run) -> bytes:
        outcome = run.outcome
        if not isinstance(outcome, DoneEvent):
            if outcome is None:
                return _DONE
            detail = OpenAIErrorDetail(message=outcome.error, type="api_error", code=outcome.code)
            return _frame(OpenAIError(detail)) + _DONE
        if not self._usage:
            return self._head + _STOP + _END + _DONE
        usage = ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[],
            usage=CompletionUsage.of(outcome.usage),
        )
        return self._head + _STOP + _NULL_USAGE + _END + _frame(usage) + _DONE


class ChatCompletions(OpenAIEndpoint):
    """A `ChatCompletion`, or `chat.completion.chunk` SSE events when `stream` is true."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = get_context(scope)
        limits = context.limits
        request: ChatCompletionRequest = await read_json(scope, receive, _request, limits.max_body_size)
        raw_session = header(scope, b"x-session-id")
        session_id = raw_session.decode("latin-1") if raw_session else None
        # with a session, its stored history is the history and `messages` only bring the input
        input, history = _conversation(request.messages, limits, with_history=session_id is None)
        run = start_run(
            context, request.model, input, session_id, history=history, settings=_settings(request)
        )
        created = int(time.time())
        completion_id = f"chatcmpl-{run.id}"
        if request.stream:
            options = request.stream_options
            encoder = ChunkEncoder(
                completion_id,
                run.agent.name,
                created,
                include_usage=options is not None and options.include_usage,
            )
            await send_event_stream(send, run, receive, heartbeat=limits.heartbeat_interval, encoder=encoder)
            return
        try:
            done = await run.drive(receive=receive)
        except OrbiterError as exc:
            exc.run_id = run.id
            raise
        if done is None:  # the client went away; nobody is left to answer
            return
        answer = ChatCompletion(
            id=completion_id,
            created=created,
            model=done.agent_name,
            choices=[ChatCompletionChoice(message=ChatCompletionMessage(content=done.output))],
            usage=CompletionUsage.of(done.usage),
        )
        with contextlib.suppress(OSError):  # a client gone during the run's grace
            await send_json(send, encode(answer), headers=[(b"x-run-id", run.id.encode())])


list_models = ListModels()
chat_completions = ChatCompletions()

_TAGS = ["openai"]
# as an app with the default session id limits takes it; empty is none
_SESSION_ID = Annotated[str, Meta(max_length=128, pattern=f"^(?:{DEFAULT_SESSION_ID_PATTERN})?$")]
_UNAUTHORIZED = {401: OpenAIError}  # documented here in OpenAI's shape, before the app adds its own

openai_router = Router(
    [
        Route("/v1/models", list_models, methods=["GET"], name="openai_list_models"),
        Route("/v1/chat/completions", chat_completions, methods=["POST"], name="openai_chat_completions"),
    ],
    operations=[
        Operation(
            method="get", path="/v1/models", summary="OpenAI: the agents, as models",
            response=ModelList, responses=_UNAUTHORIZED, tags=_TAGS,
        ),
        Operation(
            method="post", path="/v1/chat/completions",
            summary="OpenAI: run the agent named by model; chunks as SSE when stream is true",
            request=ChatCompletionRequest, response=ChatCompletion,
            responses={
                **_UNAUTHORIZED, 400: OpenAIError, 404: OpenAIError, 413: OpenAIError, 415: OpenAIError,
                502: OpenAIError, 503: OpenAIError, 504: OpenAIError,
            },
            events=ChatCompletionChunk,
            headers=[("X-Session-Id", _SESSION_ID, False)], tags=_TAGS,
        ),
    ],
)
