"""OpenTelemetry spans of runs and model calls, through the app, against the fake OpenAI server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from orbiter_asgi import Agent, create_app
from orbiter_asgi.runtime.loop import run_loop
from orbiter_asgi.tracing import TracingMiddleware, tracer, tracing_middleware
from tests.fakes import Call, Status, Text, ToolCalls, make_provider
from tests.fakes.openai_fake import OpenAIFake
from tests.helpers import client_for, sse_events

pytestmark = pytest.mark.anyio

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _unset_global_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    # the API sets its global provider once per process; this undoes it the way
    # opentelemetry-test-utils' reset_trace_globals does, restored after the test
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK recording every span in memory, as the global tracer provider for one test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _unset_global_provider(monkeypatch)
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


def app_for(fake: OpenAIFake, *, always: bool = False, **agent_options: Any) -> Any:
    agent = Agent(
        name="assistant",
        model="openai:gpt-4o",
        tools=[add],
        provider=make_provider("openai", fake, max_retries=0),
        **agent_options,
    )
    return create_app(agents=[agent], middleware=tracing_middleware(always=always))


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def tool_then_answer() -> OpenAIFake:
    return OpenAIFake(
        ToolCalls([Call("call_1", "add", '{"a": 2, "b": 3}')], usage=(10, 5)),
        Text(["It is ", "5."], usage=(20, 3)),
    )


async def test_tool_using_run_has_a_run_span_and_a_chat_span_per_model_call(
    spans: InMemorySpanExporter,
) -> None:
    app = app_for(tool_then_answer(), temperature=0.2, max_tokens=256)
    async with client_for(app) as client:
        response = await client.post("/chat", json={"input": "2+3?", "session_id": "s1"}, headers=TRACEPARENT)
    assert response.status_code == 200, response.text
    assert response.json()["output"] == "It is 5."

    found = by_name(spans)
    assert sorted(found) == ["chat gpt-4o", "invoke_agent assistant"]
    [run] = found["invoke_agent assistant"]
    first, second = sorted(found["chat gpt-4o"], key=lambda span: span.start_time or 0)

    assert run.kind is trace.SpanKind.INTERNAL
    assert run.status.status_code is trace.StatusCode.UNSET
    assert dict(run.attributes or {}) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "assistant",
        "gen_ai.conversation.id": "s1",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 30,
        "gen_ai.usage.output_tokens": 8,
        "orbiter.run.id": response.json()["run_id"],
    }
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.max_tokens": 256,
    }
    assert first.kind is trace.SpanKind.CLIENT
    assert dict(first.attributes or {}) == {
        **common,
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.response.finish_reasons": ("tool_calls",),
    }
    assert dict(second.attributes or {}) == {
        **common,
        "gen_ai.usage.input_tokens": 20,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.finish_reasons": ("stop",),
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_run_span_continues_the_incoming_traceparent(spans: InMemorySpanExporter, stream: bool) -> None:
    app = app_for(OpenAIFake(Text(["hi"])))
    async with client_for(app) as client:
        response = await client.post("/chat", json={"input": "hello", "stream": stream}, headers=TRACEPARENT)
    assert response.status_code == 200
    if stream:
        events = sse_events(response.text)
        assert events[-1] == "[DONE]" and isinstance(events[-2], dict) and events[-2]["type"] == "done"

    found = by_name(spans)
    [run] = found["invoke_agent assistant"]
    [chat] = found["chat gpt-4o"]
    assert run.parent is not None and run.parent.is_remote
    assert run.parent.span_id == int(PARENT_ID, 16)
    assert run.context is not None and chat.context is not None
    assert run.context.trace_id == chat.context.trace_id == int(TRACE_ID, 16)
    assert chat.parent is not None and chat.parent.span_id == run.context.span_id


async def test_without_traceparent_the_run_span_starts_a_trace(spans: InMemorySpanExporter) -> None:
    async with client_for(app_for(OpenAIFake(Text(["hi"])))) as client:
        assert (await client.post("/chat", json={"input": "hello"})).status_code == 200
    [run] = by_name(spans)["invoke_agent assistant"]
    assert run.parent is None


async def test_a_span_made_current_outside_the_app_stays_the_parent(spans: InMemorySpanExporter) -> None:
    # OpenTelemetry's own ASGI middleware, wrapping the app, already continued the caller's trace
    async with client_for(app_for(OpenAIFake(Text(["hi"])))) as client:
        with trace.get_tracer("test").start_as_current_span("POST /chat") as outer:
            response = await client.post("/chat", json={"input": "hello"}, headers=TRACEPARENT)
    assert response.status_code == 200
    [run] = by_name(spans)["invoke_agent assistant"]
    assert run.parent is not None and run.parent.span_id == outer.get_span_context().span_id


async def test_failed_run_has_error_type_and_error_status(spans: InMemorySpanExporter) -> None:
    app = app_for(OpenAIFake(Status(400, "bad model")))
    async with client_for(app) as client:
        response = await client.post("/chat", json={"input": "hello"}, headers=TRACEPARENT)
    assert response.status_code >= 400

    found = by_name(spans)
    [run] = found["invoke_agent assistant"]
    [chat] = found["chat gpt-4o"]
    for span in (run, chat):
        assert span.status.status_code is trace.StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "provider_error"
        assert "gen_ai.response.finish_reasons" not in (span.attributes or {})
    assert chat.parent is not None and run.context is not None
    assert chat.parent.span_id == run.context.span_id


async def test_without_an_sdk_nothing_is_recorded_and_runs_work(monkeypatch: pytest.MonkeyPatch) -> None:
    _unset_global_provider(monkeypatch)  # the default: a proxy with no SDK behind it
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)

    def no_tracer(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a tracer was asked for with no SDK configured")

    monkeypatch.setattr(trace.ProxyTracerProvider, "get_tracer", no_tracer)
    assert tracer() is None
    assert tracing_middleware() == []  # an app nobody traces keeps its direct routes
    async with client_for(app_for(tool_then_answer(), always=True)) as client:
        response = await client.post("/chat", json={"input": "2+3?"}, headers=TRACEPARENT)
        client_app = app_for(OpenAIFake(Status(400, "bad model")), always=True)
        async with client_for(client_app) as failing:
            failed = await failing.post("/chat", json={"input": "2+3?", "stream": True})
    assert response.status_code == 200 and response.json()["output"] == "It is 5."
    assert failed.status_code == 200 and sse_events(failed.text)[-2]["type"] == "error"  # type: ignore[index]
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_tracer_is_none_until_opentelemetry_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "opentelemetry.trace")
    assert tracer() is None


def test_tracing_middleware_only_when_the_api_is_there(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    [middleware] = tracing_middleware()
    assert middleware.cls is TracingMiddleware  # type: ignore[comparison-overlap]
    monkeypatch.setitem(sys.modules, "opentelemetry.propagate", None)  # as if not installed
    assert tracing_middleware() == tracing_middleware(always=True) == []


def test_tracing_middleware_never_imports_the_api_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "opentelemetry.trace")
    assert tracing_middleware() == []
    assert "opentelemetry.trace" not in sys.modules


async def test_tracing_middleware_passes_lifespan_and_websockets(spans: InMemorySpanExporter) -> None:
    calls: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])
        if scope["type"] == "websocket":
            calls.append(format(trace.get_current_span().get_span_context().trace_id, "032x"))

    middleware = TracingMiddleware(inner)
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    headers = [(b"traceparent", TRACEPARENT["traceparent"].encode())]
    await middleware({"type": "websocket", "headers": headers}, None, None)  # type: ignore[arg-type]
    assert calls == ["lifespan", "websocket", TRACE_ID]
    assert trace.get_current_span() is trace.INVALID_SPAN  # detached after the request


async def test_a_model_call_cut_short_ends_its_span_as_cancelled(spans: InMemorySpanExporter) -> None:
    agent = Agent("assistant", model="openai:gpt-4o", provider=make_provider("openai", tool_then_answer()))
    items = run_loop(agent, "2+3?", [])
    await items.__anext__()
    await items.aclose()  # type: ignore[attr-defined]  # as a run does when its client leaves mid-answer
    [chat] = by_name(spans)["chat gpt-4o"]
    assert chat.status.status_code is trace.StatusCode.ERROR
    assert (chat.attributes or {})["error.type"] == "cancelled"
