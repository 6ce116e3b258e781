"""Fake OpenAI and Anthropic servers speaking the public wire formats."""

from __future__ import annotations

from typing import Any

import httpx

from orbiter_asgi.providers.anthropic import AnthropicProvider
from orbiter_asgi.providers.openai import OpenAIProvider

from ._base import Call, FakeModelServer, FakeStream, Hang, Raise, Raw, Status, Text, ToolCalls
from .anthropic_fake import AnthropicFake
from .openai_fake import OpenAIFake

__all__ = [
    "FAKES",
    "Call",
    "FakeModelServer",
    "FakeStream",
    "Hang",
    "Raise",
    "Raw",
    "Status",
    "Text",
    "ToolCalls",
    "make_provider",
]

FAKES: dict[str, type[FakeModelServer]] = {"openai": OpenAIFake, "anthropic": AnthropicFake}


def make_provider(
    kind: str, fake: FakeModelServer, client: httpx.AsyncClient | None = None, **options: Any
) -> OpenAIProvider | AnthropicProvider:
    options.setdefault("api_key", "sk-test")
    options.setdefault("backoff", 0)
    provider_class = OpenAIProvider if kind == "openai" else AnthropicProvider
    return provider_class(client=client or fake.client(), **options)
