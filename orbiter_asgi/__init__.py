"""orbiter_asgi: serve LLM agents over HTTP as a pure-ASGI app.

A drop-in rebuild of the `orbiter-server` API on Starlette routes and
msgspec structs: chat (JSON or streamed), agents and their workspaces,
persistent sessions, SSE and WebSocket streaming.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from ._version import __version__
from .agents import agent_router
from .app import ChatRequest, ChatResponse, OrbiterApp, create_app, register_agent
from .exceptions import OrbiterError
from .models import (
    AgentInfo,
    AppendMessageRequest,
    CreateSessionRequest,
    DoneEvent,
    ErrorEvent,
    Event,
    Message,
    Model,
    Session,
    SessionMessage,
    SessionSummary,
    TextEvent,
    ToolCallEvent,
    ToolResultEvent,
    UpdateSessionRequest,
    Usage,
    WorkspaceFile,
    WorkspaceFileContent,
)
from .registry import AgentRegistry, registered_agents
from .routing import Router
from .runtime import Agent, Tool, tool
from .sessions import session_router
from .stores import SessionStore, open_store
from .streaming import stream_router

__all__ = [
    "Agent",
    "AgentInfo",
    "AgentRegistry",
    "AppendMessageRequest",
    "ChatRequest",
    "ChatResponse",
    "CreateSessionRequest",
    "DoneEvent",
    "ErrorEvent",
    "Event",
    "JSONResponse",
    "Message",
    "Model",
    "OrbiterApp",
    "OrbiterError",
    "Request",
    "Response",
    "Router",
    "Session",
    "SessionMessage",
    "SessionStore",
    "SessionSummary",
    "TextEvent",
    "Tool",
    "ToolCallEvent",
    "ToolResultEvent",
    "UpdateSessionRequest",
    "Usage",
    "WebSocket",
    "WorkspaceFile",
    "WorkspaceFileContent",
    "__version__",
    "agent_router",
    "create_app",
    "open_store",
    "register_agent",
    "registered_agents",
    "session_router",
    "stream_router",
    "tool",
]
