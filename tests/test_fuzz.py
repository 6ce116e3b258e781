"""Fuzzing: hypothesis strategies for every request struct, valid and invalid,
against the decoders and the routes; schemathesis over every operation of
`/openapi.json`. No 5xx, every error has a `detail`, responses match the
document. Examples are bounded so the file stays within seconds."""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from orbiter_asgi import Agent, _sse, create_app
from orbiter_asgi._codec import Decoder
from orbiter_asgi.exceptions import RequestError
from orbiter_asgi.models import (
    ChatRequest,
    CreateSessionRequest,
    Message,
    TextEvent,
    UpdateSessionRequest,
    Usage,
)
from tests.helpers import assert_run_id, assert_start, client_for

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- strategies -------------------------------------------------------------------


def text(max_size: int) -> st.SearchStrategy[str]:
    """Unicode text; lone surrogates are not text (the server rejects them with a 400)."""
    return st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=max_size)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
session_ids = st.from_regex(r"[A-Za-z0-9_:\-][A-Za-z0-9._:\-]{0,20}", fullmatch=True)
any_ids = session_ids | text(max_size=140)
agent_names = st.sampled_from(["assistant", "ghost"]) | text(max_size=30)
roles = st.sampled_from(["system", "user", "assistant", "tool"])

chat_requests = st.fixed_dictionaries(
    {"input": text(max_size=200)},
    optional={
        "agent_name": st.none() | agent_names,
        "session_id": st.none() | any_ids,
        "stream": st.booleans(),
        "message": text(max_size=20),
    },
)
tool_calls = st.fixed_dictionaries(
    {"id": text(max_size=8), "name": text(max_size=8)},
    optional={"arguments": st.dictionaries(text(max_size=8), json_values, max_size=3)},
)
messages = st.fixed_dictionaries(
    {"role": roles},
    optional={
        "content": text(max_size=50),
        "tool_calls": st.none() | st.lists(tool_calls, max_size=2),
        "tool_call_id": st.none() | text(max_size=8),
        "name": st.none() | text(max_size=8),
        "is_error": st.booleans(),
        "created_at": st.datetimes().map(lambda d: d.isoformat() + "Z"),
    },
)
session_creates = st.fixed_dictionaries(
    {},
    optional={
        "agent_name": st.none() | agent_names,
        "metadata": st.dictionaries(text(max_size=8), json_values, max_size=4),
        "id": st.none() | any_ids,
    },
)
session_updates = st.fixed_dictionaries(
    {},
    optional={
        "agent_name": st.none() | agent_names,
        "metadata": st.dictionaries(text(max_size=8), json_values, max_size=4),
    },
)


def _mutated(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """Invalid variants: a field of the wrong type, an unknown field, or not an object."""
    wrong_field = st.tuples(valid, text(max_size=12), json_values).map(
        lambda t: {**t[0], t[1]: t[2]} if isinstance(t[0], dict) else [*t[0], t[2]]
    )
    return wrong_field | json_values


def _raw(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Bytes on the wire: the JSON of `values`, cut short or garbled, or noise."""
    encoded = values.map(lambda v: json.dumps(v).encode())
    return (
        encoded
        | st.tuples(encoded, st.integers(0, 50)).map(lambda t: t[0][: t[1]])
        | st.tuples(encoded, st.binary(max_size=4)).map(lambda t: t[0] + t[1])
        | st.binary(max_size=64)
    )


DECODERS = {
    "chat": (Decoder(ChatRequest), chat_requests),
    "session_create": (Decoder(CreateSessionRequest), session_creates),
    "session_update": (Decoder(UpdateSessionRequest), session_updates),
    "messages": (Decoder(Message | list[Message]), messages | st.lists(messages, max_size=3)),
}


@pytest.mark.parametrize("name", list(DECODERS))
def test_decoders_accept_valid_and_reject_invalid_input_cleanly(name: str) -> None:
    decoder, valid = DECODERS[name]

    @FAST
    @given(valid)
    def accepts(value: Any) -> None:
        decoder.decode(json.dumps(value).encode())

    @FAST
    @given(_raw(_mutated(valid)))
    def rejects(body: bytes) -> None:
        try:
            decoder.decode(body)
        except RequestError as exc:  # 400 or 422, nothing else may escape
            assert exc.status_code in (400, 422) and exc.message

    accepts()
    rejects()


# --- routes -----------------------------------------------------------------------------

APP = create_app(agents=[Agent("assistant")], drain_on_signal=False)


def _check(response: httpx.Response, *expected: int) -> None:
    assert response.status_code < 500, response.text
    assert response.status_code in expected, (response.status_code, response.text)
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert detail and (isinstance(detail, str) or all({"loc", "msg", "type"} <= set(d) for d in detail))


@pytest.mark.anyio
@FAST
@given(request=chat_requests | _mutated(chat_requests))
async def test_chat_route(request: Any) -> None:
    async with client_for(APP) as client:
        response = await client.post("/chat", content=json.dumps(request))
    _check(response, 200, 400, 404, 422)
    if response.status_code == 200 and isinstance(request, dict) and request.get("stream"):
        assert response.text.endswith("data: [DONE]\n\n")


@pytest.mark.anyio
@FAST
@given(body=_raw(chat_requests | _mutated(chat_requests)))
async def test_chat_route_with_raw_bytes(body: bytes) -> None:
    async with client_for(APP) as client:
        response = await client.post("/chat", content=body)
    _check(response, 200, 400, 404, 422)


@pytest.mark.anyio
@FAST
@given(
    create=session_creates | _mutated(session_creates),
    update=session_updates | _mutated(session_updates),
    appended=messages | st.lists(messages, max_size=3) | _mutated(messages),
)
async def test_session_routes(create: Any, update: Any, appended: Any) -> None:
    async with client_for(APP) as client:
        created = await client.post("/sessions", content=json.dumps(create))
        _check(created, 201, 400, 409, 422)
        session_id = created.json()["id"] if created.status_code == 201 else "fuzz"
        if created.status_code != 201:
            await client.post("/sessions", json={"id": "fuzz"})
        before = (await client.get(f"/sessions/{session_id}")).json()
        _check(await client.patch(f"/sessions/{session_id}", content=json.dumps(update)), 200, 400, 422)
        posted = await client.post(f"/sessions/{session_id}/messages", content=json.dumps(appended))
        _check(posted, 201, 400, 422)
        after = (await client.get(f"/sessions/{session_id}")).json()
        await client.delete(f"/sessions/{session_id}")
    added = len(appended) if isinstance(appended, list) else 1
    assert len(after["messages"]) == len(before["messages"]) + (added if posted.status_code == 201 else 0)


@pytest.mark.anyio
@FAST
@given(
    params=st.dictionaries(
        st.sampled_from(["input", "agent_name", "session_id", "message", "limit", "cursor", "x"]),
        text(max_size=30),
        max_size=5,
    )
)
async def test_query_routes(params: dict[str, str]) -> None:
    async with client_for(APP) as client:
        _check(await client.get("/stream", params=params), 200, 400, 404, 422)
        _check(await client.get("/sessions", params=params), 200, 400, 422)


class _OneBatch:
    """A provider that answers with the test's text deltas, all in one list of strings."""

    def __init__(self) -> None:
        self.contents: list[str] = []

    async def stream(self, request: Any) -> Any:
        yield list(self.contents)
        yield Usage()

    async def aclose(self) -> None:
        pass


_batch = _OneBatch()
_BATCH_APP = create_app(agents=[Agent("batch", model="openai:x", provider=_batch)], drain_on_signal=False)


@pytest.mark.anyio
@FAST
@given(contents=st.lists(text(12) | st.text('",\\{}a \u2028\u0085', max_size=8), min_size=1, max_size=12))
async def test_a_batch_of_any_text_frames_exactly(contents: list[str]) -> None:
    # text deltas ready together are framed in one go: every string must come back intact
    _batch.contents = contents
    async with client_for(_BATCH_APP) as client:
        response = await client.post("/chat", json={"input": "x", "stream": True})
    run_id = assert_run_id(response.headers["x-run-id"])
    head = f"id: {run_id}:"
    frames = [block for block in response.text.split("\n\n") if block]
    # start, the texts, done, then [DONE] with the next id
    assert frames[-1] == f"{head}{len(contents) + 3}\ndata: [DONE]"
    assert all(block.startswith(head) and block.count("\n") == 1 for block in frames), frames
    ids = [int(block.split("\n")[0].removeprefix(head)) for block in frames[:-1]]
    events = [json.loads(block.split("\n")[1].removeprefix("data: ")) for block in frames[:-1]]
    assert ids == list(range(1, len(contents) + 3))
    assert events[0] == {"type": "start", "run_id": run_id, "agent_name": "batch", "session_id": None}
    assert events[1:-1] == [{"type": "text", "content": c} for c in contents]
    assert events[-1]["type"] == "done" and events[-1]["output"] == "".join(contents)
    assert events[-1]["run_id"] == run_id
    # the batch framing is byte for byte that of one frame per text, past the cached seqs too
    for first in (2, (1 << 16) - 5):
        one_by_one = [_sse.frame(head.encode(), n, TextEvent(c)) for n, c in enumerate(contents, first)]
        assert _sse.text_frames(head.encode(), first, contents) == b"".join(one_by_one)


def test_websocket_frames() -> None:
    frames = st.one_of(
        chat_requests.map(json.dumps),
        _mutated(chat_requests).map(json.dumps),
        st.just('{"type": "cancel"}'),
        text(max_size=40),
    )

    with TestClient(APP) as client, client.websocket_connect("/ws/chat") as ws:

        @settings(max_examples=60, deadline=None)
        @given(frame=frames)
        def one_frame(frame: str) -> None:
            ws.send_text(frame)
            if frame == '{"type": "cancel"}':
                return  # answered only while a turn runs
            run_id = None  # a frame refused before it became a run has no start, and a null run id
            for n in range(1000):  # every turn, refused ones too, ends with one `done`
                event = ws.receive_json()
                assert event["type"] in ("start", "text", "tool_call", "tool_result", "done", "error")
                if event["type"] == "start":
                    assert n == 0, event  # only ever first
                    run_id = assert_run_id(event["run_id"])
                if event["type"] == "error":
                    assert event["error"] and event["code"]
                if event["type"] in ("error", "done"):
                    assert event["run_id"] == run_id, (event, run_id)
                if event["type"] == "done":
                    break

        one_frame()
        ws.send_json({"input": "still fine"})
        assert_start(ws.receive_json())
        assert ws.receive_json() == {"type": "text", "content": "still "}


# --- schemathesis over /openapi.json -------------------------------------------------------

# A short `input` limit: schemathesis then breaks it with a body well under `max_body_size`
# (it counts a 413 as "accepted"; past the body limit the 413 is tested in test_limits.py).
LIMITED = {"max_input_length": 2000, "drain_on_signal": False}
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(agents=[Agent("assistant")], **LIMITED))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_document(case: Any) -> None:
    excluded = []
    if (case.query or {}).get("cursor") is not None:
        # a cursor is opaque: any string fits the schema, only ours decode (400 otherwise)
        excluded.append(schemathesis.checks.positive_data_acceptance)
    if {"Idempotency-Key", "Last-Event-ID"} & set(case.headers or {}):
        # state: a key seen before with another body is a 422, a run id that is no run a 404
        excluded.append(schemathesis.checks.positive_data_acceptance)
    case.call_and_validate(excluded_checks=excluded)


secured_schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(agents=[Agent("assistant")], api_keys=["fuzz-key"], **LIMITED)
)


@secured_schema.include(path_regex="^/(chat|agents)").parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_secured_operations_conform_with_and_without_a_key(case: Any) -> None:
    # schemathesis' own auth probe would send our key along with its bad one; probed below
    case.call_and_validate(
        headers={"X-API-Key": "fuzz-key"}, excluded_checks=[schemathesis.checks.ignored_auth]
    )
    response = case.call(headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and response.headers["www-authenticate"]
    assert msgspec.json.decode(response.content)["detail"] == "Invalid API key"
