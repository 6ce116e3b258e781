"""A target for `orbiter-asgi serve`: the app OpenAI's SDK is tested against.

It needs a key, as a deployment would, and cancels a run as soon as its
client leaves (`disconnect_grace=0`), so a test sees that at once.
"""

from collections.abc import AsyncIterator

from orbiter_asgi import Agent, create_app

KEY = "sk-orbiter-openai-test"


async def broken(input: str) -> AsyncIterator[str]:
    """Says a word, then fails."""
    yield "partial"
    raise RuntimeError("model exploded")


app = create_app(
    agents=[
        Agent("assistant", description="fast echo"),
        Agent("slow", model="echo?delay=0.05", description="one word every 50 ms"),
        broken,
    ],
    store="memory://",  # not `serve`'s default file
    api_keys=[KEY],
    disconnect_grace=0,
)
