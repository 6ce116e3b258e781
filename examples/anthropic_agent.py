"""A Claude agent with a tool, served over HTTP, SSE and WebSocket.

    export ANTHROPIC_API_KEY=sk-ant-...
    python examples/anthropic_agent.py
    curl -s localhost:8000/chat -H 'content-type: application/json' \
         -d '{"input": "What time is it in Tokyo?", "session_id": "demo"}'
    curl -s localhost:8000/chat -H 'content-type: application/json' \
         -d '{"input": "And in Lima?", "session_id": "demo"}'     # same session, continues

ANTHROPIC_BASE_URL points it at a proxy or gateway that speaks the Messages API.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from orbiter_asgi import Agent, create_app

_OFFSETS = {"tokyo": 9, "lima": -5, "london": 0, "new york": -5, "paris": 1}


def local_time(city: str) -> str:
    """The current local time of a city (standard time, no daylight saving).

    Args:
        city: The city name.
    """
    hours = _OFFSETS.get(city.lower())
    if hours is None:
        raise KeyError(f"Unknown city {city!r}; known: {', '.join(sorted(_OFFSETS))}")
    now = datetime.now(timezone(timedelta(hours=hours)))
    return now.strftime("%H:%M on %A")


agent = Agent(
    name="claude",
    model="anthropic:claude-3-5-sonnet-latest",
    instructions="You are a concise travel assistant. Use local_time for any time question.",
    tools=[local_time],
    max_tokens=1024,
)

app = create_app(agents=[agent])

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
