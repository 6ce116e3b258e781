"""A fake Messages API: named SSE events, as the public streaming docs show.

`message_start` (input usage), per content block `content_block_start`,
`content_block_delta` (`text_delta`, or `input_json_delta` pieces of a
`tool_use` block's input, the first one empty), `content_block_stop`, a
`ping`, `message_delta` (stop reason, cumulative output usage),
`message_stop`. Error bodies are `{"type": "error", "error": {type, message}}`.
"""

from __future__ import annotations

from typing import Any

from ._base import FakeModelServer, Status, Text, ToolCalls, dumps

__all__ = ["AnthropicFake"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {dumps(data)}\n\n".encode()


class AnthropicFake(FakeModelServer):
    path = "/v1/messages"

    def render(self, turn: Text | ToolCalls, model: str) -> list[bytes]:
        prompt, completion = turn.usage
        parts = [
            event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_fake",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": prompt, "output_tokens": 1},
                    },
                },
            )
        ]
        chunks = turn.chunks if isinstance(turn, Text) else turn.text
        index = 0
        if chunks:
            parts.append(
                event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            parts.append(b'event: ping\ndata: {"type": "ping"}\n\n')
            for c in chunks:
                parts.append(
                    event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": c},
                        },
                    )
                )
            parts.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            index = 1
        stop_reason = "end_turn"
        if isinstance(turn, ToolCalls):
            stop_reason = "tool_use"
            for call in turn.calls:
                parts.append(
                    event(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {
                                "type": "tool_use",
                                "id": call.id,
                                "name": call.name,
                                "input": {},
                            },
                        },
                    )
                )
                for piece in ["", *call.fragments()]:
                    parts.append(
                        event(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": piece},
                            },
                        )
                    )
                parts.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
                index += 1
        parts.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": completion},
                },
            )
        )
        parts.append(event("message_stop", {"type": "message_stop"}))
        return parts

    def error_body(self, turn: Status) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(turn.code, "api_error")
        return {"type": "error", "error": {"type": kind, "message": turn.message}}

    def _messages(self, index: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.requests[index].body["messages"]
        return messages

    def _blocks(self, index: int, role: str) -> list[dict[str, Any]]:
        blocks = []
        for m in self._messages(index):
            if m["role"] != role:
                continue
            content = m["content"]
            if isinstance(content, str):
                blocks.append({"type": "text", "text": content})
            else:
                blocks.extend(content)
        return blocks

    def system(self, index: int) -> str | None:
        return self.requests[index].body.get("system")

    def tool_names(self, index: int) -> list[str]:
        return [t["name"] for t in self.requests[index].body.get("tools", [])]

    def tool_results(self, index: int) -> list[dict[str, Any]]:
        return [
            {"id": b["tool_use_id"], "content": b["content"], "is_error": b.get("is_error", False)}
            for b in self._blocks(index, "user")
            if b["type"] == "tool_result"
        ]

    def tool_calls(self, index: int) -> list[dict[str, Any]]:
        return [
            {"id": b["id"], "name": b["name"], "arguments": b["input"]}
            for b in self._blocks(index, "assistant")
            if b["type"] == "tool_use"
        ]

    def user_texts(self, index: int) -> list[str]:
        return [b["text"] for b in self._blocks(index, "user") if b["type"] == "text"]
