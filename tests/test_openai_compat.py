"""OpenAI's Chat Completions API, judged by OpenAI's own SDK.

A real uvicorn serves `tests/apps/openai_app.py` (an API key, no disconnect
grace); the SDK, sync and async, lists the agents as models, creates
completions plain and streamed, and raises its own exceptions for our
errors. In-process tests check the error bodies, and that a request's
settings and history reach the model behind an agent.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import msgspec
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from orbiter_asgi import Agent, create_app
from orbiter_asgi.models import DoneEvent, StartEvent, TextEvent, Usage
from orbiter_asgi.protocols.openai import ChatCompletionChunk, ChunkEncoder, CompletionUsage
from tests.apps.openai_app import KEY
from tests.fakes import Call, Text, ToolCalls, make_provider
from tests.fakes.openai_fake import OpenAIFake
from tests.helpers import assert_run_id, client_for
from tests.servers import running_server

pytestmark = pytest.mark.anyio

TARGET = str(Path(__file__).parent / "apps" / "openai_app.py") + ":app"


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


# --- the SDK against a real server ------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server([TARGET]) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=10) as sdk:
        yield sdk


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server, headers=headers, timeout=10) as plain:
        yield plain


@pytest.mark.e2e
def test_models_are_the_agents(client: OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["assistant", "slow", "broken"]
    assert {(m.object, m.owned_by) for m in models} == {("model", "orbiter")}
    assert all(0 < m.created <= time.time() for m in models)


@pytest.mark.e2e
def test_a_completion(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="assistant", messages=[{"role": "user", "content": "hello real server"}]
    )
    completion = raw.parse()
    run_id = assert_run_id(raw.headers["x-run-id"])
    assert completion.id == f"chatcmpl-{run_id}"
    assert (completion.object, completion.model) == ("chat.completion", "assistant")
    [choice] = completion.choices
    assert (choice.index, choice.finish_reason) == (0, "stop")
    assert (choice.message.role, choice.message.content) == ("assistant", "hello real server")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 3)
    assert completion.usage.total_tokens == 6


@pytest.mark.e2e
def test_a_streamed_completion_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {(c.object, c.model) for c in chunks} == {("chat.completion.chunk", "assistant")}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    *body, stop, last = chunks
    assert [c.choices[0].finish_reason for c in body] == [None] * len(body)
    assert stop.choices[0].finish_reason == "stop" and stop.usage is None
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 3, 6)


@pytest.mark.e2e
async def test_the_async_client_streams_word_by_word(server: str) -> None:
    async with AsyncOpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=10) as sdk:
        completion = await sdk.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "plain answer"}]
        )
        stream = await sdk.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "a b c d"}], stream=True
        )
        async with stream:
            chunks = [chunk async for chunk in stream]
    assert completion.choices[0].message.content == "plain answer"
    deltas = [c.choices[0].delta.content for c in chunks]
    # the role first, a chunk per word of the slowed echo, then the end; no usage unless asked
    assert deltas == ["", "a ", "b ", "c ", "d", None]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


@pytest.mark.e2e
def test_the_history_comes_in_messages(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="assistant",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one two three"},
            {"role": "assistant", "content": "one two three"},
            {"role": "user", "content": [{"type": "text", "text": "four"}, {"type": "text", "text": "five"}]},
        ],
    )
    assert completion.choices[0].message.content == "four\nfive"  # text parts join with newlines
    assert completion.usage is not None
    # the echo model counts the words of every message it is given: 2 + 3 + 3, then 2
    assert completion.usage.prompt_tokens == 10


@pytest.mark.e2e
def test_a_session_header_stores_the_turns(client: OpenAI, http: httpx.Client) -> None:
    headers = {"X-Session-Id": "openai-e2e"}
    usages = []
    for text in ("first turn here", "second"):
        completion = client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": text}], extra_headers=headers
        )
        assert completion.choices[0].message.content == text
        assert completion.usage is not None
        usages.append(completion.usage.prompt_tokens)
    messages = http.get("/sessions/openai-e2e/messages").json()
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "first turn here"),
        ("assistant", "first turn here"),
        ("user", "second"),
        ("assistant", "second"),
    ]
    assert usages == [3, 3 + 3 + 1]  # the second turn was given the stored first one


@pytest.mark.e2e
def test_errors_are_the_sdks_exceptions(client: OpenAI, server: str) -> None:
    hello = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=hello)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as two:
        client.chat.completions.create(model="assistant", messages=hello, n=2)  # type: ignore[arg-type]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(model="assistant", messages=hello, tools=[tool])  # type: ignore[arg-type,list-item]
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="broken", messages=hello)  # type: ignore[arg-type]
    with (
        OpenAI(base_url=f"{server}/v1", api_key="sk-wrong", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError) as denied,
    ):
        stranger.models.list()
    assert (unknown.value.code, unknown.value.param) == ("model_not_found", "model")
    assert (two.value.param, tools.value.param) == ("n", "tools")
    assert (two.value.type, tools.value.type) == ("invalid_request_error", "invalid_request_error")
    assert failed.value.status_code == 502 and failed.value.code == "agent_error"
    assert failed.value.type == "api_error" and "model exploded" in failed.value.message
    assert assert_run_id(failed.value.response.headers["x-run-id"])
    assert denied.value.code == "invalid_api_key"


@pytest.mark.e2e
def test_a_failure_midstream_raises_after_the_text_so_far(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="broken", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[str] = []
    with stream, pytest.raises(openai.APIError) as failed:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "partial"
    assert failed.value.code == "agent_error" and "model exploded" in failed.value.message


@pytest.mark.e2e
def test_closing_the_stream_cancels_the_run(client: OpenAI, http: httpx.Client) -> None:
    stream = client.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": words(200)}], stream=True
    )
    with stream:
        chunks = [next(stream) for _ in range(4)]  # the role, then three words
    run_id = assert_run_id(chunks[0].id.removeprefix("chatcmpl-"))
    deadline = time.monotonic() + 5  # the whole answer would take 10 s
    info = http.get(f"/runs/{run_id}").json()
    while info["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        info = http.get(f"/runs/{run_id}").json()
    assert info["status"] == "cancelled" and info["error"]["code"] == "cancelled"
    assert 3 <= len(info["output"].split()) < 100


# --- in process ---------------------------------------------------------------------------

HELLO = [{"role": "user", "content": "hi"}]


def completion_request(**fields: Any) -> dict[str, Any]:
    return {"model": "assistant", "messages": HELLO, **fields}


@pytest.fixture
async def local() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(agents=[Agent("assistant")], drain_on_signal=False)) as c:
        yield c


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{", None),
        (json.dumps({"messages": HELLO}).encode(), "model"),
        (json.dumps(completion_request(messages=[{"role": "system", "content": "x"}])).encode(), "messages"),
        (json.dumps(completion_request(temperature=5)).encode(), "temperature"),
        (json.dumps(completion_request(functions=[{"name": "f"}])).encode(), "functions"),
        (
            json.dumps(
                completion_request(
                    messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
                )
            ).encode(),
            "messages[0].content[0]",
        ),
    ],
)
async def test_bad_requests_are_openai_400s(local: httpx.AsyncClient, body: bytes, param: str | None) -> None:
    response = await local.post("/v1/chat/completions", content=body)
    assert response.status_code == 400
    detail = error(response)
    assert (detail["type"], detail["param"]) == ("invalid_request_error", param)


async def test_other_routes_keep_their_own_error_shape(local: httpx.AsyncClient) -> None:
    response = await local.post("/chat", json={"input": "hi", "agent_name": "nobody"})
    assert response.json() == {"detail": "Agent 'nobody' not found"}


async def test_the_key_check_answers_v1_in_openais_shape() -> None:
    async with client_for(create_app(agents=[Agent("assistant")], api_keys=[KEY])) as secured:
        missing = await secured.get("/v1/models")
        wrong = await secured.post(
            "/v1/chat/completions", json=completion_request(), headers={"Authorization": "Bearer no"}
        )
        native = await secured.get("/agents")
    for response in (missing, wrong):
        assert response.status_code == 401 and response.headers["www-authenticate"]
        assert error(response)["code"] == "invalid_api_key"
    assert native.json()["detail"].startswith("Not authenticated")


async def test_overload_is_a_503_to_retry() -> None:
    started, release = anyio.Event(), anyio.Event()

    async def held(input: str) -> AsyncIterator[str]:
        started.set()
        await release.wait()
        yield "done"

    app = create_app(agents=[held], max_concurrent_runs=1, drain_on_signal=False)
    async with client_for(app) as c, anyio.create_task_group() as group:
        first: list[httpx.Response] = []

        async def hold() -> None:
            first.append(await c.post("/v1/chat/completions", json=completion_request(model="held")))

        group.start_soon(hold)
        await started.wait()
        refused = await c.post("/v1/chat/completions", json=completion_request(model="held"))
        release.set()
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert error(refused)["code"] == "overloaded"
    assert first[0].json()["choices"][0]["message"]["content"] == "done"


async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def upstream(fake: OpenAIFake) -> Any:
    agent = Agent("calc", model="openai:gpt-test", tools=[add], provider=make_provider("openai", fake))
    return create_app(agents=[agent], drain_on_signal=False)


async def test_settings_and_history_reach_the_model() -> None:
    fake = OpenAIFake(Text(["Hi"], usage=(12, 3)))
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a":1}'}}
    history = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "user", "content": "now"},
    ]
    body = {
        "model": "calc",
        "messages": history,
        "temperature": 0.3,
        "max_tokens": 50,
        "max_completion_tokens": 40,  # wins over max_tokens
        "user": "someone",
        "metadata": {"k": "v"},
        "tool_choice": "auto",
        "seed": 7,  # unknown to us: ignored
    }
    async with client_for(upstream(fake)) as c:
        response = await c.post("/v1/chat/completions", json=body)
    assert response.json()["choices"][0]["message"]["content"] == "Hi"
    assert response.json()["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    sent = fake.requests[0].body
    assert (sent["temperature"], sent["max_tokens"]) == (0.3, 40)
    assert [m["content"] for m in sent["messages"] if m["role"] == "system"] == ["Be terse."]
    assert fake.user_texts(0) == ["earlier", "now"]
    assert fake.tool_calls(0) == [{"id": "c1", "name": "add", "arguments": {"a": 1}}]
    assert fake.tool_results(0) == [{"id": "c1", "content": "1", "is_error": None}]


async def test_the_agents_own_tools_stay_on_the_server() -> None:
    fake = OpenAIFake(ToolCalls([Call("c1", "add", '{"a": 1, "b": 2}')], text=["Adding. "]), Text(["3"]))
    body = {"model": "calc", "messages": HELLO, "stream": True}
    async with client_for(upstream(fake)) as c:
        response = await c.post("/v1/chat/completions", json=body)
    payloads = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert all("tool_calls" not in delta for delta in deltas)
    assert "".join(delta.get("content", "") for delta in deltas) == "Adding. 3"
    assert fake.tool_results(1) == [{"id": "c1", "content": "3", "is_error": None}]  # the tool ran here


@pytest.mark.parametrize("include_usage", [False, True])
def test_spliced_chunks_are_the_structs_own_encoding(include_usage: bool) -> None:
    model = 'odd "model"\u2028'  # JSON escapes, and a separator some line readers split at
    encoder = ChunkEncoder("chatcmpl-1", model, 7, include_usage=include_usage)
    done = DoneEvent(output="a\u2028b\"c", usage=Usage(input_tokens=1, output_tokens=2, total_tokens=3))
    body = b"".join(
        [
            encoder.item(StartEvent(run_id="1", agent_name=model), b""),
            encoder.item(["a\u2028", 'b"'], b""),
            encoder.item(TextEvent("c"), b""),
            encoder.end(SimpleNamespace(outcome=done)),  # type: ignore[arg-type]
        ]
    )
    *frames, last, end = body.split(b"\n\n")
    assert (last, end) == (b"data: [DONE]", b"")
    assert b"\xe2\x80\xa8" not in body  # U+2028 went out escaped
    chunks = [msgspec.json.decode(f.removeprefix(b"data: "), type=ChatCompletionChunk) for f in frames]
    for raw, chunk in zip(frames, chunks, strict=True):
        unescaped = raw.removeprefix(b"data: ").replace(b"\\u2028", "\u2028".encode())
        assert unescaped == msgspec.json.encode(chunk)
    assert [c.model for c in chunks] == [model] * len(chunks)
    deltas = [(c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks if c.choices]
    assert deltas == [("", None), ('a\u2028b"', None), ("c", None), (None, "stop")]
    usages = [c.usage for c in chunks]
    if include_usage:  # null in every chunk but the last
        assert usages[:-1] == [None] * 4 and chunks[-1].choices == []
        assert chunks[-1].usage == CompletionUsage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    else:
        assert usages == [msgspec.UNSET] * 4
