"""Make a stored history replayable: every tool call answered, no orphans.

Both APIs reject a history where an assistant's tool call is not followed by
its result, or a result answers no call. A session can hold either: a run
cancelled while its tools ran stores the calls but not the results, and
`POST /sessions/{id}/messages` accepts whatever a client sends. Rather than
fail every later turn of such a session, the providers replay a repaired
copy: a missing result becomes an error result, an orphan result becomes
plain user text.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..models import Message

__all__ = ["MISSING_RESULT", "repair_history"]

MISSING_RESULT = "The tool call was interrupted before it returned a result."


def repair_history(messages: Sequence[Message]) -> list[Message]:
    repaired: list[Message] = []
    pending: dict[str, str] = {}  # tool_call_id -> name, of the last assistant turn

    def close_pending() -> None:
        for call_id, name in pending.items():
            repaired.append(
                Message(
                    role="tool",
                    content=MISSING_RESULT,
                    tool_call_id=call_id,
                    name=name,
                    is_error=True,
                )
            )
        pending.clear()

    for message in messages:
        if message.role == "tool":
            if message.tool_call_id is not None and message.tool_call_id in pending:
                del pending[message.tool_call_id]
                repaired.append(message)
            else:
                label = f"Result of tool {message.name}" if message.name else "Tool result"
                repaired.append(Message(role="user", content=f"{label}: {message.content}"))
            continue
        close_pending()
        if message.role == "assistant" and message.tool_calls:
            pending = {call.id: call.name for call in message.tool_calls}
        repaired.append(message)
    close_pending()
    return repaired
