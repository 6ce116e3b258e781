"""The offline `echo` model: the answer is the input, streamed word by word.

Deterministic and free, it is the demo model, the test model and the
benchmark model. `echo?delay=0.05` sleeps that many seconds before each
chunk, to hold streams open in load tests.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anyio

from ..models import TextEvent, Usage
from .base import ModelItem, ModelRequest

__all__ = ["EchoProvider", "split_words"]

_WORD = re.compile(r"\s*\S+\s*|\s+")


def split_words(text: str) -> list[str]:
    """Word-sized chunks whose concatenation is exactly `text`."""
    return _WORD.findall(text)


class EchoProvider:
    """Echoes the last user message back; never calls tools."""

    def __init__(self, *, delay: float | str = 0.0) -> None:
        self.delay = float(delay)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelItem]:
        prompt = ""
        for message in reversed(request.messages):
            if message.role == "user":
                prompt = message.content
                break
        chunks = split_words(prompt)
        delay = self.delay
        if delay:
            for chunk in chunks:
                await anyio.sleep(delay)
                yield TextEvent(chunk)
        elif chunks:
            yield chunks  # all ready at once: one batch of text deltas
        input_tokens = 0
        for message in request.messages:
            # the prompt is already split: count it from `chunks`, not a second regex pass
            input_tokens += len(chunks) if message.content is prompt else len(split_words(message.content))
        yield Usage(
            input_tokens=input_tokens,
            output_tokens=len(chunks),
            total_tokens=input_tokens + len(chunks),
        )

    async def aclose(self) -> None:
        return None
