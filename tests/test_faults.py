"""Fault injection: a model that stalls, fails mid-stream or returns garbage,
and a store that fails on append. The client gets a clear error, the history
stays consistent, and the next turn works."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient

from orbiter_asgi import Agent, create_app
from tests.helpers import client_for, http_scope, sse_events, sse_run
from tests.misbehaving import FaultyProvider, FlakyStore, texts

pytestmark = pytest.mark.anyio


@pytest.fixture
def provider() -> FaultyProvider:
    return FaultyProvider()


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def app(provider: FaultyProvider, store: FlakyStore) -> Any:
    agent = Agent("faulty", model="fake:model", provider=provider)
    return create_app(agents=[agent], store=store, run_timeout=0.3)


def _consistent(messages: list[dict[str, Any]]) -> bool:
    """Every assistant message follows the user message of its turn."""
    last_role = None
    for message in messages:
        if message["role"] == "assistant" and last_role != "user":
            return False
        last_role = message["role"]
    return True


MODEL_FAULTS = [
    # mode, JSON status, JSON detail, SSE error code, what the history keeps of the answer
    ("stall", 504, "The run took longer than its 0.3 s limit", "timeout", "thinking "),
    ("error_mid", 502, "Upstream returned 500 mid-stream", "provider_error", "half an answer"),
    (
        "garbage",
        502,
        "Model provider yielded dict; expected a text, tool call or usage event",
        "provider_error",
        "fine so far ",
    ),
    ("crash", 502, "Agent 'faulty' failed: RuntimeError: segfault-ish", "agent_error", "about to "),
]


@pytest.mark.parametrize(("mode", "status", "detail", "code", "kept"), MODEL_FAULTS)
async def test_model_faults(
    app: Any, provider: FaultyProvider, mode: str, status: int, detail: str, code: str, kept: str
) -> None:
    async with client_for(app) as client:
        provider.mode = mode
        failed = await client.post("/chat", json={"input": "q1", "session_id": "s"})
        streamed = await client.post("/chat", json={"input": "q2", "session_id": "s", "stream": True})
        provider.mode = "ok"
        recovered = await client.post("/chat", json={"input": "q3", "session_id": "s"})
        history = (await client.get("/sessions/s/messages")).json()
    assert failed.status_code == status
    assert failed.json() == {"detail": detail}
    events = sse_events(streamed.text)
    assert events[-2]["type"] == "error" and events[-2]["code"] == code  # type: ignore[index]
    assert texts(events[:-2]) == kept and events[-1] == "[DONE]"
    assert recovered.status_code == 200 and recovered.json()["output"] == "q3"
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "q1"),
        ("assistant", kept),
        ("user", "q2"),
        ("assistant", kept),
        ("user", "q3"),
        ("assistant", "q3"),
    ]
    if mode == "stall":
        assert provider.cancelled == 2  # the model call itself was cancelled


async def test_store_failing_before_the_turn(app: Any, store: FlakyStore, provider: FaultyProvider) -> None:
    async with client_for(app) as client:
        store.fail_on = "user"
        failed = await client.post("/chat", json={"input": "lost", "session_id": "s"})
        streamed = await client.post("/chat", json={"input": "lost", "session_id": "s", "stream": True})
        store.fail_on = None
        recovered = await client.post("/chat", json={"input": "kept", "session_id": "s"})
        history = (await client.get("/sessions/s/messages")).json()
    assert failed.status_code == 503 and failed.headers["retry-after"] == "1"
    assert failed.json() == {"detail": "The session store is unavailable"}
    run_id, events = sse_run(streamed)
    assert events == [
        {"type": "start", "run_id": run_id, "agent_name": "faulty", "session_id": "s"},
        {
            "type": "error",
            "run_id": run_id,
            "error": "The session store is unavailable",
            "code": "store_unavailable",
        },
        "[DONE]",
    ]
    assert provider.calls == 1  # the model was never called for the failed turns
    assert recovered.json()["output"] == "kept"
    assert [(m["role"], m["content"]) for m in history] == [("user", "kept"), ("assistant", "kept")]


async def test_store_failing_after_the_turn(app: Any, store: FlakyStore) -> None:
    async with client_for(app) as client:
        store.fail_on = "assistant"
        failed = await client.post("/chat", json={"input": "one", "session_id": "s"})
        streamed = await client.post("/chat", json={"input": "two", "session_id": "s", "stream": True})
        store.fail_on = None
        recovered = await client.post("/chat", json={"input": "three", "session_id": "s"})
        history = (await client.get("/sessions/s/messages")).json()
    assert failed.status_code == 503
    assert failed.json() == {"detail": "The session store is unavailable"}
    run_id, events = sse_run(streamed)
    assert events[0] == {"type": "start", "run_id": run_id, "agent_name": "faulty", "session_id": "s"}
    assert events[1] == {"type": "text", "content": "two"}
    assert events[-2] == {
        "type": "error",
        "run_id": run_id,
        "error": "The session store is unavailable",
        "code": "store_unavailable",
    }
    assert not any(isinstance(e, dict) and e["type"] == "done" for e in events)  # not reported as done
    assert recovered.json()["output"] == "three"
    # the unanswered questions stay, with no answer claimed for them
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "one"),
        ("user", "two"),
        ("user", "three"),
        ("assistant", "three"),
    ]
    assert _consistent(history)


def test_faults_over_websocket_keep_the_socket_usable(
    app: Any, provider: FaultyProvider, store: FlakyStore
) -> None:
    outcomes: list[str] = []
    with TestClient(app) as client, client.websocket_connect("/ws/chat") as ws:
        for mode, fail_on in [
            ("stall", None),
            ("error_mid", None),
            ("garbage", None),
            ("ok", "any"),
            ("ok", None),
        ]:
            provider.mode, store.fail_on = mode, fail_on
            ws.send_json({"input": mode, "session_id": "ws"})
            events = [ws.receive_json()]
            while events[-1]["type"] != "done":  # a failed turn ends with `error`, then `done`
                events.append(ws.receive_json())
            errors = [e["code"] for e in events if e["type"] == "error"]
            assert len(errors) <= 1
            outcomes.append(errors[0] if errors else "done")
        history = client.get("/sessions/ws/messages").json()
    assert outcomes == ["timeout", "provider_error", "provider_error", "store_unavailable", "done"]
    assert _consistent(history)
    assert history[-2:] == [
        {**history[-2], "role": "user", "content": "ok"},
        {**history[-1], "role": "assistant", "content": "ok"},
    ]


async def test_a_client_leaving_a_json_chat_cancels_the_model_call(provider: FaultyProvider) -> None:
    app = create_app(agents=[Agent("faulty", model="fake:model", provider=provider)], disconnect_grace=0)
    provider.mode = "stall"
    sent: list[dict[str, Any]] = []
    body = b'{"input": "x", "session_id": "gone"}'
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        while provider.calls == 0:  # the client leaves once the model is called
            await anyio.sleep(0.005)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await app(http_scope("POST", "/chat"), receive, send)
    assert provider.cancelled == 1
    assert sent == []  # nothing is sent to a client that left
    assert [m.role for m in await app.store.messages("gone")] == ["user", "assistant"]
    assert app.context.guard.active == 0
