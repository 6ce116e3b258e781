"""Model providers, chosen by the prefix of a model string (`openai:gpt-4o`).

Backends are named by import string and imported only when a model asks for
them, so an app that only uses `echo` never imports the HTTP clients' code.
One provider instance per backend is shared by every agent of the process and
closed by the app's lifespan (`aclose_providers`).
"""

from __future__ import annotations

import importlib
from urllib.parse import parse_qsl

from .base import ModelEvent, ModelRequest, Provider, ToolSpec
from .echo import EchoProvider

__all__ = [
    "PROVIDERS",
    "EchoProvider",
    "ModelEvent",
    "ModelRequest",
    "Provider",
    "ToolSpec",
    "aclose_providers",
    "get_provider",
    "split_model",
]

PROVIDERS: dict[str, str] = {
    "echo": "orbiter_asgi.providers.echo:EchoProvider",
    "openai": "orbiter_asgi.providers.openai:OpenAIProvider",
    "ollama": "orbiter_asgi.providers.openai:OllamaProvider",
    "anthropic": "orbiter_asgi.providers.anthropic:AnthropicProvider",
}

_instances: dict[str, Provider] = {}  # by prefix and options
_by_model: dict[str, tuple[Provider, str]] = {}  # every turn asks: a dict hit, no parsing


def split_model(model: str) -> tuple[str, str, dict[str, str]]:
    """`"openai:gpt-4o"` -> `("openai", "gpt-4o", {})`; `"echo?delay=1"` -> options."""
    model, _, query = model.partition("?")
    prefix, sep, name = model.partition(":")
    if not sep:
        prefix, name = model, model
    return prefix, name, dict(parse_qsl(query))


def _load(prefix: str) -> type[Provider]:
    try:
        target = PROVIDERS[prefix]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"Unknown model provider {prefix!r}; known: {known}") from None
    module_name, _, attr = target.partition(":")
    provider_class: type[Provider] = getattr(importlib.import_module(module_name), attr)
    return provider_class


def get_provider(model: str) -> tuple[Provider, str]:
    """The shared provider for a model string, and the model name to send it."""
    found = _by_model.get(model)
    if found is not None:
        return found
    prefix, name, options = split_model(model)
    key = f"{prefix}?{sorted(options.items())}" if options else prefix
    provider = _instances.get(key)
    if provider is None:
        provider_class = _load(prefix)
        provider = _instances[key] = provider_class(**options)
    found = _by_model[model] = (provider, name)
    return found


async def aclose_providers() -> None:
    """Close every shared provider; they reopen lazily if used again."""
    providers = list(_instances.values())
    _instances.clear()
    _by_model.clear()
    for provider in providers:
        await provider.aclose()
