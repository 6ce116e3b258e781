"""One chat turn, from request to stored history.

Every transport (JSON, SSE, WebSocket) runs a turn with `Run.drive(emit)`,
in the task that sends its events; none talks to the store or the agent
itself. `drive` admits the turn against the app's concurrency limit, bounds
its wall-clock time, ends it when the process drains or the client leaves,
and closes the agent's stream in that same task, so the history is written
and the session lock released where they were taken. With a session the
turn holds the session's lock, loads its history, stores the user message
before the agent starts and what the agent produced when it ends, whether
it finished, failed or was cancelled.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable, Callable

from starlette.types import Receive

from ._context import AppContext
from ._turn import Turn
from .exceptions import AgentError, OrbiterError, RunCancelled
from .models import (
    ChatRequest,
    DoneEvent,
    Event,
    Message,
    TextEvent,
    ToolCall,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
)
from .registry import RegisteredAgent
from .runtime.loop import AgentEvent, tool_message

__all__ = ["Emit", "Run", "RunItem", "as_agent_error", "start_chat", "start_run"]

RunItem = Event | list[str]
"""What a run emits: an event, or a list of text deltas that were ready together."""

# Run ids: unique across processes (a random prefix) and cheap (a counter).
_RUN_PREFIX = secrets.token_hex(6)
_run_numbers = itertools.count(1)


def as_agent_error(exc: Exception, agent_name: str) -> OrbiterError:
    """Any failure of a run as an `OrbiterError` fit for a client."""
    if isinstance(exc, OrbiterError):
        return exc
    error = AgentError(f"Agent {agent_name!r} failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class _Transcript:
    """Turns the agent's events into history messages, usage and steps, as they come.

    The output is the text after the last tool result: the text of the last
    assistant message, which `flush()` closes at the end.
    """

    __slots__ = ("calls", "keep_messages", "messages", "steps", "text", "usage")

    def __init__(self, *, keep_messages: bool = True) -> None:
        self.keep_messages = keep_messages  # only a session stores them
        self.messages: list[Message] = []
        self.text: list[str] = []
        self.calls: list[ToolCall] = []
        self.usage = Usage()
        self.steps = 0  # one `Usage` per model call

    def record(self, event: AgentEvent) -> None:
        kind = type(event)
        if kind is TextEvent:
            self.text.append(event.content)  # type: ignore[union-attr]
        elif kind is Usage:
            self.usage += event  # type: ignore[operator]
            self.steps += 1
        elif kind is ToolCallEvent:
            self.calls.append(ToolCall(id=event.id, name=event.name, arguments=event.arguments))  # type: ignore[union-attr]
        elif kind is ToolResultEvent:
            self.tool_result(event)  # type: ignore[arg-type]

    def flush(self) -> str:
        """Close the assistant message being written; returns its text."""
        text = "".join(self.text)
        if self.text or self.calls:
            if self.keep_messages:
                self.messages.append(Message(role="assistant", content=text, tool_calls=self.calls or None))
            self.text.clear()  # in place: the run holds on to this list
            self.calls = []
        return text

    def tool_result(self, event: ToolResultEvent) -> None:
        self.flush()
        if self.keep_messages:
            self.messages.append(tool_message(event))


Emit = Callable[[RunItem], Awaitable[None]]
"""Where a transport takes the items of a run as they come."""


class Run:
    """A turn of `agent` on `input`, optionally within a session."""

    __slots__ = ("_number", "_stopped", "_turn", "agent", "context", "input", "result", "session_id")

    def __init__(
        self, context: AppContext, agent: RegisteredAgent, input: str, session_id: str | None
    ) -> None:
        self.context = context
        self.agent = agent
        self.input = input
        self.session_id = context.limits.check_session_id(session_id) if session_id is not None else None
        self._number = next(_run_numbers)
        self._turn: Turn | None = None  # while it runs
        self._stopped = False
        # what the turn produced, once the agent's stream is closed: also after a
        # failure or a cancel, for a transport that ends every turn with `done`
        self.result: DoneEvent | None = None

    @property
    def id(self) -> str:
        """Unique across processes: a random per-process prefix and a counter."""
        return f"{_RUN_PREFIX}{self._number:x}"

    async def drive(self, emit: Emit | None = None, receive: Receive | None = None) -> DoneEvent | None:
        """Run the turn to its end under the app's guard; returns its `done` event.

        Every text, tool call and tool result goes to `emit` as it comes (text
        deltas that were ready together as one list of strings); `done` is
        returned, not emitted. Failures raise `OrbiterError`: `Overloaded`,
        `RunTimeout` or `ShuttingDown` when the guard refuses or cuts the
        turn, `RunCancelled` after `cancel()`. With `receive`, a client
        disconnect cancels the turn and None is returned. Errors raised by
        `emit` itself (a transport's) pass through unchanged.

        The run is pushed to the transport rather than pulled from it: the
        turn costs one coroutine, not a generator per layer.
        """
        if self._stopped:
            raise RunCancelled("The turn was cancelled")
        with self.context.guard.running(receive) as turn:
            self._turn = turn
            try:
                if self.session_id is None:
                    return await self._drive(turn, [], emit)
                store = self.context.store
                async with store.lock(self.session_id):
                    history = await store.history(self.session_id, agent_name=self.agent.name)
                    await store.append(self.session_id, [Message(role="user", content=self.input)])
                    return await self._drive(turn, history, emit)
            finally:
                self._turn = None
        return None  # the client went away: the turn was cancelled and is over

    def cancel(self) -> None:
        """Stop the turn at its client's request, from another task: `drive`
        raises `RunCancelled`, after storing what the agent had produced.
        A run not started yet raises it at once; one that has ended ignores it."""
        self._stopped = True
        if self._turn is not None:
            self._turn.stop()

    async def _drive(self, turn: Turn, history: list[Message], emit: Emit | None) -> DoneEvent:
        agent = self.agent
        transcript = _Transcript(keep_messages=self.session_id is not None)
        record = transcript.record
        text = transcript.text
        stream = agent.stream(self.input, history)
        emitting = False  # whether an error comes from `emit`, not from the agent
        try:
            async for item in stream:
                if type(item) is list:  # text deltas that were ready together stay together
                    text += item
                    if emit is not None:
                        emitting = True
                        await emit(item)
                        emitting = False
                else:
                    record(item)  # type: ignore[arg-type]
                    if type(item) is not Usage and emit is not None:  # usage is summed into `done`
                        emitting = True
                        await emit(item)  # type: ignore[arg-type]
                        emitting = False
        except Exception as exc:
            if emitting:
                raise
            raise as_agent_error(exc, agent.name) from exc
        finally:
            try:
                await stream.aclose()  # type: ignore[attr-defined]
            finally:  # even when closing the agent fails or is cancelled
                self.result = DoneEvent(
                    output=transcript.flush(),
                    agent_name=agent.name,
                    session_id=self.session_id,
                    steps=transcript.steps,
                    usage=transcript.usage,
                )
                if self.session_id is not None and transcript.messages:
                    with turn.shielded():
                        await self.context.store.append(self.session_id, transcript.messages)
        if self.result.steps == 0:  # an agent that reports no usage still took a step
            self.result.steps = 1
        return self.result


def start_run(
    context: AppContext,
    agent_name: str | None,
    input: str,
    session_id: str | None,
    *,
    source: str = "body",
) -> Run:
    """A run of the named (or default) agent; raises before anything is sent.

    `source` (`body` or `query`) is where a too-long `input` is reported.
    """
    context.limits.check_input(input, source)
    run = Run(context, context.agents.resolve(agent_name), input, session_id)
    context.guard.admit()  # a 503 now, rather than an error event once streaming
    return run


def start_chat(context: AppContext, request: ChatRequest) -> Run:
    """`start_run` for a `ChatRequest` (of `POST /chat` or a WebSocket turn).

    A too-long `message`, the original name of `input`, is refused even when
    `input` is sent too and wins.
    """
    if request.message is not None and request.message is not request.input:
        context.limits.check_input(request.message, field="message")
    assert request.input is not None  # the struct fills it from `message`
    return start_run(context, request.agent_name, request.input, request.session_id)
