"""What users would pick instead: the same API the idiomatic FastAPI way.

Written as the original `orbiter-server` package does it: pydantic request,
response and event models, `APIRouter`s, an agent whose `stream()` is an
async generator of events, `StreamingResponse` for SSE and FastAPI's
`WebSocket` for `/ws/chat`. Neither slowed down on purpose nor hand-tuned.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError

__all__ = ["app"]

_WORD = re.compile(r"\s*\S+\s*|\s+")


# --- models ---------------------------------------------------------------


class ChatRequest(BaseModel):
    input: str
    agent_name: str | None = None
    session_id: str | None = None
    stream: bool = False


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class ChatResponse(BaseModel):
    output: str
    agent_name: str
    session_id: str | None = None
    steps: int = 1
    usage: Usage = Field(default_factory=Usage)


class AgentInfo(BaseModel):
    name: str
    model: str
    description: str


class Message(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class TextEvent(BaseModel):
    type: Literal["text"] = "text"
    content: str


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    output: str
    agent_name: str
    session_id: str | None = None
    steps: int = 1
    usage: Usage = Field(default_factory=Usage)


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    error: str
    code: str


# --- the agent and the registry ---------------------------------------------


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


def register_agent(name: str, agent: EchoAgent) -> None:
    registered_agents[name] = agent


def get_agent(name: str | None) -> EchoAgent:
    if name is None:
        return next(iter(registered_agents.values()))
    agent = registered_agents.get(name)
    if agent is None:
        raise HTTPException(status_code=404, detail=f"Agent {name!r} not found")
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
        async for event in agent.stream(input, [*history, Message(role="user", content=input)]):
            if isinstance(event, Usage):
                usage = event
                continue
            text.append(event.content)
            yield event
        output = "".join(text)
        if session_id is not None:
            store.messages[session_id] += [
                Message(role="user", content=input),
                Message(role="assistant", content=output),
            ]
        yield DoneEvent(output=output, agent_name=agent.name, session_id=session_id, usage=usage)
    finally:
        if lock is not None:
            lock.release()


async def sse_events(events: AsyncIterator[TextEvent | DoneEvent]) -> AsyncIterator[str]:
    event_id = 0
    async for event in events:
        event_id += 1
        yield f"id: {event_id}\ndata: {event.model_dump_json()}\n\n"
    yield "data: [DONE]\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# --- routers ----------------------------------------------------------------

chat_router = APIRouter(tags=["chat"])


@chat_router.post("/chat", response_model=ChatResponse)
async def chat(request: ChatRequest):  # type: ignore[no-untyped-def]
    agent = get_agent(request.agent_name)
    events = run_agent(agent, request.input, request.session_id)
    if request.stream:
        return StreamingResponse(
            sse_events(events), media_type="text/event-stream", headers=SSE_HEADERS
        )
    done: DoneEvent | None = None
    async for event in events:
        if isinstance(event, DoneEvent):
            done = event
    assert done is not None
    return ChatResponse(
        output=done.output,
        agent_name=done.agent_name,
        session_id=done.session_id,
        steps=done.steps,
        usage=done.usage,
    )


agent_router = APIRouter(tags=["agents"])


@agent_router.get("/agents", response_model=list[AgentInfo])
async def list_agents() -> list[AgentInfo]:
    return [
        AgentInfo(name=name, model=agent.model, description=agent.description)
        for name, agent in registered_agents.items()
    ]


stream_router = APIRouter(tags=["streaming"])


@stream_router.get("/stream")
async def stream(
    input: str, agent_name: str | None = None, session_id: str | None = None
) -> StreamingResponse:
    agent = get_agent(agent_name)
    return StreamingResponse(
        sse_events(run_agent(agent, input, session_id)),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


@stream_router.websocket("/ws/chat")
async def ws_chat(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_text()
            try:
                request = ChatRequest.model_validate_json(data)
                agent = get_agent(request.agent_name)
            except ValidationError as exc:
                error = ErrorEvent(error=f"Invalid message: {exc}", code="bad_request")
                await websocket.send_text(error.model_dump_json())
                continue
            except HTTPException as exc:
                error = ErrorEvent(error=str(exc.detail), code="agent_not_found")
                await websocket.send_text(error.model_dump_json())
                continue
            async for event in run_agent(agent, request.input, request.session_id):
                await websocket.send_text(event.model_dump_json())
    except WebSocketDisconnect:
        pass


def create_app() -> FastAPI:
    app = FastAPI(title="orbiter-server (FastAPI peer)")
    app.include_router(chat_router)
    app.include_router(agent_router)
    app.include_router(stream_router)
    return app


register_agent("assistant", EchoAgent("assistant", float(os.environ.get("BENCH_ECHO_DELAY") or 0)))
app = create_app()
