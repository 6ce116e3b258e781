"""`agent_router`: `/agents`, agent details and workspace files."""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
from starlette.responses import FileResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._codec import encode
from ._context import get_context
from ._http import Endpoint, send_json
from ._workspace import list_files, resolve_file
from .exceptions import NotFoundError
from .models import AgentInfo, AgentSummary, ErrorDetail, WorkspaceFile, WorkspaceFileContent
from .registry import AgentRegistry, RegisteredAgent
from .routing import Operation, Router

__all__ = [
    "AgentInfo",
    "WorkspaceFile",
    "WorkspaceFileContent",
    "agent_router",
    "get_agent",
    "list_agents",
    "list_workspace_files",
    "read_workspace_file",
]


def _agent(scope: Scope) -> RegisteredAgent:
    return get_context(scope).agents.resolve(scope["path_params"]["agent_name"])


def _workspace(agent: RegisteredAgent) -> Path:
    if agent.workspace is None:
        raise NotFoundError(f"Agent {agent.name!r} has no workspace")
    return agent.workspace


def _agent_summary(agent: RegisteredAgent) -> AgentSummary:
    return AgentSummary(name=agent.name, model=agent.model, description=agent.description)


def _agent_info(agent: RegisteredAgent, registry: AgentRegistry) -> AgentInfo:
    return AgentInfo(
        name=agent.name,
        model=agent.model,
        description=agent.description,
        is_default=agent.name == registry.default_name,
        instructions=agent.instructions,
        tools=agent.tools,
        handoffs=agent.handoffs,
        max_steps=agent.max_steps,
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
    )


class ListAgents(Endpoint):
    def __init__(self) -> None:
        # the encoded list, for the registry and version it was made from
        self._cached: tuple[AgentRegistry, int, bytes] | None = None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        registry = get_context(scope).agents
        cached = self._cached
        version = registry.version
        if cached is None or cached[0] is not registry or cached[1] != version:
            body = encode([_agent_summary(agent) for agent in registry.entries()])
            cached = self._cached = (registry, version, body)
        await send_json(send, cached[2])


class GetAgent(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, encode(_agent_info(_agent(scope), get_context(scope).agents)))


class ListWorkspaceFiles(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        workspace = _workspace(_agent(scope))
        files = await anyio.to_thread.run_sync(list_files, workspace)
        await send_json(send, encode(files))


class ReadWorkspaceFile(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        workspace = _workspace(_agent(scope))
        path = await anyio.to_thread.run_sync(resolve_file, workspace, scope["path_params"]["file_name"])
        await FileResponse(path)(scope, receive, send)


# The endpoints carry the original package's handler names, as do their routes
# (`app.url_path_for("get_agent", agent_name="assistant")`).
list_agents = ListAgents()
get_agent = GetAgent()
list_workspace_files = ListWorkspaceFiles()
read_workspace_file = ReadWorkspaceFile()

_ERRORS = {404: ErrorDetail, 503: ErrorDetail}
_TAGS = ["agents"]

agent_router = Router(
    [
        Route("/agents", list_agents, methods=["GET"], name="list_agents"),
        Route("/agents/{agent_name}", get_agent, methods=["GET"], name="get_agent"),
        Route(
            "/agents/{agent_name}/workspace",
            list_workspace_files,
            methods=["GET"],
            name="list_workspace_files",
        ),
        Route(
            "/agents/{agent_name}/workspace/{file_name:path}",
            read_workspace_file,
            methods=["GET"],
            name="read_workspace_file",
        ),
    ],
    operations=[
        Operation(
            method="get", path="/agents", summary="List agents", response=list[AgentSummary], tags=_TAGS
        ),
        Operation(
            method="get", path="/agents/{agent_name}", summary="Describe an agent",
            response=AgentInfo, responses=_ERRORS, tags=_TAGS,
        ),
        Operation(
            method="get", path="/agents/{agent_name}/workspace", summary="List workspace files",
            response=list[WorkspaceFile], responses=_ERRORS, tags=_TAGS,
        ),
        Operation(
            method="get", path="/agents/{agent_name}/workspace/{file_name}",
            summary="Download a workspace file", responses=_ERRORS, tags=_TAGS,
            media_type="application/octet-stream",
        ),
    ],
)
