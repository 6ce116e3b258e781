"""Both HTTP providers against their fakes: streams, tool calls, usage, errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from orbiter_asgi.exceptions import (
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
)
from orbiter_asgi.models import Message, TextEvent, ToolCall, ToolCallEvent, Usage
from orbiter_asgi.providers.base import InvalidToolCall, ModelRequest, ToolSpec
from tests.fakes import FAKES, Call, Raise, Raw, Status, Text, ToolCalls, make_provider

pytestmark = pytest.mark.anyio

KINDS = ["openai", "anthropic"]
WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def request(**overrides: Any) -> ModelRequest:
    values: dict[str, Any] = {
        "model": "m-1",
        "messages": [Message(role="user", content="hi")],
        "system": "Be brief.",
        "tools": [WEATHER],
    }
    values.update(overrides)
    return ModelRequest(**values)


async def collect(provider: Any, req: ModelRequest | None = None) -> list[Any]:
    return [event async for event in provider.stream(req or request())]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_text_stream_and_usage(kind: str) -> None:
    fake = FAKES[kind](Text(["Hel", "lo", "!"], usage=(12, 3)))
    events = await collect(make_provider(kind, fake))
    assert events == [
        TextEvent("Hel"),
        TextEvent("lo"),
        TextEvent("!"),
        Usage(input_tokens=12, output_tokens=3, total_tokens=15),
    ]
    assert fake.streams[0].closed


async def test_tool_calls_split_over_chunks_are_assembled(kind: str) -> None:
    fake = FAKES[kind](
        ToolCalls(
            [
                Call("call_1", "get_weather", '{"city": "Paris", "days": [1, 2]}', pieces=7),
                Call("call_2", "get_weather", '{"city": "Oslo"}', pieces=4),
            ],
            text=["Let me check."],
        )
    )
    events = await collect(make_provider(kind, fake))
    assert events[0] == TextEvent("Let me check.")
    assert events[1:3] == [
        ToolCallEvent(id="call_1", name="get_weather", arguments={"city": "Paris", "days": [1, 2]}),
        ToolCallEvent(id="call_2", name="get_weather", arguments={"city": "Oslo"}),
    ]
    assert type(events[3]) is Usage


@pytest.mark.parametrize("raw", ['{"city": "Par', "[1, 2]"])
async def test_unparsable_arguments_become_invalid_tool_call(kind: str, raw: str) -> None:
    fake = FAKES[kind](ToolCalls([Call("call_1", "get_weather", raw)]))
    events = await collect(make_provider(kind, fake))
    assert type(events[0]) is InvalidToolCall
    assert events[0].id == "call_1" and events[0].raw_arguments == raw


async def test_request_shape_openai() -> None:
    fake = FAKES["openai"](Text(["ok"]))
    history = [
        Message(role="user", content="weather?"),
        Message(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="call_9", name="get_weather", arguments={"city": "Rome"})],
        ),
        Message(role="tool", content="sunny", tool_call_id="call_9", name="get_weather"),
        Message(role="user", content="thanks"),
    ]
    await collect(
        make_provider("openai", fake),
        request(messages=history, temperature=0.2, max_tokens=50),
    )
    sent = fake.requests[0]
    assert sent.url == "https://api.openai.com/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    body = sent.body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2 and body["max_tokens"] == 50
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather.",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]


async def test_request_shape_anthropic() -> None:
    fake = FAKES["anthropic"](Text(["ok"]))
    calls = [
        ToolCall(id="toolu_1", name="get_weather", arguments={"city": "Rome"}),
        ToolCall(id="toolu_2", name="get_weather", arguments={"city": "Oslo"}),
    ]
    history = [
        Message(role="user", content="weather?"),
        Message(role="assistant", content="Checking.", tool_calls=calls),
        Message(role="tool", content="sunny", tool_call_id="toolu_1", name="get_weather"),
        Message(role="tool", content="Boom", tool_call_id="toolu_2", name="get_weather", is_error=True),
        Message(role="user", content="thanks"),
    ]
    await collect(make_provider("anthropic", fake), request(messages=history, temperature=0.5))
    sent = fake.requests[0]
    assert sent.url == "https://api.anthropic.com/v1/messages"
    assert sent.headers["x-api-key"] == "sk-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    body = sent.body
    assert body["system"] == "Be brief."
    assert body["max_tokens"] == 4096 and body["temperature"] == 0.5
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather.",
            "input_schema": WEATHER.parameters,
        }
    ]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "Boom",
                    "is_error": True,
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


async def test_unanswered_tool_calls_are_repaired_for_replay(kind: str) -> None:
    fake = FAKES[kind](Text(["ok"]))
    history = [
        Message(role="user", content="go"),
        Message(role="assistant", tool_calls=[ToolCall(id="call_1", name="get_weather", arguments={})]),
        Message(role="user", content="again"),
    ]
    await collect(make_provider(kind, fake), request(messages=history))
    [result] = fake.tool_results(0)
    assert result["id"] == "call_1" and "interrupted" in result["content"]


async def test_env_vars_configure_key_and_base_url(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = kind.upper()
    monkeypatch.setenv(f"{prefix}_API_KEY", "sk-env")
    monkeypatch.setenv(f"{prefix}_BASE_URL", "http://127.0.0.1:9/custom/")
    fake = FAKES[kind](Text(["ok"]))
    await collect(make_provider(kind, fake, api_key=None))
    sent = fake.requests[0]
    assert sent.url.startswith("http://127.0.0.1:9/custom/")
    key = sent.headers.get("authorization") or sent.headers.get("x-api-key")
    assert key is not None and key.endswith("sk-env")


async def test_missing_key_fails_clearly_without_a_request(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(f"{kind.upper()}_API_KEY", raising=False)
    monkeypatch.delenv(f"{kind.upper()}_BASE_URL", raising=False)
    fake = FAKES[kind](Text(["ok"]))
    with pytest.raises(ProviderAuthError, match=f"{kind.upper()}_API_KEY is not set"):
        await collect(make_provider(kind, fake, api_key=None))
    assert fake.requests == []


async def test_ollama_needs_no_key_and_defaults_to_local(monkeypatch: pytest.MonkeyPatch) -> None:
    from orbiter_asgi.providers.openai import OllamaProvider

    monkeypatch.delenv("OLLAMA_BASE_URL", raising=False)
    fake = FAKES["openai"](Text(["ok"]))
    provider = OllamaProvider(client=fake.client())
    events = [e async for e in provider.stream(request(model="llama3.2"))]
    assert events[:1] == [TextEvent("ok")]
    assert fake.requests[0].url == "http://127.0.0.1:11434/v1/chat/completions"
    assert "authorization" not in fake.requests[0].headers


async def test_ollama_connect_error_says_to_start_it() -> None:
    from orbiter_asgi.providers.openai import OllamaProvider

    fake = FAKES["openai"](*[Raise(httpx.ConnectError("refused"))] * 2)
    provider = OllamaProvider(client=fake.client(), max_retries=1, backoff=0)
    with pytest.raises(ProviderError, match="ollama serve"):
        await collect(provider)
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (400, ProviderError, "refused the request (400)"),
        (401, ProviderAuthError, "401"),
        (403, ProviderAuthError, "403"),
        (404, ProviderError, "does not know model 'm-1' (404)"),
        (429, ProviderRateLimited, "rate limiting"),
        (500, ProviderError, "failed with 500"),
        (503, ProviderError, "failed with 503"),
    ],
)
async def test_error_statuses(kind: str, status: int, error: type[Exception], words: str) -> None:
    fake = FAKES[kind](*[Status(status, "upstream says no")] * 3)
    with pytest.raises(error, match="upstream says no") as info:
        await collect(make_provider(kind, fake, max_retries=2))
    assert words in str(info.value)
    assert info.value.status == status  # type: ignore[attr-defined]
    retried = status in (429, 500, 503)
    assert len(fake.requests) == (3 if retried else 1)


async def test_auth_error_names_the_env_var(kind: str) -> None:
    fake = FAKES[kind](Status(401, "Incorrect API key provided"))
    with pytest.raises(ProviderAuthError, match=f"check {kind.upper()}_API_KEY"):
        await collect(make_provider(kind, fake))


async def test_retry_then_success(kind: str) -> None:
    fake = FAKES[kind](Status(429, "slow down"), Status(503, "busy"), Text(["fine"]))
    events = await collect(make_provider(kind, fake, max_retries=2))
    assert events[0] == TextEvent("fine")
    assert len(fake.requests) == 3


async def test_connect_errors_are_retried(kind: str) -> None:
    fake = FAKES[kind](Raise(httpx.ConnectError("refused")), Text(["up"]))
    events = await collect(make_provider(kind, fake, max_retries=1))
    assert events[0] == TextEvent("up")


async def test_read_timeout_is_a_provider_timeout(kind: str) -> None:
    fake = FAKES[kind](Raise(httpx.ReadTimeout("slow")))
    with pytest.raises(ProviderTimeout, match="did not answer in time"):
        await collect(make_provider(kind, fake))


async def test_timeout_mid_stream(kind: str) -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            yield b"data: {}\n\n" if kind == "openai" else b'event: ping\ndata: {"type":"ping"}\n\n'
            raise httpx.ReadTimeout("no more bytes")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Broken())

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    with pytest.raises(ProviderTimeout, match="mid-stream"):
        await collect(make_provider(kind, FAKES[kind](), client=client))


MALFORMED = {
    "openai": [
        b"data: {not json\n\n",
        b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n',
        b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,'
        b'"delta":{"content":"cut"},"finish_reason":null}]}\n\n',
    ],
    "anthropic": [
        b"event: message_start\ndata: {not json\n\n",
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n',
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":1,"output_tokens":1}}}\n\n',
    ],
}


@pytest.mark.parametrize("case", range(3), ids=["bad-json", "error-event", "cut-short"])
async def test_malformed_streams(kind: str, case: int) -> None:
    fake = FAKES[kind](Raw(MALFORMED[kind][case]))
    with pytest.raises(ProviderError, match=r"malformed|mid-stream|ended before"):
        await collect(make_provider(kind, fake))
    assert fake.streams[0].closed


async def test_owned_client_is_created_lazily_and_closed(kind: str) -> None:
    from orbiter_asgi.providers import get_provider

    provider, name = get_provider(f"{kind}:m-1?timeout=5&max_retries=0")
    assert name == "m-1" and provider.max_retries == 0  # type: ignore[attr-defined]
    assert provider._client is None  # type: ignore[attr-defined]
    client = provider.client  # type: ignore[attr-defined]
    await provider.aclose()
    assert client.is_closed and provider._client is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 7, 1000])
async def test_sse_framing(newline: bytes, size: int) -> None:
    from orbiter_asgi.providers._http import iter_sse

    text = (
        b': comment\n\nevent: first\ndata: {"a":\n'
        b"data: 1}\n\nid: 7\ndata:caf\xc3\xa9\n\nretry: 5\n\ndata: last"
    ).replace(b"\n", newline)
    parts = [text[i : i + size] for i in range(0, len(text), size)]

    class Chunks(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for part in parts:
                yield part

    response = httpx.Response(200, stream=Chunks())
    events = [(e.event, e.data) async for e in iter_sse(response)]
    assert events == [("first", '{"a":\n1}'), ("message", "café"), ("message", "last")]
