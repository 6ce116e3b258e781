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

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from starlette.types import Receive

from .._sse import done_frame, frame, text_frames
from ..exceptions import AgentError, OrbiterError, RunCancelled
from ..models import (
    ChatRequest,
    DoneEvent,
    ErrorEvent,
    Event,
    Message,
    RunError,
    RunInfo,
    StartEvent,
    TextEvent,
    ToolCall,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
)
from ..registry import RegisteredAgent
from ..runtime.loop import AgentEvent, tool_message
from ..stores._turns import LockedTurns, finish_run
from ..stores.base import OpenTurn, RunEnd, SessionStore
from ..tracing import RunSpan, end_run_span, start_run_span
from .log import log_run_end
from .turn import Turn
from .window import fit_history

if TYPE_CHECKING:
    from .._context import AppContext

__all__ = ["Emit", "Run", "RunItem", "as_agent_error", "new_run_id", "start_chat", "start_run"]

RunItem = Event | list[str]
"""What a run emits: an event, or a list of text deltas that were ready together."""

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


_POOL_SIZE = 4096
_pool = b""
_used = _POOL_SIZE  # bytes of `_pool` handed out
_stamp = ""  # the time the pool was read, in hex milliseconds


def _forget_pool() -> None:
    global _used
    _used = _POOL_SIZE


# a forked worker must not hand out the ids its parent had in hand
os.register_at_fork(after_in_child=_forget_pool)


def new_run_id() -> str:
    """32 hex digits: a time in milliseconds (48 bits), then 80 random bits.
    URL-safe, unique across processes, and unguessable, since a run id is all
    it takes to follow or cancel the run. Ids that grow with time keep a
    persistent journal's index of runs appended at its end: the runs of a
    batch of writes share its last pages instead of each dirtying a page.

    The OS's random bytes are read 4 KiB at a time, one system call per 409
    ids, and the time is read with them: the ids of one read share it.
    """
    global _pool, _used, _stamp
    if _used + 10 > _POOL_SIZE:
        _pool, _used = os.urandom(_POOL_SIZE), 0
        _stamp = f"{time.time_ns() // 1_000_000:012x}"
    _used += 10
    return _stamp + _pool[_used - 10 : _used].hex()


Emit = Callable[[RunItem, bytes], Awaitable[None]]
"""Where a transport takes the items of a run as they come, each with its
SSE frames, as journaled."""


class Run:
    """A turn of `agent` on `input`, optionally within a session.

    Everything a streamed run emits is framed here, as SSE, appended to the
    store's run journal, then handed to the transport: the journal is the
    run's one account, which any client, on any worker, can follow.
    """

    __slots__ = (
        "_answer",
        "_appending",
        "_grace",
        "_opened",
        "_span",
        "_stopped",
        "_turn",
        "_unsent",
        "agent",
        "background",
        "context",
        "created",
        "detached_at",
        "final",
        "first_output",
        "head",
        "history",
        "id",
        "info",
        "input",
        "journal",
        "outcome",
        "result",
        "seq",
        "session_id",
        "settings",
    )

    def __init__(
        self,
        context: AppContext,
        agent: RegisteredAgent,
        input: str,
        session_id: str | None,
        *,
        background: bool = False,
        history: Sequence[Message] = (),
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.context = context
        self.agent = agent
        self.input = input
        # what came before `input`: the history of a run without a session, and
        # of a session that has none yet, which stores it as its own
        self.history = history
        # model settings of this run (`temperature`, `max_tokens`), for an agent that takes them
        self.settings = settings if settings and agent.takes_settings else None
        self.session_id = context.limits.check_session_id(session_id) if session_id is not None else None
        self.background = background  # no disconnect cancels it
        self.id = new_run_id()
        self.created = time.monotonic()
        self.first_output: float | None = None  # monotonic time of its first text or tool call
        self.head = b""  # `id: <run_id>:`, of every SSE frame of a streamed run
        self.seq = 0  # frames so far
        self.journal = context.store.runs
        self.info: RunInfo | None = None  # once opened
        self._turn: Turn | None = None  # while it runs
        self._stopped = False
        self._grace: asyncio.TimerHandle | None = None
        self._appending: bytes | None = None  # frames being journaled
        self._opened: OpenTurn | None = None  # the session's turn, from its first store step to its last
        self._answer: Sequence[Message] = ()  # what the turn adds to the session's history
        self._unsent = b""  # frames journaled whose sending a cancel cut short
        self._span: RunSpan | None = None  # its OpenTelemetry span, current while it drives
        self.detached_at: float | None = None  # when the transport lost its client
        # what the turn produced, once the agent's stream is closed: also after a
        # failure or a cancel, for a transport that ends every turn with `done`
        self.result: DoneEvent | None = None
        self.outcome: DoneEvent | ErrorEvent | None = None  # the run's last event, once ended
        self.final = b""  # the last frames: `done` or `error`, then `[DONE]`

    def open(self, *, idempotency_key: str | None = None, fingerprint: str = "") -> Awaitable[RunInfo]:
        """Record the run in the journal; awaited, gives the run to serve: this
        one, or the one an earlier request with the same `idempotency_key` started.

        It returns the journal's own awaitable: no coroutine of its own per run.
        """
        self.info = RunInfo(id=self.id, agent_name=self.agent.name, session_id=self.session_id)
        return self.journal.start(self.info, idempotency_key=idempotency_key, fingerprint=fingerprint)

    async def drive(self, emit: Emit | None = None, receive: Receive | None = None) -> DoneEvent | None:
        """Run the turn to its end under the app's guard; returns its `done` event.

        `emit` gets the `start` event first, then every text, tool call and
        tool result as it comes (text deltas that were ready together as one
        list of strings); `done` is returned, not emitted, and the run's last
        frames are in `final`. Failures raise `OrbiterError`: `Overloaded`,
        `RunTimeout` or `ShuttingDown` when the guard refuses or cuts the
        turn, `RunCancelled` after `cancel()`. Errors raised by `emit` itself
        (a transport's) pass through unchanged.

        A transport whose client leaves calls `detach()`; with `receive`, a
        disconnect does that by itself. The run then goes on for the app's
        `disconnect_grace` and ends then (None is returned) unless a client
        follows it again; a background run is never ended so.

        The run is pushed to the transport rather than pulled from it: the
        turn costs one coroutine, not a generator per layer.
        """
        # a JSON turn in a session starts its record in the turn's first store step
        start_in_turn = self.info is None and emit is None and self.session_id is not None
        if start_in_turn:
            self.info = RunInfo(id=self.id, agent_name=self.agent.name, session_id=self.session_id)
        elif self.info is None:
            await self.open()
        self.journal.watch(self.id, self.cancel)  # until the journal is told the run ended
        self._span = start_run_span(self)  # ended by `_end`
        done: DoneEvent | None = None  # None: the client went away, the turn was cancelled
        try:
            if emit is not None:  # first, whatever comes next: a stream begins with `start`
                await self._start(emit)
            if self._stopped:
                raise RunCancelled("The turn was cancelled")
            with self.context.guard.running(receive) as turn:
                self._turn = turn
                turn.on_disconnect = self.detach
                try:
                    if self.session_id is None:
                        done = await self._drive(turn, self.history, emit)
                    else:
                        limit = self.agent.history_limit
                        self._opened = await _turns_of(self.context.store).begin_turn(
                            self.session_id,
                            agent_name=self.agent.name,
                            messages=[Message(role="user", content=self.input)],
                            seed=self.history,  # a new session adopts the client's history
                            # one more than shown: tells `fit_history` whether the window cut
                            window=None if limit is None else limit + 1,
                            run=self.info if start_in_turn else None,
                        )
                        done = await self._drive(turn, self._opened.history, emit)
                finally:
                    self._turn = None
                    if self._grace is not None:
                        self._grace.cancel()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if self._appending is not None:
                    await self._settle_append()
                await self._end(None, exc)
            raise
        if self._opened is None:
            await self._end(done, None)
        else:
            with anyio.CancelScope(shield=True):  # the history is written here
                await self._end(done, None)
        return done

    async def _start(self, emit: Emit) -> None:
        """Send `start`, frame 1, which the journal made from the run's record."""
        self.head = b"id: %b:" % self.id.encode()
        start = self.start_event()
        self.seq = 1
        await emit(start, frame(self.head, 1, start))

    def _end(self, done: DoneEvent | None, exc: BaseException | None) -> Awaitable[None]:
        """Write the run's end to the journal, its record and its last frames,
        when the returned awaitable (the journal's own) is awaited. A turn in a
        session writes it with the turn's answer, in the turn's last store step."""
        info, frames = self._ending(done, exc)
        limits = self.context.limits
        if self._opened is not None:
            end = RunEnd(info, frames, max_bytes=limits.max_run_journal_bytes, retention=limits.run_retention)
            return self._end_turn(end, done)
        self._report()
        return self.journal.finish(
            info, frames, max_bytes=limits.max_run_journal_bytes, retention=limits.run_retention
        )

    async def _end_turn(self, end: RunEnd, done: DoneEvent | None) -> None:
        opened, self._opened = self._opened, None
        assert opened is not None
        try:
            await _turns_of(self.context.store).end_turn(opened, self._answer, run=end)
        except OrbiterError as failure:
            # the answer is not stored: the turn failed, whatever it was about to report
            if end.frames is not None:
                self.seq -= 2  # the last frames are made again
            end.info, end.frames = self._ending(None, failure)
            self._report()
            with contextlib.suppress(OrbiterError):
                await finish_run(self.journal, end)
            raise failure from None
        self._report()

    def _ending(
        self, done: DoneEvent | None, exc: BaseException | None
    ) -> tuple[RunInfo, list[bytes] | None]:
        """The run's end: its record ended, its last event (`outcome`) and frames (`final`)."""
        info = self.info  # the record the journal was given at the start, now ended
        assert info is not None
        last: DoneEvent | ErrorEvent
        if done is not None:
            last = done
            info.status = "completed"
        else:
            if exc is None:
                exc = RunCancelled("The run was cancelled: its client went away")
            last = self.error_event(exc)
            info.status = "cancelled" if last.code == "cancelled" else "failed"
            info.error = RunError(code=last.code, message=last.error)
        self.outcome = last
        info.ended_at = datetime.now(UTC)
        result = self.result
        if result is not None:
            info.output, info.steps, info.usage = result.output, result.steps, result.usage
        frames: list[bytes] | None = None  # a JSON run streamed nothing: its record says it all
        if self.seq:
            frames = [frame(self.head, self.seq + 1, last), done_frame(self.head, self.seq + 2)]
            self.seq += 2
            self.final = self._unsent + frames[0] + frames[1]
        return info, frames

    def _report(self) -> None:
        """The run has ended: log it, end its span, tell the app's observers."""
        log_run_end(self)
        if self._span is not None:
            end_run_span(self._span, self)
        for observe in self.context.run_observers:
            observe(self)

    async def _settle_append(self) -> None:
        """After an append cut short (a cancel while a shared journal wrote),
        whether the journal kept its frames: their numbers stay taken and they
        go out before the end (`_unsent`); if not, their numbers are given back."""
        chunk, self._appending = self._appending, None
        assert chunk is not None
        count = chunk.count(b"\n\n")
        try:
            piece = await self.journal.read(self.id, self.seq - count, wait=0)
        except OrbiterError:  # dropped since, or the store is down: keep the numbers taken
            self._unsent = chunk
            return
        if piece is not None and piece.frames:
            self._unsent = chunk
        else:
            self.seq -= count

    def start_event(self) -> StartEvent:
        return StartEvent(run_id=self.id, agent_name=self.agent.name, session_id=self.session_id)

    def error_event(self, exc: BaseException) -> ErrorEvent:
        """How a failure of this run reads in a stream."""
        if isinstance(exc, asyncio.CancelledError | anyio.get_cancelled_exc_class()):
            return ErrorEvent(run_id=self.id, error="The run was cancelled", code="cancelled")
        error = as_agent_error(exc, self.agent.name) if isinstance(exc, Exception) else None
        if error is None:
            return ErrorEvent(run_id=self.id, error=f"Agent {self.agent.name!r} failed", code="agent_error")
        return ErrorEvent(run_id=self.id, error=error.message, code=error.code)

    def cancel(self) -> None:
        """Stop the turn at a client's request, from another task: `drive`
        raises `RunCancelled`, after storing what the agent had produced.
        A run not started yet raises it at once; one that has ended ignores it."""
        self._stopped = True
        if self._turn is not None:
            self._turn.stop()

    def detach(self) -> None:
        """The transport lost its client: end the run after the app's
        `disconnect_grace` unless a client follows it by then (any worker's,
        through the journal); a background run goes on regardless."""
        turn = self._turn
        if self.detached_at is not None or turn is None:
            return
        self.detached_at = time.time()
        if self.background:
            return
        grace = self.context.limits.disconnect_grace
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: no timer to wait with
            loop = None
        if grace <= 0 or loop is None:
            turn.drop()
            return

        def grace_over() -> None:
            _keep(loop.create_task(self._end_unless_followed(turn)))

        self._grace = loop.call_later(grace, grace_over)

    async def _end_unless_followed(self, turn: Turn) -> None:
        assert self.detached_at is not None
        if self._turn is turn and not await self.journal.touched_since(self.id, self.detached_at):
            turn.drop()

    async def _drive(self, turn: Turn, history: Sequence[Message], emit: Emit | None) -> DoneEvent:
        """Run the agent; what it produced for the session's history is left in `_answer`."""
        agent = self.agent
        transcript = _Transcript(keep_messages=self._opened is not None)
        record = transcript.record
        text = transcript.text
        journal = self.journal
        max_bytes = self.context.limits.max_run_journal_bytes
        head = self.head
        emitting = False  # whether an error comes from `emit`, not from the agent
        stream: AsyncIterator[AgentEvent | list[str]] | None = None
        try:
            if agent.history_limit is not None:
                history = fit_history(history, agent.history_limit)
            stream = (
                agent.stream(self.input, history)
                if self.settings is None
                else agent.stream(self.input, history, **self.settings)
            )
            async for item in stream:
                if self.first_output is None and type(item) is not Usage:
                    self.first_output = time.monotonic()
                if type(item) is list:  # text deltas that were ready together stay together
                    text += item
                    if emit is not None:
                        chunk = text_frames(head, self.seq + 1, item)
                        self.seq += len(item)
                        self._appending = chunk
                        await journal.append_chunk(self.id, chunk, len(item), max_bytes=max_bytes)
                        self._appending = None
                        emitting = True
                        await emit(item, chunk)
                        emitting = False
                else:
                    record(item)  # type: ignore[arg-type]
                    if type(item) is not Usage and emit is not None:  # usage is summed into `done`
                        self.seq += 1
                        chunk = frame(head, self.seq, item)  # type: ignore[arg-type]
                        self._appending = chunk
                        await journal.append_chunk(self.id, chunk, 1, max_bytes=max_bytes)
                        self._appending = None
                        emitting = True
                        await emit(item, chunk)  # type: ignore[arg-type]
                        emitting = False
        except Exception as exc:
            if emitting:
                raise
            raise as_agent_error(exc, agent.name) from exc
        finally:
            try:
                if stream is not None:
                    await stream.aclose()  # type: ignore[attr-defined]
            finally:  # even when closing the agent fails or is cancelled
                self.result = DoneEvent(
                    run_id=self.id,
                    output=transcript.flush(),
                    agent_name=agent.name,
                    session_id=self.session_id,
                    steps=transcript.steps,
                    usage=transcript.usage,
                )
                self._answer = transcript.messages
        if self.result.steps == 0:  # an agent that reports no usage still took a step
            self.result.steps = 1
        return self.result


def _turns_of(store: SessionStore) -> SessionStore | LockedTurns:
    """What serves a store's turns: itself, unless it predates `begin_turn`."""
    return store if hasattr(store, "begin_turn") else LockedTurns(store)


_tasks: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    """Hold a fire-and-forget task until it is done (the loop keeps only weak references)."""
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def start_run(
    context: AppContext,
    agent_name: str | None,
    input: str,
    session_id: str | None,
    *,
    source: str = "body",
    background: bool = False,
    history: Sequence[Message] = (),
    settings: Mapping[str, Any] | None = None,
) -> Run:
    """A run of the named (or default) agent; raises before anything is sent.

    `source` (`body` or `query`) is where a too-long `input` is reported.
    `history` (messages before `input`) serves a run without a session, and
    seeds a session that has no history yet; a stored history wins over it.
    """
    context.limits.check_input(input, source)
    agent = context.agents.resolve(agent_name)
    run = Run(context, agent, input, session_id, background=background, history=history, settings=settings)
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
    return start_run(
        context, request.agent_name, request.input, request.session_id, background=request.background
    )
