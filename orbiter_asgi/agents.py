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
from .models import AgentDetail, AgentInfo, ErrorDetail, WorkspaceFile
from .registry import AgentRegistry, RegisteredAgent
from .routing import Operation, Router

__all__ = ["agent_router"]


def _agent(scope: Scope) -> RegisteredAgent:
    return get_context(scope).agents.resolve(scope["path_params"]["name"])


def _workspace(agent: RegisteredAgent) -> Path:
    if agent.workspace is None:
        raise NotFoundError(f"Agent {agent.name!r} has no workspace")
    return agent.workspace


class ListAgents(Endpoint):
    def __init__(self) -> None:
        # the encoded list, for the registry and version it was made from
        self._cached: tuple[AgentRegistry, int, bytes] | None = None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        registry = get_context(scope).agents
        cached = self._cached
        if cached is None or cached[0] is not registry or cached[1] != registry.version:
            body = encode(
                [AgentInfo(name=a.name, model=a.model, description=a.description) for a in registry.entries()]
            )
            cached = self._cached = (registry, registry.version, body)
        await send_json(send, cached[2])


class GetAgent(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        agent = _agent(scope)
        detail = AgentDetail(
            name=agent.name,
            model=agent.model,
            description=agent.description,
            instructions=agent.instructions,
            tools=agent.tools,
            max_steps=agent.max_steps,
        )
        await send_json(send, encode(detail))


class ListWorkspace(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        workspace = _workspace(_agent(scope))
        files = await anyio.to_thread.run_sync(list_files, workspace)
        await send_json(send, encode(files))


class GetWorkspaceFile(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        workspace = _workspace(_agent(scope))
        path = await anyio.to_thread.run_sync(resolve_file, workspace, scope["path_params"]["path"])
        await FileResponse(path)(scope, receive, send)


_NOT_FOUND = {404: ErrorDetail}
_TAGS = ["agents"]

agent_router = Router(
    [
        Route("/agents", ListAgents(), methods=["GET"], name="list_agents"),
        Route("/agents/{name}", GetAgent(), methods=["GET"], name="get_agent"),
        Route("/agents/{name}/workspace", ListWorkspace(), methods=["GET"], name="list_workspace"),
        Route(
            "/agents/{name}/workspace/{path:path}",
            GetWorkspaceFile(),
            methods=["GET"],
            name="get_workspace_file",
        ),
    ],
    operations=[
        Operation(method="get", path="/agents", summary="List agents", response=list[AgentInfo], tags=_TAGS),
        Operation(
            method="get", path="/agents/{name}", summary="Describe an agent",
            response=AgentDetail, responses=_NOT_FOUND, tags=_TAGS,
        ),
        Operation(
            method="get", path="/agents/{name}/workspace", summary="List workspace files",
            response=list[WorkspaceFile], responses=_NOT_FOUND, tags=_TAGS,
        ),
        Operation(
            method="get", path="/agents/{name}/workspace/{path}", summary="Download a workspace file",
            responses=_NOT_FOUND, tags=_TAGS, media_type="application/octet-stream",
        ),
    ],
)
