"""The same API written the idiomatic Litestar way.

msgspec structs for requests, responses and events (Litestar decodes and
encodes them natively), `@get`/`@post`/`@websocket` handlers grouped in
`Router`s, an agent whose `stream()` is an async generator of events,
Litestar's `ServerSentEvent` for SSE and its `WebSocket` for `/ws/chat`, and
sessions in memory as the FastAPI peer keeps them. Neither slowed down on
purpose nor hand-tuned: what a Litestar user would write.

Litestar frames SSE with `\\r\\n` unless a message says otherwise; each
message here asks for `\\n`, the separator of the other targets' wire format.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec
from litestar import Litestar, Router, WebSocket, get, post, websocket
from litestar.exceptions import NotFoundException, WebSocketDisconnect
from litestar.logging import LoggingConfig
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage

__all__ = ["app"]

_WORD = re.compile(r"\s*\S+\s*|\s+")


# --- models ---------------------------------------------------------------


class ChatRequest(msgspec.Struct, kw_only=True):
    input: str
    agent_name: str | None = None
    session_id: str | None = None
    stream: bool = False


class Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class ChatResponse(msgspec.Struct, kw_only=True):
    output: str
    agent_name: str
    session_id: str | None = None
    steps: int = 1
    usage: Usage = msgspec.field(default_factory=Usage)


class AgentInfo(msgspec.Struct):
    name: str
    model: str
    description: str


class Message(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str


class TextEvent(msgspec.Struct, tag="text", tag_field="type"):
    content: str


class DoneEvent(msgspec.Struct, tag="done", tag_field="type", kw_only=True):
    output: str
    agent_name: str
    session_id: str | None = None
    steps: int = 1
    usage: Usage = msgspec.field(default_factory=Usage)


class ErrorEvent(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    error: str
    code: str


# --- the agent, the registry and the sessions ---------------------------------


class EchoAgent:
    """The offline echo model: streams the input back word by word."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.model = "echo"
        self.description = ""
        self.delay = delay

    async def stream(self, input: str, messages: list[Message]) -> AsyncIterator[TextEvent | Usage]:
        chunks = _WORD.findall(input)
        for chunk in chunks:
            if self.delay:
                await asyncio.sleep(self.delay)
            yield TextEvent(content=chunk)
        input_tokens = sum(len(_WORD.findall(m.content)) for m in messages)
        yield Usage(
            input_tokens=input_tokens,
            output_tokens=len(chunks),
            total_tokens=input_tokens + len(chunks),
        )


registered_agents: dict[str, EchoAgent] = {}


def get_agent(name: str | None) -> EchoAgent:
    if name is None:
        return next(iter(registered_agents.values()))
    agent = registered_agents.get(name)
    if agent is None:
        raise NotFoundException(detail=f"Agent {name!r} not found")
    return agent


class SessionStore:
    """In-memory sessions: history per id, one lock per id."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Message]] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    def lock(self, session_id: str) -> asyncio.Lock:
        return self.locks.setdefault(session_id, asyncio.Lock())


store = SessionStore()


async def run_agent(
    agent: EchoAgent, input: str, session_id: str | None
) -> AsyncIterator[TextEvent | DoneEvent]:
    """One turn: history in, events out, messages stored at the end."""
    lock = store.lock(session_id) if session_id is not None else None
    if lock is not None:
        await lock.acquire()
    try:
        history = list(store.messages.setdefault(session_id, [])) if session_id else []
        text: list[str] = []
        usage = Usage()
        async for event in agent.stream(input, [*history, Message("user", input)]):
            if isinstance(event, Usage):
                usage = event
                continue
            text.append(event.content)
            yield event
        output = "".join(text)
        if session_id is not None:
            store.messages[session_id] += [Message("user", input), Message("assistant", output)]
        yield DoneEvent(output=output, agent_name=agent.name, session_id=session_id, usage=usage)
    finally:
        if lock is not None:
            lock.release()


async def sse_messages(events: AsyncIterator[TextEvent | DoneEvent]) -> AsyncIterator[ServerSentEventMessage]:
    event_id = 0
    async for event in events:
        event_id += 1
        yield ServerSentEventMessage(data=msgspec.json.encode(event), id=event_id, sep="\n")
    yield ServerSentEventMessage(data="[DONE]", sep="\n")


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# --- handlers -----------------------------------------------------------------


# Annotated with two response classes, so each answer keeps its own media type
# (with a plain struct in the union, the handler's JSON default would win).
@post("/chat", status_code=200)
async def chat(data: ChatRequest) -> Response[ChatResponse] | ServerSentEvent:
    agent = get_agent(data.agent_name)
    events = run_agent(agent, data.input, data.session_id)
    if data.stream:
        return ServerSentEvent(sse_messages(events), headers=SSE_HEADERS)
    done: DoneEvent | None = None
    async for event in events:
        if isinstance(event, DoneEvent):
            done = event
    assert done is not None
    response = ChatResponse(
        output=done.output,
        agent_name=done.agent_name,
        session_id=done.session_id,
        steps=done.steps,
        usage=done.usage,
    )
    return Response(response)


@get("/agents")
async def list_agents() -> list[AgentInfo]:
    return [
        AgentInfo(name=name, model=agent.model, description=agent.description)
        for name, agent in registered_agents.items()
    ]


@get("/stream")
async def stream(input: str, agent_name: str | None = None, session_id: str | None = None) -> ServerSentEvent:
    agent = get_agent(agent_name)
    return ServerSentEvent(sse_messages(run_agent(agent, input, session_id)), headers=SSE_HEADERS)


_decode_chat = msgspec.json.Decoder(ChatRequest).decode


@websocket("/ws/chat")
async def ws_chat(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    try:
        while True:
            data = await socket.receive_data(mode="text")
            try:
                request = _decode_chat(data)
                agent = get_agent(request.agent_name)
            except msgspec.DecodeError as exc:
                await socket.send_json(ErrorEvent(error=f"Invalid message: {exc}", code="bad_request"))
                continue
            except NotFoundException as exc:
                await socket.send_json(ErrorEvent(error=str(exc.detail), code="agent_not_found"))
                continue
            async for event in run_agent(agent, request.input, request.session_id):
                await socket.send_json(event)
    except WebSocketDisconnect:
        pass


def create_app() -> Litestar:
    return Litestar(
        route_handlers=[
            Router("/", route_handlers=[chat], tags=["chat"]),
            Router("/", route_handlers=[list_agents], tags=["agents"]),
            Router("/", route_handlers=[stream, ws_chat], tags=["streaming"]),
        ],
        # Litestar's own loggers only: by default it configures the root logger too,
        # which in `inprocess.py` (every target in one process) would turn on the
        # other targets' INFO logs
        logging_config=LoggingConfig(configure_root_logger=False),
    )


registered_agents["assistant"] = EchoAgent("assistant", float(os.environ.get("BENCH_ECHO_DELAY") or 0))
app = create_app()
