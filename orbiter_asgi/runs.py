"""One chat turn, from request to stored history, as a stream of events.

Every transport (JSON, SSE, WebSocket) consumes `Run.events()`; none talks
to the store or the agent itself. With a session the turn holds the
session's lock, loads its history, stores the user message before the agent
starts and what the agent produced when it ends, whether it finished,
failed or was cancelled.

Transports consume a turn through `Run.guarded()`, entered in the task that
reads the events: it admits the turn against the app's concurrency limit,
bounds its wall-clock time, ends it when the process drains, and closes the
event stream in that same task, so the history is written and the session
lock released where they were taken.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncGenerator
from types import TracebackType

import anyio
from starlette.types import Receive

from ._context import AppContext
from .exceptions import AgentError, OrbiterError
from .models import (
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
from .runtime.loop import AgentEvent

__all__ = ["Run", "RunItem", "as_agent_error", "start_run"]

RunItem = Event | list[Event]
"""What a run yields: an event, or a list of events that were ready together."""

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
    """Turns the agent's events into history messages, usage and steps, as they come."""

    __slots__ = ("answer_start", "calls", "messages", "steps", "text", "usage")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.text: list[str] = []
        self.calls: list[ToolCall] = []
        self.usage = Usage()
        self.steps = 0  # one `Usage` per model call
        self.answer_start = 0  # the output is the text after the last tool round

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

    def record_many(self, events: list[AgentEvent]) -> list[Event]:
        """`record` a batch; returns it without the `Usage` entries (not for clients)."""
        append = self.text.append
        usage_seen = False
        for event in events:
            if type(event) is TextEvent:
                append(event.content)
            else:
                usage_seen = usage_seen or type(event) is Usage
                self.record(event)
        if usage_seen:
            return [e for e in events if type(e) is not Usage]  # type: ignore[misc]
        return events  # type: ignore[return-value]

    def flush(self) -> None:
        if self.text or self.calls:
            self.messages.append(
                Message(role="assistant", content="".join(self.text), tool_calls=self.calls or None)
            )
            self.text = []
            self.calls = []

    def tool_result(self, event: ToolResultEvent) -> None:
        self.flush()
        self.messages.append(
            Message(
                role="tool",
                content=event.content,
                tool_call_id=event.id,
                name=event.name,
                is_error=event.is_error,
            )
        )
        self.answer_start = len(self.messages)

    def output(self) -> str:
        self.flush()
        return "".join(m.content for m in self.messages[self.answer_start :] if m.role == "assistant")


class Run:
    """A turn of `agent` on `input`, optionally within a session."""

    __slots__ = ("agent", "context", "id", "input", "session_id")

    def __init__(
        self, context: AppContext, agent: RegisteredAgent, input: str, session_id: str | None
    ) -> None:
        self.context = context
        self.agent = agent
        self.input = input
        self.session_id = context.limits.check_session_id(session_id) if session_id is not None else None
        self.id = f"{_RUN_PREFIX}{next(_run_numbers):x}"

    def guarded(self, receive: Receive | None = None) -> _Guarded:
        """`events()` under the app's limits: `Overloaded`, `RunTimeout` or
        `ShuttingDown` are raised on leaving when they cut the turn. With
        `receive`, a client disconnect cancels the turn (see `RunGuard.running`)."""
        return _Guarded(self, receive)

    def events(self) -> AsyncGenerator[RunItem, None]:
        """Text, tool and done events; failures raise `OrbiterError`."""
        if self.session_id is None:
            return self._run([])
        return self._session_events(self.session_id)

    async def _session_events(self, session_id: str) -> AsyncGenerator[RunItem, None]:
        store = self.context.store
        async with store.lock(session_id):
            history = await store.history(session_id, agent_name=self.agent.name)
            await store.append(session_id, [Message(role="user", content=self.input)])
            async for event in self._run(history):
                yield event

    async def _run(self, history: list[Message]) -> AsyncGenerator[RunItem, None]:
        agent = self.agent
        transcript = _Transcript()
        record = transcript.record
        stream = agent.stream(self.input, history)
        try:
            async for item in stream:
                if type(item) is list:  # events that were ready together stay together
                    batch = transcript.record_many(item)
                    if batch:
                        yield batch
                else:
                    record(item)  # type: ignore[arg-type]
                    if type(item) is not Usage:  # usage is summed into `done`, not streamed
                        yield item  # type: ignore[misc]
        except Exception as exc:
            raise as_agent_error(exc, agent.name) from exc
        finally:
            try:
                await stream.aclose()  # type: ignore[attr-defined]
            finally:  # even when closing the agent fails or is cancelled
                transcript.flush()
                if self.session_id is not None and transcript.messages:
                    with anyio.CancelScope(shield=True):
                        await self.context.store.append(self.session_id, transcript.messages)
        yield DoneEvent(
            output=transcript.output(),
            agent_name=agent.name,
            session_id=self.session_id,
            steps=max(transcript.steps, 1),
            usage=transcript.usage,
        )


class _Guarded:
    """`async with run.guarded() as events:` (a class: this is on every turn's path)."""

    __slots__ = ("_events", "_receive", "_run", "_running")

    def __init__(self, run: Run, receive: Receive | None) -> None:
        self._run = run
        self._receive = receive

    async def __aenter__(self) -> AsyncGenerator[RunItem, None]:
        self._running = self._run.context.guard.running(self._receive)
        self._running.__enter__()
        try:
            self._events = self._run.events()
        except BaseException:
            self._running.__exit__(None, None, None)
            raise
        return self._events

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            await self._events.aclose()
        except BaseException as error:
            if self._running.__exit__(type(error), error, error.__traceback__):
                return True
            raise
        return self._running.__exit__(exc_type, exc, traceback)


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
