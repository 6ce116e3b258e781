"""OpenTelemetry spans of runs and model calls (the `otel` extra: `opentelemetry-api`).

Each run is an `invoke_agent {agent}` span (INTERNAL) and each model call a
`chat {model}` span (CLIENT) under it, with the GenAI semantic conventions'
attributes: `gen_ai.operation.name`, `gen_ai.provider.name`,
`gen_ai.request.model`, `gen_ai.agent.name`, `gen_ai.conversation.id`,
`gen_ai.usage.input_tokens` / `output_tokens`,
`gen_ai.response.finish_reasons` and `error.type`. `TracingMiddleware`
continues a request's W3C `traceparent`, so a run's span is a child of the
caller's.

Only the API is used: spans are recorded by whatever SDK the application
configures (`trace.set_tracer_provider(...)`, or `opentelemetry-instrument`).
Without one, a run asks one question (`tracer()`, about 1.5 us) and does
nothing else; without `opentelemetry` even imported, that question is a
dict lookup, and this module never imports it on a run's path.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ._version import __version__
from .exceptions import OrbiterError
from .models import ToolCallEvent, Usage
from .providers import PROVIDERS, split_model
from .providers.base import InvalidToolCall, ModelItem, ModelRequest

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from .runs.run import Run

__all__ = [
    "ChatSpan",
    "RunSpan",
    "TracingMiddleware",
    "end_run_span",
    "start_run_span",
    "tracer",
    "tracing_middleware",
]

_API = "opentelemetry.trace"
_SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"

_provider: object = None  # the global tracer provider `_tracer` was made for
_tracer: Tracer | None = None


def tracer() -> Tracer | None:
    """This package's tracer while an SDK records spans, else None.

    Asked once per request, run and model-call loop. Nobody can have set a
    tracer provider without importing `opentelemetry.trace`, so until then
    the answer is a dict lookup; after, a call and an identity test (a
    provider is set once, but tests reset it).
    """
    global _provider, _tracer
    api = sys.modules.get(_API)
    if api is None:
        return None
    provider = api.get_tracer_provider()
    if provider is not _provider:
        _provider = provider
        # the default proxy, with no SDK behind it, and the no-op provider record nothing
        if isinstance(provider, api.ProxyTracerProvider | api.NoOpTracerProvider):
            _tracer = None
        else:
            _tracer = provider.get_tracer("orbiter_asgi", __version__, schema_url=_SCHEMA_URL)
    return _tracer


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, OrbiterError):
        return exc.code  # the run's error codes, as clients see them: few and stable
    if isinstance(exc, GeneratorExit | asyncio.CancelledError | anyio.get_cancelled_exc_class()):
        return "cancelled"
    return type(exc).__qualname__


def _model_attributes(model: str, attributes: dict[str, Any]) -> None:
    """`gen_ai.provider.name` and `gen_ai.request.model` of a model string, for a built-in provider."""
    prefix, name, _ = split_model(model)
    if prefix in PROVIDERS:
        attributes["gen_ai.provider.name"] = prefix
        attributes["gen_ai.request.model"] = name


class RunSpan:
    """A run's span, current while the run drives."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: Token[Context]) -> None:
        self.span = span
        self.token = token


def start_run_span(run: Run) -> RunSpan | None:
    """Start `run`'s `invoke_agent` span, as a child of the current context
    (the request's `traceparent`), and make it current; None when not tracing.

    Call it in the task that drives the run, and `end_run_span` there too.
    """
    tracer_ = tracer()
    if tracer_ is None:
        return None
    from opentelemetry import context, trace

    agent = run.agent
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": agent.name,
        "orbiter.run.id": run.id,
    }
    if run.session_id is not None:
        attributes["gen_ai.conversation.id"] = run.session_id
    _model_attributes(agent.model, attributes)
    span = tracer_.start_span(
        f"invoke_agent {agent.name}", kind=trace.SpanKind.INTERNAL, attributes=attributes
    )
    return RunSpan(span, context.attach(trace.set_span_in_context(span)))


def end_run_span(run_span: RunSpan, run: Run) -> None:
    """End a run's span with what its record says (usage, status, error code)."""
    from opentelemetry import context, trace

    span = run_span.span
    try:
        info = run.info
        if info is not None and span.is_recording():
            span.set_attribute("gen_ai.usage.input_tokens", info.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", info.usage.output_tokens)
            if info.error is not None:
                span.set_attribute("error.type", info.error.code)
                span.set_status(trace.Status(trace.StatusCode.ERROR, info.error.message))
        span.end()
    finally:
        context.detach(run_span.token)


class ChatSpan:
    """A provider's stream of one model call, under a `chat {model}` span.

    It watches what passes for the usage and tool calls, and ends the span
    when the stream ends, fails, or is closed before its end (`cancelled`).
    """

    __slots__ = ("_ended", "_events", "_tool_calls", "_usage", "span")

    def __init__(self, span: Span, events: AsyncIterator[ModelItem]) -> None:
        self.span = span
        self._events = events
        self._usage: Usage | None = None
        self._tool_calls = False
        self._ended = False

    @classmethod
    def start(
        cls, tracer_: Tracer, model: str, request: ModelRequest, events: AsyncIterator[ModelItem]
    ) -> ChatSpan:
        """`events` (`provider.stream(request)` for `model`, a model string) under a new span."""
        from opentelemetry import trace

        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": request.model}
        _model_attributes(model, attributes)
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
        if request.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
        span = tracer_.start_span(f"chat {request.model}", kind=trace.SpanKind.CLIENT, attributes=attributes)
        return cls(span, events)

    def __aiter__(self) -> ChatSpan:
        return self

    async def __anext__(self) -> ModelItem:
        try:
            item = await self._events.__anext__()
        except StopAsyncIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        kind = type(item)
        if kind is Usage:
            self._usage = item  # type: ignore[assignment]
        elif kind is ToolCallEvent or isinstance(item, InvalidToolCall):
            self._tool_calls = True
        elif kind is list:
            try:
                "".join(item)  # type: ignore[arg-type]
            except TypeError:  # a list that holds events too
                for part in item:  # type: ignore[union-attr]
                    if type(part) is Usage:
                        self._usage = part
                    elif type(part) is ToolCallEvent or isinstance(part, InvalidToolCall):
                        self._tool_calls = True
        return item

    async def aclose(self) -> None:
        if not self._ended:
            self._end(GeneratorExit())  # closed before its end: the run stopped
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()

    def _end(self, exc: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        span = self.span
        if not span.is_recording():  # sampled out
            span.end()
            return
        from opentelemetry import trace

        usage = self._usage
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if exc is None:
            span.set_attribute(
                "gen_ai.response.finish_reasons", ["tool_calls" if self._tool_calls else "stop"]
            )
        else:
            span.set_attribute("error.type", _error_type(exc))
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc) or type(exc).__name__))
        span.end()


class TracingMiddleware:
    """Continue an incoming W3C `traceparent` (with the configured propagators)
    for the request, so the spans of its runs are children of the caller's.

    A request passes straight through when no SDK records spans, or when an
    outer middleware (OpenTelemetry's ASGI instrumentation) already made a
    span current: that span is then the runs' parent.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or tracer() is None:
            await self.app(scope, receive, send)
            return
        from opentelemetry import context, propagate, trace

        if trace.get_current_span().get_span_context().is_valid:
            await self.app(scope, receive, send)
            return
        carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        token = context.attach(propagate.extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)


def tracing_middleware(*, always: bool = False) -> list[Middleware]:
    """`[Middleware(TracingMiddleware)]`, or `[]`: without `opentelemetry-api`,
    and, unless `always`, while no SDK is configured (configure it before
    building the app, as OpenTelemetry advises).

    Any middleware costs every request the app's direct route to its own
    endpoints (a third of a small request's time), so an app nobody traces
    gets none. Runs are traced either way once an SDK is configured; the
    middleware only continues the caller's `traceparent`.
    """
    if not always and _API not in sys.modules:
        return []  # no SDK can be configured without importing the API; nor is it imported here
    try:
        import opentelemetry.propagate
        import opentelemetry.trace  # noqa: F401  (imported at build, not in a request)
    except ImportError:
        return []
    if not always and tracer() is None:
        return []
    return [Middleware(TracingMiddleware)]
