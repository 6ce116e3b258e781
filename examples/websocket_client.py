"""Guide: WebSocket Streaming (a client of WS /ws/chat).

Set ORBITER_URL to point it at a server other than http://localhost:8000.
"""

import asyncio
import json
import os

import websockets

WS_URL = os.environ.get("ORBITER_URL", "http://localhost:8000").replace("http", "ws", 1)


async def main() -> None:
    async with websockets.connect(f"{WS_URL}/ws/chat") as ws:
        # Send a message
        await ws.send(json.dumps({
            "agent_name": "assistant",
            "input": "Hello!",
            "session_id": "session-123",
        }))

        # Receive streaming response
        async for message in ws:
            data = json.loads(message)
            if data.get("type") == "text":
                print(data["content"], end="")
            elif data.get("type") == "done":
                break


if __name__ == "__main__":
    asyncio.run(main())
