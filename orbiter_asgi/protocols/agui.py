"""AG-UI over the run pipeline: `POST /agents/{agent_name}/ag-ui`.

An AG-UI client (CopilotKit, `@ag-ui/client`'s `HttpAgent`) posts a
`RunAgentInput` and reads AG-UI events as SSE. The run is an ordinary run
of the named agent: journaled, guarded, its turn stored in the session
named by `threadId`; only the framing differs, done by `AguiEncoder`.

```python
async with httpx.AsyncClient(base_url="http://localhost:8000") as http:
    body = {"threadId": "t1", "runId": "r1", "messages": [{"id": "m1", "role": "user", "content": "Hi"}]}
    async with http.stream("POST", "/agents/assistant/ag-ui", json=body) as response:
        ...  # data: {"type":"RUN_STARTED","threadId":"t1","runId":"r1",...}
```

- `threadId` is the session id. A thread whose session has stored messages
  runs on them and takes only the last user message from `messages`; a new
  (or empty) thread adopts the client's messages before it as its history.
- `runId` is echoed on `RUN_STARTED` and `RUN_FINISHED`, as AG-UI asks; the
  server's own run id is the `X-Run-Id` header and `RUN_STARTED.rawEvent`.
- `tools` (frontend tools), `context`, `state` and `forwardedProps` are
  accepted and ignored: the agent runs its own tools, on the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .._codec import Decoder, RequestValidationError, encode
from .._context import Limits, get_context
from .._http import Endpoint, read_json
from .._sse import escape_separators, send_event_stream
from ..exceptions import RequestError
from ..models import (
    DoneEvent,
    ErrorDetail,
    Message,
    StartEvent,
    TextEvent,
    ToolCall,
    ToolCallEvent,
    ToolResultEvent,
    ValidationErrorItem,
)
from ..routing import Operation, Router
from ..runs import start_run
from .agui_types import (
    AguiAssistantMessage,
    AguiDeveloperMessage,
    AguiEvent,
    AguiInputContent,
    AguiMessage,
    AguiSystemMessage,
    AguiToolMessage,
    AguiUserMessage,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    _AguiEvent,
)

if TYPE_CHECKING:
    from ..runs import Run, RunItem

__all__ = ["AguiEncoder", "AguiEvent", "AguiMessage", "RunAgentInput", "agui_endpoint", "agui_router"]


def _frames(events: Sequence[_AguiEvent]) -> bytes:
    # `data:` frames only: AG-UI clients neither send `Last-Event-ID` nor resume
    return escape_separators(b"".join([b"data: %b\n\n" % encode(event) for event in events]))


class AguiEncoder:
    """Frames one run's items as AG-UI events: a `StreamEncoder` for `send_event_stream`.

    Text opens an assistant message that stays open while text flows; a tool
    call closes it and names it as the call's parent (a step with no text
    gets a message id all the same, so its calls group under one message);
    a tool result ends the step, so the text after it is a new message.
    Message ids are the run's id with a count: unique within any thread.
    """

    __slots__ = ("_base", "_count", "_message", "_open", "parent_run_id", "run_id", "thread_id")

    def __init__(self, thread_id: str, run_id: str, parent_run_id: str | None = None) -> None:
        self.thread_id = thread_id
        self.run_id = run_id  # the client's, echoed
        self.parent_run_id = parent_run_id
        self._base = ""  # our run id, from `start`
        self._count = 0
        self._message: str | None = None  # the assistant message of this step, once it has one
        self._open = False  # whether a text message is open

    def item(self, item: RunItem, chunk: bytes) -> bytes:
        kind = type(item)
        # exact type checks, as the run makes them: this runs once per batch of text deltas
        if kind is list:
            return self._text(cast("list[str]", item))
        if kind is TextEvent:
            return self._text([cast(TextEvent, item).content])
        if kind is ToolCallEvent:
            return self._tool_call(cast(ToolCallEvent, item))
        if kind is ToolResultEvent:
            return self._tool_result(cast(ToolResultEvent, item))
        if kind is StartEvent:
            start = cast(StartEvent, item)
            self._base = start.run_id
            started = RunStartedEvent(
                thread_id=self.thread_id,
                run_id=self.run_id,
                parent_run_id=self.parent_run_id,
                raw_event=start,
            )
            return _frames([started])
        return b""

    def end(self, run: Run) -> bytes:
        events = self._close()
        outcome = run.outcome
        if type(outcome) is DoneEvent:
            events.append(RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id))
        elif outcome is not None:
            events.append(RunErrorEvent(message=outcome.error, code=outcome.code))  # type: ignore[union-attr]
        return _frames(events)

    def _new_id(self) -> str:
        self._count += 1
        return f"{self._base}-{self._count}"

    def _text(self, deltas: list[str]) -> bytes:
        message = self._message
        events: list[_AguiEvent] = []
        for delta in deltas:
            if not delta:  # AG-UI wants every delta non-empty
                continue
            if not self._open:
                message = self._message = self._new_id()
                self._open = True
                events.append(TextMessageStartEvent(message_id=message, role="assistant"))
            assert message is not None
            events.append(TextMessageContentEvent(message_id=message, delta=delta))
        return _frames(events) if events else b""

    def _close(self) -> list[_AguiEvent]:
        if not self._open:
            return []
        self._open = False
        assert self._message is not None
        return [TextMessageEndEvent(message_id=self._message)]

    def _tool_call(self, call: ToolCallEvent) -> bytes:
        events = self._close()
        if self._message is None:
            self._message = self._new_id()
        parent = self._message
        events += [
            ToolCallStartEvent(tool_call_id=call.id, tool_call_name=call.name, parent_message_id=parent),
            ToolCallArgsEvent(tool_call_id=call.id, delta=encode(call.arguments).decode()),
            ToolCallEndEvent(tool_call_id=call.id),
        ]
        return _frames(events)

    def _tool_result(self, result: ToolResultEvent) -> bytes:
        events = self._close()
        self._message = None  # the model's next step is a new assistant message
        events.append(
            ToolCallResultEvent(
                message_id=self._new_id(), tool_call_id=result.id, content=result.content, role="tool"
            )
        )
        return _frames(events)


# --- the endpoint --------------------------------------------------------------------

_input: Decoder[RunAgentInput] = Decoder(RunAgentInput)


def _invalid(loc: list[str | int], msg: str) -> RequestValidationError:
    return RequestValidationError([ValidationErrorItem(loc=["body", *loc], msg=msg, type="value_error")])


def _text(content: str | list[AguiInputContent] | None) -> str:
    """A message's text: its string, or its text parts, one per line."""
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join([part.text for part in content if part.type == "text" and part.text])


def _last_user_message(messages: list[AguiMessage]) -> tuple[int, str]:
    """The index and text of the input; a 422 when there is none, or a user message has no text."""
    last, text = -1, ""
    for index, message in enumerate(messages):
        if type(message) is AguiUserMessage:
            text = _text(message.content)
            if not text:  # a string is non-empty already: parts without text
                raise _invalid(["messages", index, "content"], "A user message needs a non-empty text part")
            last = index
    if last < 0:
        raise _invalid(["messages"], "No user message: the last one is the input")
    return last, text


def _arguments(raw: str, limits: Limits) -> dict[str, Any]:
    """A replayed call's arguments; what is no JSON object (of a storable depth) replays as `{}`."""
    try:
        value = msgspec.json.decode(raw)
        limits.check_depth(value, "messages")
    except (msgspec.DecodeError, RecursionError, RequestError):
        return {}
    return value if isinstance(value, dict) else {}


def _history(messages: Sequence[AguiMessage], limits: Limits) -> list[Message]:
    """The client's messages as history: reasoning and activity are not replayed."""
    history: list[Message] = []
    names: dict[str, str] = {}  # tool call id -> name, for the results
    for message in messages:
        if type(message) is AguiUserMessage:
            history.append(Message(role="user", content=_text(message.content)))
        elif type(message) is AguiAssistantMessage:
            calls = [
                ToolCall(id=c.id, name=c.function.name, arguments=_arguments(c.function.arguments, limits))
                for c in message.tool_calls or ()
            ]
            names.update((call.id, call.name) for call in calls)
            if message.content or calls:
                content = message.content or ""
                history.append(Message(role="assistant", content=content, tool_calls=calls or None))
        elif type(message) is AguiToolMessage:
            call_id = message.tool_call_id
            history.append(
                Message(
                    role="tool",
                    content=_text(message.content) or message.error or "",
                    tool_call_id=call_id,
                    name=names.get(call_id),
                    is_error=message.error is not None,
                )
            )
        elif type(message) is AguiSystemMessage or type(message) is AguiDeveloperMessage:
            history.append(Message(role="system", content=message.content))
    return history


class AguiEndpoint(Endpoint):
    """`POST /agents/{agent_name}/ag-ui`: a `RunAgentInput` in, AG-UI events out (SSE).

    Everything that can fail on the request (the body, `threadId`, no user
    message, the agent) is a `{"detail": ...}` error before the stream; a
    failure of the run is `RUN_ERROR`, its last event.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = get_context(scope)
        limits = context.limits
        request: RunAgentInput = await read_json(scope, receive, _input, limits.max_body_size)
        try:
            limits.check_session_id(request.thread_id)
        except RequestError as exc:
            raise _invalid(["threadId"], exc.message) from None
        last, input = _last_user_message(request.messages)
        limits.check_input(input, field="messages")  # where the input is, for a client of AG-UI
        # a thread with stored messages runs on them; a new one adopts the client's (`Run`)
        history = _history(request.messages[:last], limits) if last else []
        agent_name = scope["path_params"]["agent_name"]
        run = start_run(context, agent_name, input, request.thread_id, history=history)
        encoder = AguiEncoder(request.thread_id, request.run_id, request.parent_run_id)
        await send_event_stream(send, run, receive, heartbeat=limits.heartbeat_interval, encoder=encoder)


agui_endpoint = AguiEndpoint()

agui_router = Router(
    [Route("/agents/{agent_name}/ag-ui", agui_endpoint, methods=["POST"], name="agui")],
    operations=[
        Operation(
            method="post",
            path="/agents/{agent_name}/ag-ui",
            summary="Run an agent for an AG-UI client: RunAgentInput in, AG-UI events out (SSE)",
            request=RunAgentInput,
            response=AguiEvent,
            responses={404: ErrorDetail, 503: ErrorDetail},
            tags=["ag-ui"],
            media_type="text/event-stream",
        ),
    ],
)
