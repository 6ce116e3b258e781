"""Guide: Creating the App."""

from orbiter_asgi import create_app

app = create_app()
# Includes:
#   POST /chat          - Chat endpoint
#   GET/POST /agents/*  - Agent management
#   GET/POST /sessions/* - Session management
#   GET /stream         - SSE streaming
#   WS /ws/chat         - WebSocket chat
