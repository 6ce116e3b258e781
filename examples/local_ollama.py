"""A local model through Ollama: no key, no cloud.

    ollama pull llama3.2 && ollama serve
    python examples/local_ollama.py
    curl -N 'localhost:8000/stream?input=Roll%20two%20dice%20for%20me'

`ollama:` is the OpenAI provider with the base URL defaulting to
http://127.0.0.1:11434/v1 (override with OLLAMA_BASE_URL). Tool calling
needs a model that supports it (llama3.1+, qwen2.5, mistral-nemo...). Any other
OpenAI-compatible local server works the same way with `openai:` and
OPENAI_BASE_URL, e.g. llama.cpp's `llama-server` on http://127.0.0.1:8080/v1.
"""

from __future__ import annotations

import random

from orbiter_asgi import Agent, create_app


def roll_dice(count: int = 1, sides: int = 6) -> list[int]:
    """Roll dice.

    Args:
        count: How many dice.
        sides: Sides per die.
    """
    return [random.randint(1, sides) for _ in range(count)]


agent = Agent(
    name="local",
    model="ollama:llama3.2",
    instructions="You are a helpful assistant running on the user's machine.",
    tools=[roll_dice],
)

app = create_app(agents=[agent])

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
