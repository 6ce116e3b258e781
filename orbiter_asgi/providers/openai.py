"""`openai:` and `ollama:` — the Chat Completions API, streamed, over httpx.

Works with OpenAI and every server that speaks the same API (vLLM, Ollama,
llama.cpp's server, LM Studio, LiteLLM...): set `OPENAI_BASE_URL`, or use the
`ollama:` prefix, whose base URL defaults to a local Ollama. Tool-call
arguments arrive as JSON fragments spread over chunks, keyed by the call's
`index`; they are assembled and parsed when the call is complete.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from ..exceptions import ProviderAuthError, ProviderError
from ..models import Message, TextEvent, ToolCallEvent, Usage
from ._history import repair_history
from ._http import HTTPProvider, iter_sse, parse_arguments, stream_object
from .base import InvalidToolCall, ModelEvent, ModelRequest

__all__ = ["OllamaProvider", "OpenAIProvider", "to_openai_messages"]

_encode = msgspec.json.encode


def to_openai_messages(system: str | None, messages: list[Message]) -> list[dict[str, Any]]:
    """The stored history in Chat Completions form."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    for message in repair_history(messages):
        role = message.role
        if role == "assistant" and message.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": message.content or None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {
                                "name": call.name,
                                "arguments": _encode(call.arguments).decode(),
                            },
                        }
                        for call in message.tool_calls
                    ],
                }
            )
        elif role == "tool":
            out.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
            )
        else:
            out.append({"role": role, "content": message.content})
    return out


class _PendingCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class OpenAIProvider(HTTPProvider):
    """Chat Completions with `stream: true`.

    ```python
    Agent(name="a", model="openai:gpt-4o")                 # OPENAI_API_KEY
    OpenAIProvider(base_url="http://127.0.0.1:8000/v1")    # vLLM and friends
    ```

    Parameters (keyword-only, all optional): `api_key` (else
    `$OPENAI_API_KEY`), `base_url` (else `$OPENAI_BASE_URL`, else OpenAI),
    `client` (an `httpx.AsyncClient` to use instead of the pooled one),
    `timeout` (seconds or `httpx.Timeout`), `max_retries` for 429/5xx and
    connect failures, `backoff` (first retry delay in seconds).
    """

    label = "OpenAI"
    key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    def body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": to_openai_messages(request.system, request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": spec.name,
                        "description": spec.description,
                        "parameters": spec.parameters,
                    },
                }
                for spec in request.tools
            ]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        return body

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        if self.needs_key and not self.api_key and self.base_url == self.default_base_url:
            raise ProviderAuthError(
                f"{self.key_env} is not set; the {self.label} API needs a key "
                f"(or set {self.base_url_env} to a compatible server that does not)"
            )
        calls: dict[int, _PendingCall] = {}
        usage: Usage | None = None
        finished = False
        async with self.open_stream(
            "/chat/completions", self.body(request), model=request.model
        ) as response:
            async for sse in iter_sse(response):
                data = sse.data
                if data == "[DONE]":
                    finished = True
                    break
                chunk = stream_object(self.label, data, "stream chunk")
                if (error := chunk.get("error")) is not None:
                    message = error.get("message") if isinstance(error, dict) else error
                    raise ProviderError(f"{self.label} reported an error mid-stream: {message}")
                if (raw_usage := chunk.get("usage")) and isinstance(raw_usage, dict):
                    usage = _usage(raw_usage)
                for choice in chunk.get("choices") or ():
                    if choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta") or {}
                    if content := delta.get("content"):
                        yield TextEvent(content)
                    for fragment in delta.get("tool_calls") or ():
                        pending = calls.get(fragment.get("index", 0))
                        if pending is None:
                            pending = calls[fragment.get("index", 0)] = _PendingCall()
                        if fragment.get("id"):
                            pending.id = fragment["id"]
                        function = fragment.get("function") or {}
                        if function.get("name"):
                            pending.name += function["name"]
                        if function.get("arguments"):
                            pending.arguments.append(function["arguments"])
                    if choice.get("finish_reason"):
                        finished = True
        if not finished:
            raise ProviderError(f"{self.label} stream ended before the completion finished")
        for index in sorted(calls):
            call = calls[index]
            call_id = call.id or f"call_{index}"
            raw = "".join(call.arguments)
            try:
                arguments = parse_arguments(raw)
            except ValueError as exc:
                yield InvalidToolCall(id=call_id, name=call.name, raw_arguments=raw, error=str(exc))
                continue
            yield ToolCallEvent(id=call_id, name=call.name, arguments=arguments)
        yield usage or Usage()


def _usage(raw: dict[str, Any]) -> Usage:
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=int(raw.get("total_tokens") or prompt + completion),
    )


class OllamaProvider(OpenAIProvider):
    """`ollama:llama3.2` — Ollama's OpenAI-compatible API; no key needed.

    The base URL is `$OLLAMA_BASE_URL`, else `http://127.0.0.1:11434/v1`.
    """

    label = "Ollama"
    key_env = "OLLAMA_API_KEY"
    base_url_env = "OLLAMA_BASE_URL"
    default_base_url = "http://127.0.0.1:11434/v1"

    needs_key = False
    connect_hint = " (is `ollama serve` running?)"
