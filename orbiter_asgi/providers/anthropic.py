"""`anthropic:` — the Messages API, streamed, over httpx.

The stream is a sequence of named events: `message_start` (input usage),
`content_block_start/delta/stop` per block (`text_delta` for text,
`input_json_delta` fragments for a `tool_use` block's input),
`message_delta` (stop reason, output usage), `message_stop`, plus `ping`
and `error`. The stored history replays as content blocks: assistant tool
calls become `tool_use` blocks and consecutive tool results merge into one
user message of `tool_result` blocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..exceptions import ProviderAuthError, ProviderError
from ..models import Message, TextEvent, ToolCallEvent, Usage
from ._history import repair_history
from ._http import HTTPProvider, iter_sse, parse_arguments, stream_object
from .base import InvalidToolCall, ModelEvent, ModelRequest

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "to_anthropic_messages"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # the API requires max_tokens; this fits every current model



def to_anthropic_messages(
    system: str | None, messages: list[Message]
) -> tuple[str | None, list[dict[str, Any]]]:
    """`(system, messages)` in Messages API form; same-role turns are merged."""
    systems = [system] if system else []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for message in repair_history(messages):
        if message.role == "system":
            if message.content:
                systems.append(message.content)
        elif message.role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
            if message.is_error:
                block["is_error"] = True
            add("user", [block])
        else:
            # the API rejects empty text blocks; a cancelled turn may have stored ""
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": message.content}] if message.content else []
            )
            for call in message.tool_calls or ():
                blocks.append(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                )
            add(message.role, blocks)
    return ("\n\n".join(systems) or None), out


class _Block:
    __slots__ = ("id", "input", "kind", "name", "parts")

    def __init__(self, content_block: dict[str, Any]) -> None:
        self.kind = content_block.get("type", "")
        self.id = str(content_block.get("id", ""))
        self.name = str(content_block.get("name", ""))
        self.input = content_block.get("input")
        self.parts: list[str] = []


class AnthropicProvider(HTTPProvider):
    """The Messages API with `stream: true`.

    ```python
    Agent(name="a", model="anthropic:claude-3-5-sonnet-latest")   # ANTHROPIC_API_KEY
    ```

    Parameters (keyword-only, all optional): `api_key` (else
    `$ANTHROPIC_API_KEY`), `base_url` (else `$ANTHROPIC_BASE_URL`, else
    Anthropic's), `client`, `timeout`, `max_retries`, `backoff` as for
    `OpenAIProvider`, and `max_tokens` used when the agent sets none (the API
    requires one).
    """

    label = "Anthropic"
    key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    default_base_url = "https://api.anthropic.com"

    def __init__(self, *, max_tokens: int | str = DEFAULT_MAX_TOKENS, **options: Any) -> None:
        super().__init__(**options)
        self.max_tokens = int(max_tokens)

    def headers(self) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    def body(self, request: ModelRequest) -> dict[str, Any]:
        system, messages = to_anthropic_messages(request.system, request.messages)
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or self.max_tokens,
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = system
        if request.tools:
            body["tools"] = [
                {"name": s.name, "description": s.description, "input_schema": s.parameters}
                for s in request.tools
            ]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        if not self.api_key and self.base_url == self.default_base_url:
            raise ProviderAuthError(f"{self.key_env} is not set; the {self.label} API needs a key")
        blocks: dict[int, _Block] = {}
        input_tokens = output_tokens = 0
        stopped = False
        async with self.open_stream(
            "/v1/messages", self.body(request), model=request.model
        ) as response:
            async for sse in iter_sse(response):
                event = stream_object(self.label, sse.data)
                kind = event.get("type", sse.event)
                if kind == "content_block_delta":
                    delta = event.get("delta") or {}
                    delta_type = delta.get("type")
                    if delta_type == "text_delta":
                        if text := delta.get("text"):
                            yield TextEvent(text)
                    elif delta_type == "input_json_delta":
                        block = blocks.get(event.get("index", 0))
                        if block is None:
                            raise ProviderError(f"{self.label} sent a delta for an unknown block")
                        block.parts.append(delta.get("partial_json") or "")
                elif kind == "content_block_start":
                    blocks[event.get("index", 0)] = _Block(event.get("content_block") or {})
                elif kind == "message_start":
                    usage = (event.get("message") or {}).get("usage") or {}
                    input_tokens = _input_tokens(usage)
                    output_tokens = int(usage.get("output_tokens") or 0)
                elif kind == "message_delta":
                    usage = event.get("usage") or {}
                    # counts in message_delta are cumulative: they replace, not add
                    if usage.get("output_tokens") is not None:
                        output_tokens = int(usage["output_tokens"])
                    if usage.get("input_tokens") is not None:
                        input_tokens = _input_tokens(usage)
                elif kind == "message_stop":
                    stopped = True
                    break
                elif kind == "error":
                    error = event.get("error") or {}
                    raise ProviderError(
                        f"{self.label} reported an error mid-stream: "
                        f"{error.get('type', 'error')}: {error.get('message', '')}".rstrip(": ")
                    )
                # ping, content_block_stop and event types added later need nothing
        if not stopped:
            raise ProviderError(f"{self.label} stream ended before message_stop")
        for index in sorted(blocks):
            block = blocks[index]
            if block.kind != "tool_use":
                continue
            raw = "".join(block.parts)
            if not raw and isinstance(block.input, dict):
                yield ToolCallEvent(id=block.id, name=block.name, arguments=block.input)
                continue
            try:
                arguments = parse_arguments(raw)
            except ValueError as exc:
                yield InvalidToolCall(
                    id=block.id, name=block.name, raw_arguments=raw, error=str(exc)
                )
                continue
            yield ToolCallEvent(id=block.id, name=block.name, arguments=arguments)
        yield Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )


def _input_tokens(usage: dict[str, Any]) -> int:
    # prompt-cache reads and writes are input too; the API counts them apart
    return (
        int(usage.get("input_tokens") or 0)
        + int(usage.get("cache_creation_input_tokens") or 0)
        + int(usage.get("cache_read_input_tokens") or 0)
    )
