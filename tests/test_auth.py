"""API keys on HTTP and on the WebSocket handshake, CORS, and the guide's own middleware on top."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from orbiter_asgi import Agent, JSONResponse, Request, create_app
from tests.helpers import assert_start, client_for
from tests.servers import running_server

KEY = "sk-test-0123456789"


@pytest.fixture
def secured() -> Any:
    return create_app(agents=[Agent("assistant")], api_keys=[KEY, "second-key"])


@pytest.mark.anyio
async def test_requests_without_a_valid_key_get_401_with_a_challenge(secured: Any) -> None:
    async with client_for(secured) as client:
        missing = await client.get("/agents")
        wrong = await client.post("/chat", json={"input": "x"}, headers={"Authorization": "Bearer nope"})
        prefix = await client.get("/agents", headers={"X-API-Key": KEY[:-1]})
        longer = await client.get("/agents", headers={"X-API-Key": KEY + "0"})
        basic = await client.get("/agents", headers={"Authorization": f"Basic {KEY}"})
        sse = await client.get("/stream", params={"input": "x"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="orbiter"'
    assert missing.json()["detail"].startswith("Not authenticated")
    for response in (wrong, prefix, longer):
        assert response.status_code == 401
        assert response.json() == {"detail": "Invalid API key"}
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert basic.status_code == sse.status_code == 401


@pytest.mark.anyio
async def test_bearer_and_x_api_key_are_both_accepted(secured: Any) -> None:
    async with client_for(secured) as client:
        bearer = await client.post("/chat", json={"input": "hi"}, headers={"Authorization": f"Bearer {KEY}"})
        lower = await client.get("/agents", headers={"authorization": "bearer second-key"})
        header = await client.get("/agents", headers={"X-API-Key": "second-key"})
    assert bearer.json()["output"] == "hi"
    assert lower.status_code == header.status_code == 200


@pytest.mark.anyio
async def test_keys_come_from_the_environment_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBITER_API_KEYS", " env-one , ,env-two ")
    from_env = create_app(agents=[Agent("assistant")])
    explicit_off = create_app(agents=[Agent("assistant")], api_keys=[])
    async with client_for(from_env) as client:
        assert (await client.get("/agents")).status_code == 401
        assert (await client.get("/agents", headers={"X-API-Key": "env-two"})).status_code == 200
    async with client_for(explicit_off) as client:
        assert (await client.get("/agents")).status_code == 200


@pytest.mark.anyio
async def test_openapi_is_public_and_declares_the_schemes(secured: Any) -> None:
    async with client_for(secured) as client:
        document = (await client.get("/openapi.json")).json()
    async with client_for(create_app(agents=[Agent("assistant")], api_keys=[])) as client:
        open_document = (await client.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"] == {
        "bearerAuth": {"type": "http", "scheme": "bearer"},
        "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    assert document["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
    public = {"/healthz", "/readyz"}  # probes call them without a key
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path in public:
                assert operation["security"] == [] and "401" not in operation["responses"], path
            else:
                assert "401" in operation["responses"] and "security" not in operation, path
    assert public <= set(document["paths"])
    assert "security" not in open_document
    assert "securitySchemes" not in open_document["components"]


@pytest.mark.anyio
async def test_openapi_can_be_locked_too() -> None:
    app = create_app(agents=[Agent("assistant")], api_keys=[KEY], public_paths=())
    async with client_for(app) as client:
        assert (await client.get("/openapi.json")).status_code == 401


def test_websocket_handshake_without_a_key_is_refused_before_accept(secured: Any) -> None:
    with TestClient(secured) as client:
        with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/ws/chat"):
            pass
        with client.websocket_connect("/ws/chat", headers={"X-API-Key": KEY}) as ws:
            ws.send_json({"input": "in"})
            assert_start(ws.receive_json())
            assert ws.receive_json() == {"type": "text", "content": "in"}
    assert denied.value.status_code == 401
    assert denied.value.headers["www-authenticate"] == 'Bearer realm="orbiter"'


@pytest.mark.anyio
async def test_websocket_without_the_denial_extension_gets_close_1008(secured: Any) -> None:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/ws/chat",
        "raw_path": b"/ws/chat",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer wrong")],
        "subprotocols": [],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await secured(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "Not authenticated"}]


@pytest.mark.anyio
async def test_cors_allow_list_and_preflight_without_a_key() -> None:
    app = create_app(agents=[Agent("assistant")], api_keys=[KEY], cors_origins=["https://app.example"])
    preflight_headers = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with client_for(app) as client:
        preflight = await client.options("/chat", headers=preflight_headers)
        foreign = await client.options(
            "/chat", headers={**preflight_headers, "Origin": "https://evil.example"}
        )
        denied = await client.get("/agents", headers={"Origin": "https://app.example"})
        allowed = await client.get("/agents", headers={"Origin": "https://app.example", "X-API-Key": KEY})
        other = await client.get("/agents", headers={"Origin": "https://evil.example", "X-API-Key": KEY})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers
    assert denied.status_code == 401  # the browser may read the 401: CORS wraps auth
    assert denied.headers["access-control-allow-origin"] == "https://app.example"
    assert (
        allowed.status_code == 200
        and "x-next-cursor" in allowed.headers["access-control-expose-headers"].lower()
    )
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.anyio
async def test_without_options_there_is_no_auth_and_no_cors(client: httpx.AsyncClient) -> None:
    response = await client.get("/agents", headers={"Origin": "https://app.example"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


@pytest.mark.anyio
async def test_the_guides_hand_written_middleware_still_works_on_top(secured: Any) -> None:
    @secured.middleware("http")
    async def auth_middleware(request: Request, call_next: Any) -> Any:
        api_key = request.headers.get("X-API-Key")
        if not api_key:
            return JSONResponse(status_code=401, content={"error": "Missing API key"})
        response = await call_next(request)
        response.headers["x-checked"] = "yes"
        return response

    async with client_for(secured) as client:
        missing = await client.get("/agents")
        wrong = await client.get("/agents", headers={"X-API-Key": "wrong"})
        good = await client.post("/chat", json={"input": "hello"}, headers={"X-API-Key": KEY})
    assert missing.status_code == 401 and missing.json() == {"error": "Missing API key"}
    assert wrong.status_code == 401 and wrong.json() == {"detail": "Invalid API key"}
    assert good.json()["output"] == "hello" and good.headers["x-checked"] == "yes"


@pytest.mark.e2e
def test_real_server_with_api_key_flag() -> None:
    target = str(Path(__file__).parent / "apps" / "slow_agents.py") + ":agents"
    with running_server([target, "--store", "memory://", "--api-key", KEY]) as url:
        unauthorized = httpx.post(f"{url}/chat", json={"input": "x"})
        authorized = httpx.post(
            f"{url}/chat", json={"input": "x"}, headers={"Authorization": f"Bearer {KEY}"}
        )
        ws_url = url.replace("http", "ws", 1) + "/ws/chat"
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url).close()
        with connect(ws_url, additional_headers={"X-API-Key": KEY}) as ws:
            ws.send(json.dumps({"input": "over the wire"}))
            start = json.loads(ws.recv(timeout=10))
            first = json.loads(ws.recv(timeout=10))
    assert unauthorized.status_code == 401 and unauthorized.headers["www-authenticate"]
    assert authorized.json()["output"] == "x"
    assert refused.value.response.status_code == 401
    assert_start(start)
    assert first == {"type": "text", "content": "over "}
