"""Code written for the original `orbiter-server` keeps working after renaming the import.

The names, defaults and programs below are the original package's, with
`orbiter_server` replaced by `orbiter_asgi`.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from orbiter_asgi import Agent, create_app, register_agent, registered_agents
from tests.helpers import assert_start, client_for

ORIGINAL_NAMES = {
    "orbiter_asgi": [
        "AgentInfo",
        "AppendMessageRequest",
        "ChatRequest",
        "ChatResponse",
        "CreateSessionRequest",
        "Session",
        "SessionMessage",
        "SessionSummary",
        "UpdateSessionRequest",
        "WorkspaceFile",
        "WorkspaceFileContent",
        "create_app",
        "register_agent",
    ],
    "orbiter_asgi.app": [
        "ChatRequest",
        "ChatResponse",
        "agent_router",
        "create_app",
        "register_agent",
        "session_router",
        "stream_router",
    ],
    "orbiter_asgi.agents": [
        "AgentInfo",
        "WorkspaceFile",
        "WorkspaceFileContent",
        "agent_router",
        "get_agent",
        "list_agents",
        "list_workspace_files",
        "read_workspace_file",
    ],
    "orbiter_asgi.sessions": [
        "AppendMessageRequest",
        "CreateSessionRequest",
        "Session",
        "SessionMessage",
        "SessionSummary",
        "UpdateSessionRequest",
        "append_message",
        "create_session",
        "delete_session",
        "get_session",
        "list_messages",
        "list_sessions",
        "session_router",
        "update_session",
    ],
    "orbiter_asgi.streaming": ["sse_stream", "stream_router", "ws_chat"],
}

# the route names of the original's handlers, with path parameters to build their URLs
ROUTE_NAMES = {
    "chat": ({}, "/chat"),
    "list_agents": ({}, "/agents"),
    "get_agent": ({"agent_name": "a"}, "/agents/a"),
    "list_workspace_files": ({"agent_name": "a"}, "/agents/a/workspace"),
    "read_workspace_file": ({"agent_name": "a", "file_name": "d/f.txt"}, "/agents/a/workspace/d/f.txt"),
    "create_session": ({}, "/sessions"),
    "list_sessions": ({}, "/sessions"),
    "get_session": ({"session_id": "s"}, "/sessions/s"),
    "update_session": ({"session_id": "s"}, "/sessions/s"),
    "delete_session": ({"session_id": "s"}, "/sessions/s"),
    "list_messages": ({"session_id": "s"}, "/sessions/s/messages"),
    "append_message": ({"session_id": "s"}, "/sessions/s/messages"),
    "sse_stream": ({}, "/stream"),
    "ws_chat": ({}, "/ws/chat"),
}


@pytest.fixture
def module_registry() -> Iterator[None]:
    """The module registry as the test found it, whatever the test registered."""
    before = dict(registered_agents)
    default = registered_agents.default_name
    yield
    registered_agents.clear()
    for name, agent in before.items():
        registered_agents.register(agent, name=name, default=name == default)


# --- names and models ------------------------------------------------------------------------


@pytest.mark.parametrize("module_name", sorted(ORIGINAL_NAMES))
def test_every_public_name_of_the_original_imports_from_the_same_module(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [name for name in ORIGINAL_NAMES[module_name] if not hasattr(module, name)]
    assert missing == []


def test_models_build_with_the_original_defaults() -> None:
    from orbiter_asgi import (
        AgentInfo,
        AppendMessageRequest,
        ChatRequest,
        ChatResponse,
        CreateSessionRequest,
        Session,
        SessionMessage,
        SessionSummary,
        UpdateSessionRequest,
        WorkspaceFile,
        WorkspaceFileContent,
    )

    request = ChatRequest(message="hi")
    assert (request.input, request.agent_name, request.stream) == ("hi", None, False)
    response = ChatResponse()
    assert (response.output, response.agent_name, response.steps) == ("", "", 0)
    info = AgentInfo(name="a")
    assert (info.model, info.is_default, info.tools, info.handoffs) == ("", False, [], [])
    assert (info.max_steps, info.max_tokens) == (0, None)
    assert WorkspaceFile(name="notes.md").model_dump(exclude_none=True) == {
        "name": "notes.md",
        "path": "notes.md",
        "size": 0,
        "artifact_type": "text",
        "version_count": 1,
    }
    content = WorkspaceFileContent(name="notes.md", content="# Notes")
    assert (content.artifact_type, content.version_count) == ("text", 1)
    session = Session()
    assert len(session.id) == 32 and int(session.id, 16) >= 0
    assert (session.agent_name, session.title, session.messages) == (None, "", [])
    assert isinstance(session.created_at, datetime) and session.created_at.tzinfo is not None
    assert Session().id != session.id
    assert SessionMessage(role="user", content="hi").content == "hi"
    assert AppendMessageRequest(role="assistant", content="ok").role == "assistant"
    assert (CreateSessionRequest().agent_name, CreateSessionRequest().title) == (None, "")
    assert UpdateSessionRequest(title="New").title == "New"
    summary = SessionSummary(id="s", agent_name="a", title="t", message_count=2)
    assert (summary.title, summary.message_count, summary.metadata) == ("t", 2, {})


def test_the_pydantic_surface() -> None:
    from orbiter_asgi import ChatResponse, Session, SessionMessage

    response = ChatResponse(output="Python is a language.", agent_name="assistant")
    assert response.model_dump() == {
        "output": "Python is a language.",
        "agent_name": "assistant",
        "session_id": None,
        "steps": 0,
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        "run_id": None,
    }
    assert "session_id" not in response.model_dump(exclude_none=True)
    assert "run_id" not in response.model_dump(exclude_none=True)
    assert response.model_dump_json(exclude_none=True).startswith('{"output":"Python is a language."')
    assert ChatResponse.model_validate_json(response.model_dump_json()) == response
    assert ChatResponse.model_validate(response.model_dump()) == response
    assert ChatResponse.model_validate(response) is response
    assert response.model_copy(update={"steps": 3}).steps == 3 and response.steps == 0

    session = Session(title="Chat", messages=[SessionMessage(role="user", content="hi")])
    python = session.model_dump()
    assert python["created_at"] == session.created_at  # python mode keeps datetimes, as pydantic does
    assert python["messages"] == [{"role": "user", "content": "hi"}]
    assert session.model_dump(mode="json")["created_at"].endswith("Z")
    assert Session.model_validate(session.model_dump(mode="json")) == session

    class Row:  # an ORM-style object, read by attribute
        role = "assistant"
        content = "from attributes"

    assert SessionMessage.model_validate(Row()).content == "from attributes"
    with pytest.raises(msgspec.ValidationError):
        ChatResponse.model_validate({"steps": "many"})
    with pytest.raises(msgspec.DecodeError):  # the base of msgspec.ValidationError
        SessionMessage.model_validate_json(b'{"role": "user"')

    schema = Session.model_json_schema()
    properties = schema["$defs"]["Session"]["properties"]
    assert {"id", "agent_name", "title", "messages", "created_at"} <= set(properties)


# --- per-app registries ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("module_registry")
async def test_register_agent_on_an_app_touches_that_app_only() -> None:
    first, second = create_app(), create_app()
    register_agent(first, Agent("only_first"))
    register_agent("everywhere", Agent("everywhere"))  # after both apps were made: still seen, live
    assert "only_first" not in registered_agents
    async with client_for(first) as one, client_for(second) as two:
        assert [a["name"] for a in (await one.get("/agents")).json()] == ["everywhere", "only_first"]
        assert [a["name"] for a in (await two.get("/agents")).json()] == ["everywhere"]
        assert (await two.post("/chat", json={"agent_name": "only_first", "input": "x"})).status_code == 404
        # an app's first own agent is its default, as with the original's per-app registry
        answer = await one.post("/chat", json={"message": "hi"})
        default = (await one.get("/agents/only_first")).json()
        other = (await two.post("/chat", json={"input": "hi"})).json()
    assert answer.json()["agent_name"] == "only_first"
    assert default["is_default"] is True
    assert other["agent_name"] == "everywhere"


@pytest.mark.anyio
async def test_the_original_quickstart_with_a_default_agent() -> None:
    app = create_app(agents=[])
    register_agent(app, Agent("assistant", model="echo"))
    register_agent(app, Agent("coder", model="echo", temperature=0.2, max_tokens=512), default=True)
    async with client_for(app) as client:
        chat = await client.post("/chat", json={"message": "What is Python?"})
        coder = (await client.get("/agents/coder")).json()
    assert chat.json()["agent_name"] == "coder"
    assert (coder["is_default"], coder["temperature"], coder["max_tokens"]) == (True, 0.2, 512)


@pytest.mark.anyio
async def test_agent_details_read_the_original_agent_attributes() -> None:
    class Researcher:  # shaped like the original's Agent: tools and handoffs as dicts by name
        name = "researcher"
        model = "openai:gpt-4o"
        max_steps = 4
        temperature = 0.7
        max_tokens = 1024

        def __init__(self) -> None:
            self.tools = {"search": object(), "fetch": object()}
            self.handoffs = {"writer": object()}

        async def run(self, input: str) -> str:
            return input

    async with client_for(create_app(agents=[Researcher()])) as client:
        detail = (await client.get("/agents/researcher")).json()
    assert detail == {
        "name": "researcher",
        "model": "openai:gpt-4o",
        "description": "",
        "is_default": True,
        "instructions": "",
        "tools": ["search", "fetch"],
        "handoffs": ["writer"],
        "max_steps": 4,
        "temperature": 0.7,
        "max_tokens": 1024,
    }


# --- sessions ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_session_with_a_title() -> None:
    from orbiter_asgi import ChatResponse, Session, SessionSummary

    async with client_for(create_app(agents=[Agent("assistant")])) as client:
        created = await client.post("/sessions", json={"agent_name": "assistant", "title": "Chat"})
        session = Session.model_validate_json(created.content)
        renamed = await client.patch(f"/sessions/{session.id}", json={"title": "Renamed"})
        chat = await client.post("/chat", json={"message": "hi", "session_id": session.id})
        listed = [SessionSummary.model_validate(s) for s in (await client.get("/sessions")).json()]
        read = Session.model_validate_json((await client.get(f"/sessions/{session.id}")).content)
    assert created.status_code == 201 and session.title == "Chat"
    assert renamed.json()["title"] == "Renamed" and renamed.json()["agent_name"] == "assistant"
    assert ChatResponse.model_validate_json(chat.content).output == "hi"
    assert [(s.id, s.title, s.message_count) for s in listed] == [(session.id, "Renamed", 2)]
    assert read.title == "Renamed" and [m.content for m in read.messages] == ["hi", "hi"]


@pytest.mark.anyio
async def test_unknown_body_fields_are_ignored_and_wrong_types_still_422() -> None:
    async with client_for(create_app(agents=[Agent("assistant")])) as client:
        created = await client.post("/sessions", json={"title": "t", "color": "blue", "tags": [1]})
        patched = await client.patch(f"/sessions/{created.json()['id']}", json={"pinned": True})
        chat = await client.post("/chat", json={"input": "hi", "temperature": 2, "extra": {"a": 1}})
        wrong = await client.post("/sessions", json={"title": 7})
        wrong_patch = await client.patch(f"/sessions/{created.json()['id']}", json={"title": ["x"]})
        sessions = (await client.get("/sessions")).json()
    assert created.status_code == 201 and "color" not in created.json()
    assert patched.status_code == 200 and patched.json()["title"] == "t"
    assert chat.status_code == 200 and chat.json()["output"] == "hi"
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "title"]
    assert wrong_patch.status_code == 422
    assert [s["title"] for s in sessions] == ["t"]  # the refused bodies changed nothing


@pytest.mark.anyio
async def test_appending_one_message_answers_one_message() -> None:
    from orbiter_asgi import SessionMessage

    async with client_for(create_app(agents=[Agent("assistant")])) as client:
        await client.post("/sessions", json={"id": "s"})
        one = await client.post("/sessions/s/messages", json={"role": "user", "content": "Hello"})
        many = await client.post("/sessions/s/messages", json=[{"role": "assistant", "content": "Hi"}])
    assert one.status_code == 201
    assert SessionMessage.model_validate_json(one.content).content == "Hello"
    assert [m["content"] for m in many.json()] == ["Hi"]


# --- chat and streaming ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("body", [{"input": ""}, {"message": ""}])
async def test_empty_input_is_422_and_runs_nothing(body: dict[str, str]) -> None:
    runs: list[str] = []

    async def agent(input: str) -> str:
        runs.append(input)
        return input

    async with client_for(create_app(agents={"agent": agent})) as client:
        chat = await client.post("/chat", json={**body, "session_id": "s"})
        stream = await client.get("/stream", params={"input": "", "session_id": "s"})
        sessions = (await client.get("/sessions")).json()
    assert chat.status_code == 422
    assert chat.json()["detail"][0]["type"] == "string_too_short"
    assert stream.status_code == 422 and stream.json()["detail"][0]["loc"] == ["query", "input"]
    assert runs == [] and sessions == []


def test_the_guide_websocket_client_reads_until_done_even_when_the_agent_fails() -> None:
    async def broken(input: str) -> AsyncIterator[str]:
        yield "partial"
        raise RuntimeError("model exploded")

    app = create_app(agents={"broken": broken, "assistant": Agent("assistant")})
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        turns = [
            ({"message": "hi", "agent_name": "broken"}, ["start", "error", "done"]),
            ({"message": ""}, ["error", "done"]),  # refused before it became a run: no start
            ({"agent_name": "x"}, ["error", "done"]),
        ]
        for turn, kinds in turns:
            ws.send_json(turn)
            events = [ws.receive_json()]
            while events[-1]["type"] != "done":
                events.append(ws.receive_json())
            assert [e["type"] for e in events if e["type"] != "text"] == kinds
            run_id = assert_start(events[0], "broken") if kinds[0] == "start" else None
            assert events[-2]["run_id"] == events[-1]["run_id"] == run_id
        ws.send_json({"message": "the socket stays open", "agent_name": "assistant"})
        assert_start(ws.receive_json())
        assert ws.receive_json() == {"type": "text", "content": "the "}


# --- route names and pages --------------------------------------------------------------------


def test_the_original_route_names_resolve() -> None:
    app = create_app(agents=[Agent("assistant")])
    for name, (params, path) in ROUTE_NAMES.items():
        assert app.url_path_for(name, **params) == path, name


@pytest.mark.anyio
@pytest.mark.parametrize(("url", "viewer"), [("/docs", "swagger-ui"), ("/redoc", "redoc")])
async def test_docs_pages_show_the_openapi_document(url: str, viewer: str) -> None:
    app = create_app(agents=[Agent("assistant")], api_keys=["k"])
    mounted = Starlette(routes=[Mount("/api", app=create_app(agents=[Agent("assistant")]))])
    async with client_for(app) as client, client_for(mounted) as under_prefix:
        page = await client.get(url)  # public, as /openapi.json is, with keys on
        document = await client.get("/openapi.json")
        locked = await client.get("/agents")
        prefixed = await under_prefix.get(f"/api{url}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert viewer in page.text and '"/openapi.json"' in page.text
    assert document.status_code == 200 and locked.status_code == 401
    assert '"/api/openapi.json"' in prefixed.text


@pytest.mark.anyio
async def test_docs_pages_can_be_turned_off_or_moved() -> None:
    options: dict[str, Any] = {"docs_url": None, "redoc_url": "/reference"}
    app = create_app(agents=[Agent("assistant")], api_keys=[], **options)
    secured = create_app(agents=[Agent("assistant")], api_keys=["k"], **options)
    async with client_for(app) as client, client_for(secured) as with_keys:
        docs = await client.get("/docs")
        redoc = await client.get("/redoc")
        moved = await with_keys.get("/reference")  # public where it moved
    assert docs.status_code == 404 and redoc.status_code == 404
    assert moved.status_code == 200 and "redoc" in moved.text
