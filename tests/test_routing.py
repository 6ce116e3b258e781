from __future__ import annotations

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, WebSocketRoute
from starlette.routing import Route as StarletteRoute
from starlette.testclient import TestClient

from orbiter_asgi import (
    Agent,
    JSONResponse,
    Request,
    Router,
    WebSocket,
    agent_router,
    create_app,
    registered_agents,
    session_router,
    stream_router,
)
from tests.helpers import client_for, sse_events

pytestmark = pytest.mark.anyio


class Item(msgspec.Struct):
    name: str
    count: int = 1


async def test_guide_health_check_and_auth_middleware() -> None:
    app = create_app(agents=[Agent("assistant")])

    @app.middleware("http")
    async def auth_middleware(request: Request, call_next):  # type: ignore[no-untyped-def]
        api_key = request.headers.get("X-API-Key")
        if not api_key:
            return JSONResponse(status_code=401, content={"error": "Missing API key"})
        response = await call_next(request)
        response.headers["X-Checked"] = "yes"
        return response

    @app.get("/health")
    async def health():  # type: ignore[no-untyped-def]
        return {"status": "ok", "agents": len(app.agents)}

    async with client_for(app) as client:
        denied = await client.get("/health")
        ok = await client.get("/health", headers={"X-API-Key": "k"})
        chat = await client.post("/chat", json={"input": "hi"}, headers={"X-API-Key": "k"})
        streamed = await client.post(
            "/chat", json={"input": "a b", "stream": True}, headers={"X-API-Key": "k"}
        )
    assert denied.status_code == 401
    assert denied.json() == {"error": "Missing API key"}
    assert ok.json() == {"status": "ok", "agents": 1}
    assert ok.headers["x-checked"] == "yes"
    assert chat.json()["output"] == "hi"
    assert sse_events(streamed.text)[-1] == "[DONE]"


async def test_decorated_handlers_get_params_by_name() -> None:
    app = create_app(agents=[])

    @app.get("/items/{item_id}")
    async def read_item(item_id: str, q: str | None = None, limit: int = 10):  # type: ignore[no-untyped-def]
        return {"item_id": item_id, "q": q, "limit": limit}

    @app.post("/items", status_code=201)
    def create_item(item: Item) -> Item:  # sync handlers run in a thread
        return Item(name=item.name.upper(), count=item.count)

    @app.put("/echo")
    async def echo(request: Request):  # type: ignore[no-untyped-def]
        return {"body": (await request.body()).decode()}

    async with client_for(app) as client:
        got = await client.get("/items/abc", params={"q": "x", "limit": "3"})
        bad_limit = await client.get("/items/abc", params={"limit": "many"})
        created = await client.post("/items", json={"name": "pen"})
        invalid = await client.post("/items", json={"count": 2})
        echoed = await client.put("/echo", content=b"raw")
        spec = (await client.get("/openapi.json")).json()
    assert got.json() == {"item_id": "abc", "q": "x", "limit": 3}
    assert bad_limit.status_code == 422
    assert bad_limit.json()["detail"][0]["loc"] == ["query", "limit"]
    assert created.status_code == 201 and created.json() == {"name": "PEN", "count": 1}
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "name"]
    assert echoed.json() == {"body": "raw"}
    assert "/items/{item_id}" in spec["paths"]


async def test_decorated_routes_decode_bodies_under_the_app_body_limit() -> None:
    app = create_app(agents=[], max_body_size=64)

    @app.post("/items")
    def create_item(item: Item) -> Item:
        return item

    async with client_for(app) as client:
        small = await client.post("/items", json={"name": "pen"})
        big = await client.post("/items", json={"name": "x" * 100})
    assert small.status_code == 200
    assert big.status_code == 413
    assert big.json() == {"detail": "Request body exceeds 64 bytes"}


async def test_include_router_with_prefix_and_exception_handler() -> None:
    app = create_app(agents=[Agent("assistant")])
    router = Router(prefix="/v1")

    class Teapot(Exception):
        pass

    @router.get("/ping")
    async def ping():  # type: ignore[no-untyped-def]
        raise Teapot

    @app.exception_handler(Teapot)
    async def teapot(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "I'm a teapot"}, status_code=418)

    app.include_router(router, prefix="/api")
    app.include_router(agent_router, prefix="/again")
    app.state.greeting = "hi"
    async with client_for(app) as client:
        pinged = await client.get("/api/v1/ping")
        agents = await client.get("/again/agents")
    assert pinged.status_code == 418
    assert agents.json()[0]["name"] == "assistant"
    assert app.state.greeting == "hi"


async def test_mounted_under_a_prefix_in_plain_starlette() -> None:
    inner = create_app(agents=[Agent("assistant")])
    outer = Starlette(routes=[Mount("/api", app=inner)])
    async with client_for(outer) as client:
        chat = await client.post("/api/chat", json={"input": "mounted"})
        created = await client.post("/api/sessions", json={})
        listing = await client.get("/api/sessions", params={"limit": 1})
        await client.post("/api/sessions", json={})
        paged = await client.get("/api/sessions", params={"limit": 1})
        outside = await client.get("/chat")
    assert chat.json()["output"] == "mounted"
    assert created.status_code == 201
    assert listing.status_code == 200
    assert paged.headers["link"].startswith("</api/sessions?")
    assert outside.status_code == 404


async def test_routers_work_on_their_own_with_the_module_registry() -> None:
    registered_agents.register(Agent("solo"))
    outer = Starlette(
        routes=[
            Mount("/a", app=agent_router),
            Mount("/s", routes=session_router.routes),
            Mount("/x", app=stream_router),
        ]
    )
    async with client_for(outer) as client:
        agents = await client.get("/a/agents")
        streamed = await client.get("/x/stream", params={"input": "alone"})
        created = await client.post("/s/sessions", json={"agent_name": "solo"})
        missing = await client.get("/s/sessions/unknown")
    assert [a["name"] for a in agents.json()] == ["solo"]
    assert sse_events(streamed.text)[-2]["output"] == "alone"  # type: ignore[index]
    assert created.status_code == 201
    assert missing.json() == {"detail": "Session 'unknown' not found"}


def test_websocket_decorator() -> None:
    app = create_app(agents=[])

    @app.websocket("/ws/echo/{room}")
    async def echo(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        await websocket.send_text(f"{room}:{await websocket.receive_text()}")
        await websocket.close()

    with TestClient(app) as client, client.websocket_connect("/ws/echo/lobby") as ws:
        ws.send_text("hello")
        assert ws.receive_text() == "lobby:hello"


async def test_unhandled_errors_are_a_json_500_without_traceback() -> None:
    app = create_app(agents=[])

    @app.get("/boom")
    async def boom():  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals")

    transport = __import__("httpx").ASGITransport(app=app, raise_app_exceptions=False)
    async with __import__("httpx").AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
    assert "secret" not in response.text


def test_a_route_placed_before_ours_on_the_same_path_wins() -> None:
    """Our fixed-path endpoints skip the route scan only where the scan would reach them."""
    app = create_app(agents=[Agent("assistant")])

    async def agents(request: Request) -> JSONResponse:
        return JSONResponse(["mine"])

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("mine")
        await websocket.close()

    app.router.routes[:0] = [
        StarletteRoute("/agents", agents, methods=["GET"]),
        WebSocketRoute("/ws/chat", chat),
    ]
    with TestClient(app) as client:
        assert client.get("/agents").json() == ["mine"]
        assert client.post("/chat", json={"input": "ours still"}).json()["output"] == "ours still"
        with client.websocket_connect("/ws/chat") as ws:
            assert ws.receive_text() == "mine"
