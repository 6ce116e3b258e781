"""Hostile input, one case per test: every answer is a clear 4xx with a
`detail` (or an `error` event), never a 500, and stored data stays intact."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from orbiter_asgi import Agent, create_app
from tests.helpers import assert_start, http_scope, sse_events
from tests.misbehaving import call, texts
from tests.servers import running_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "readme.txt").write_text("public")
    (tmp_path / "secret.txt").write_text("SECRET")
    return root


@pytest.fixture
def app(workspace: Path) -> Any:
    return create_app(agents=[Agent("assistant", workspace=workspace)])


async def _post(app: Any, path: str, body: bytes, content_type: bytes = b"application/json") -> Any:
    response, _ = await call(app, http_scope("POST", path, headers=[(b"content-type", content_type)]), [body])
    return response


def _assert_client_error(response: Any, *statuses: int) -> None:
    """A fake-server `Response` or an httpx one: a listed 4xx with a `detail`."""
    status = response.status_code if isinstance(response, httpx.Response) else response.status
    assert status in statuses, (status, response.json())
    assert response.json()["detail"]


# --- bodies ------------------------------------------------------------------------


async def test_invalid_utf8(app: Any) -> None:
    for path, field in (
        ("/chat", b"input"),
        ("/sessions", b"agent_name"),
        ("/sessions/s/messages", b"content"),
    ):
        _assert_client_error(
            await _post(app, path, b'{"role": "user", "' + field + b'": "\xff\xfe\xfa"}'), 400, 422
        )
        _assert_client_error(await _post(app, path, b'{"' + field + b'": "\xff\xfe\xfa"}'), 400)
    _assert_client_error(await _post(app, "/chat", b"\xc3\x28"), 400)


async def test_nul_bytes(app: Any, client: httpx.AsyncClient) -> None:
    raw = await _post(app, "/chat", b'{"input": "a\x00b"}')  # a raw NUL is not JSON
    escaped = await client.post("/chat", json={"input": "a\u0000b", "session_id": "nul"})
    streamed = await client.post("/chat", json={"input": "x\u0000 y", "stream": True})
    bad_id = await client.post("/chat", json={"input": "x", "session_id": "a\u0000b"})
    _assert_client_error(raw, 400)
    assert escaped.json()["output"] == "a\u0000b"
    assert texts(sse_events(streamed.text)) == "x\u0000 y"
    assert bad_id.status_code == 400
    assert (await client.get("/sessions/nul/messages")).json()[0]["content"] == "a\u0000b"


async def test_deeply_nested_json(app: Any, client: httpx.AsyncClient) -> None:
    for depth in (40, 500, 5000, 400_000):
        nested = b"[" * depth + b"]" * depth
        chat = await _post(app, "/chat", b'{"input": ' + nested + b"}")
        session = await _post(app, "/sessions", b'{"metadata": {"a": ' + nested + b"}}")
        message = await _post(app, "/sessions/s/messages", nested)
        _assert_client_error(chat, 400, 413, 422)
        _assert_client_error(session, 400, 413, 422)
        _assert_client_error(message, 400, 404, 413, 422)
    assert (await client.get("/sessions")).json() == []


async def test_huge_numbers(app: Any, client: httpx.AsyncClient) -> None:
    for number in (b"1e400", b"-1e400", b"1" + b"0" * 5000, b"NaN", b"Infinity"):
        _assert_client_error(await _post(app, "/sessions", b'{"metadata": {"n": ' + number + b"}}"), 400, 422)
        _assert_client_error(
            await _post(app, "/chat", b'{"input": "x", "stream": ' + number + b"}"), 400, 422
        )
    big = await _post(app, "/sessions", b'{"id": "big", "metadata": {"n": 123456789012345678901234567890}}')
    assert big.status == 201
    assert (await client.get("/sessions/big")).json()["metadata"] == {"n": 123456789012345678901234567890}
    _assert_client_error(await client.get("/sessions", params={"limit": "9" * 400}), 422)


async def test_duplicate_keys_take_the_last_value_like_json_loads(
    app: Any, client: httpx.AsyncClient
) -> None:
    body = b'{"input": "first", "input": "second", "session_id": "dup", "session_id": "dup"}'
    response = await _post(app, "/chat", body)
    assert response.status == 200 and response.json()["output"] == json.loads(body)["input"]
    bad = await _post(app, "/chat", b'{"input": "ok", "session_id": "ok", "session_id": "b a d"}')
    _assert_client_error(bad, 400)


@pytest.mark.parametrize(
    "content_type",
    [
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/xml",
    ],
)
async def test_wrong_content_types(app: Any, content_type: bytes) -> None:
    for path in ("/chat", "/sessions/s", "/sessions/s/messages"):
        method = "PATCH" if path == "/sessions/s" else "POST"
        scope = http_scope(method, path, headers=[(b"content-type", content_type)])
        response, _ = await call(app, scope, [b'{"input": "x"}'])
        _assert_client_error(response, 415)


async def test_newlines_and_sse_fields_inside_content_keep_the_framing(client: httpx.AsyncClient) -> None:
    text = "a\n\ndata: [DONE]\n\nevent: x\r\nid: 7\rretry: 1\u2028: comment\u0085end"
    for response in (
        await client.post("/chat", json={"input": text, "stream": True}),
        await client.get("/stream", params={"input": text}),
    ):
        lines = response.text.split("\n")
        assert all(line.startswith(("id: ", "data: ", ": ")) for line in lines if line)
        assert "\r" not in response.text
        events = sse_events(response.text)
        assert texts(events) == text and events.count("[DONE]") == 1 and events[-1] == "[DONE]"


# --- paths ---------------------------------------------------------------------------

TRAVERSALS = [
    "../secret.txt",
    "docs/../../secret.txt",
    "..%2Fsecret.txt",
    "%2e%2e/secret.txt",
    "..\\secret.txt",
    "docs/..\\..\\secret.txt",
    "/etc/passwd",
    "docs//readme.txt",
    "docs/readme.txt\x00.png",
    "\u2025/secret.txt",
]


@pytest.mark.parametrize("relative", TRAVERSALS)
async def test_workspace_paths_never_leave_the_workspace(app: Any, relative: str) -> None:
    response, _ = await call(app, http_scope("GET", "/agents/assistant/workspace/" + relative))
    _assert_client_error(response, 404)
    assert b"SECRET" not in response.body


@pytest.mark.parametrize(
    "path",
    [
        "/sessions/..",
        "/sessions/%2e%2e",
        "/sessions/..%2Fsecret",
        "/sessions/a%00b",
        "/sessions/\x1b[31m/messages",
        "/sessions/line\r\nX-Injected: 1",
        "/agents/..",
        "/agents/%2e%2e%2fsecret",
        "/agents/\x00",
        "/agents/\u202eevil/workspace",
    ],
)
async def test_dotted_encoded_and_control_character_path_params(app: Any, path: str) -> None:
    response, _ = await call(app, http_scope("GET", path))
    _assert_client_error(response, 400, 404)
    assert all(b"\n" not in value and b"\r" not in value for value in response.headers.values())


@pytest.mark.parametrize("name", ["\x1b[2J", "a\r\nb", "\x00", "..", "../assistant", "\ud800", "x" * 10_000])
async def test_agent_names_with_control_characters(client: httpx.AsyncClient, name: str) -> None:
    response = await client.post("/chat", content=json.dumps({"input": "x", "agent_name": name}))
    assert response.status_code in (400, 404) and response.json()["detail"]
    if name.isprintable() or not any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        streamed = await client.get("/stream", params={"input": "x", "agent_name": name})
        assert streamed.status_code in (400, 404) and streamed.json()["detail"]


@pytest.mark.parametrize("session_id", ["\x1b[2J", "a\r\nb", "\t", "\x7f", "é", "..", "a/../b", "%2e%2e"])
async def test_session_ids_with_control_characters(client: httpx.AsyncClient, session_id: str) -> None:
    for response in (
        await client.post("/chat", json={"input": "x", "session_id": session_id}),
        await client.get("/stream", params={"input": "x", "session_id": session_id}),
        await client.post("/sessions", json={"id": session_id}),
    ):
        assert response.status_code == 400 and "Invalid session id" in response.json()["detail"]
    assert (await client.get("/sessions")).json() == []


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    target = str(Path(__file__).parent / "apps" / "slow_agents.py") + ":agents"
    with running_server([target, "--store", "memory://"]) as url:
        yield url


def _raw_get(url: str, raw_path: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET " + raw_path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.e2e
@pytest.mark.parametrize(
    "raw_path",
    [
        b"/sessions/%2e%2e",
        b"/sessions/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        b"/sessions/%00",
        b"/sessions/%ff%fe",
        b"/sessions/..%5C..%5Cwin.ini/messages",
        b"/agents/%2e%2e/workspace/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        b"/agents/assistant/workspace/..%2f..%2f..%2fetc%2fpasswd",
        b"/stream?input=x&session_id=%2e%2e%2f",
        b"/stream?input=%ff%00&agent_name=%1b%5b",
    ],
)
def test_encoded_paths_against_a_real_server(real_server: str, raw_path: bytes) -> None:
    status, body = _raw_get(real_server, raw_path)
    assert status in (400, 404), (status, body)
    assert b"root:" not in body


# --- WebSocket -----------------------------------------------------------------------


def test_websocket_binary_frames() -> None:
    app = create_app(agents=[Agent("assistant")])
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        for frame in (b"\xff\xfe\x00", b'{"input": "\xff"}', b"\x00" * 100, b"[" * 10_000, b""):
            ws.send_bytes(frame)
            error, done = ws.receive_json(), ws.receive_json()
            assert error["code"] == "bad_request" and error["run_id"] is None
            assert done["type"] == "done" and done["run_id"] is None
        ws.send_bytes('{"input": "bin\u00e4ry"}'.encode())
        events = [ws.receive_json(), ws.receive_json(), ws.receive_json()]
    run_id = assert_start(events[0])
    assert events == [events[0], {"type": "text", "content": "binäry"}, events[2]]
    assert events[2]["type"] == "done" and events[2]["run_id"] == run_id


def test_websocket_flood_of_small_messages() -> None:
    app = create_app(agents=[Agent("assistant", model="echo?delay=0.001")])
    flood = 2000
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        ws.send_json({"input": " ".join(["w"] * 50)})
        for n in range(flood):
            ws.send_text("{}" if n % 2 else "x")
        codes: dict[str, int] = {}
        done = 0
        run_id = assert_start(ws.receive_json())
        for _ in range(2 * flood + 100):  # an error, and a `done` for frames refused between turns
            event = ws.receive_json()
            assert event["type"] != "start"  # no refused frame became a run
            if event["type"] == "error":
                assert event["run_id"] is None
                codes[event["code"]] = codes.get(event["code"], 0) + 1
            if event["type"] == "done":  # the turn's own, with its id; those of refused frames, none
                assert event["run_id"] == (run_id if not done else None), event
            done += event["type"] == "done"
            if sum(codes.values()) == flood and done:
                break
        ws.send_json({"input": "still alive"})
        # frames refused after the turn ended each end with a `done` of their own
        while (event := ws.receive_json())["type"] == "done":
            assert event["run_id"] is None
        assert assert_start(event) != run_id
        assert ws.receive_json() == {"type": "text", "content": "still "}
    assert sum(codes.values()) == flood and set(codes) <= {"bad_request", "busy", "validation_error"}
