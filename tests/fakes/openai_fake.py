"""A fake Chat Completions server: `data: {chunk}` lines, usage chunk, `[DONE]`.

Chunks follow the public streaming format: `chat.completion.chunk` objects
whose `choices[0].delta` carries `role`, `content` or `tool_calls`
fragments keyed by `index` (the first with `id`, `type` and the function
`name`, the rest only `function.arguments` pieces), a `finish_reason` chunk,
then, because the request set `stream_options.include_usage`, a chunk with
empty `choices` and the `usage`, then `data: [DONE]`.
"""

from __future__ import annotations

import json
from typing import Any

from ._base import FakeModelServer, Status, Text, ToolCalls, dumps

__all__ = ["OpenAIFake"]


class OpenAIFake(FakeModelServer):
    path = "/chat/completions"

    def _chunk(self, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1736937000,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }
        return f"data: {dumps(chunk)}\n\n".encode()

    def render(self, turn: Text | ToolCalls, model: str) -> list[bytes]:
        parts = [self._chunk(model, {"role": "assistant", "content": "", "refusal": None})]
        chunks = turn.chunks if isinstance(turn, Text) else turn.text
        parts += [self._chunk(model, {"content": c}) for c in chunks]
        finish = "stop"
        if isinstance(turn, ToolCalls):
            finish = "tool_calls"
            for index, call in enumerate(turn.calls):
                head = {
                    "index": index,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                parts.append(self._chunk(model, {"tool_calls": [head]}))
                for piece in call.fragments():
                    fragment = {"index": index, "function": {"arguments": piece}}
                    parts.append(self._chunk(model, {"tool_calls": [fragment]}))
        parts.append(self._chunk(model, {}, finish))
        prompt, completion = turn.usage
        usage_chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1736937000,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
        }
        parts.append(f"data: {dumps(usage_chunk)}\n\n".encode())
        parts.append(b"data: [DONE]\n\n")
        return parts

    def error_body(self, turn: Status) -> dict[str, Any]:
        kinds = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
        return {
            "error": {
                "message": turn.message,
                "type": "invalid_request_error",
                "param": None,
                "code": kinds.get(turn.code),
            }
        }

    def _messages(self, index: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.requests[index].body["messages"]
        return messages

    def system(self, index: int) -> str | None:
        for m in self._messages(index):
            if m["role"] == "system":
                return str(m["content"])
        return None

    def tool_names(self, index: int) -> list[str]:
        return [t["function"]["name"] for t in self.requests[index].body.get("tools", [])]

    def tool_results(self, index: int) -> list[dict[str, Any]]:
        return [
            {"id": m["tool_call_id"], "content": m["content"], "is_error": None}
            for m in self._messages(index)
            if m["role"] == "tool"
        ]

    def tool_calls(self, index: int) -> list[dict[str, Any]]:
        return [
            {
                "id": c["id"],
                "name": c["function"]["name"],
                "arguments": json.loads(c["function"]["arguments"]),
            }
            for m in self._messages(index)
            if m["role"] == "assistant"
            for c in m.get("tool_calls") or ()
        ]

    def user_texts(self, index: int) -> list[str]:
        return [m["content"] for m in self._messages(index) if m["role"] == "user"]
