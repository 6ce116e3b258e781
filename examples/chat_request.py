"""Guide: Chat Endpoint, the request model."""

from orbiter_asgi.app import ChatRequest

# Request body
request = ChatRequest(
    agent_name="assistant",
    input="What is Python?",
    session_id="session-123",  # optional: for conversation continuity
    stream=False,              # optional: enable SSE streaming
)
