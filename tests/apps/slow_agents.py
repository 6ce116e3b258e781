"""A target file for `orbiter-asgi serve`: echo agents, one slowed down, and one that fails."""

from collections.abc import AsyncIterator

from orbiter_asgi import Agent


async def broken(input: str) -> AsyncIterator[str]:
    """Says a word, then fails."""
    yield "partial"
    raise RuntimeError("model exploded")


agents = [
    Agent("assistant", description="fast echo"),
    Agent("slow", model="echo?delay=0.05", description="one word every 50 ms"),
    broken,
]
