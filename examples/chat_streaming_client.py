"""Guide: Streaming Response (a client of POST /chat with stream=true).

Set ORBITER_URL to point it at a server other than http://localhost:8000.
"""

import asyncio
import os

import httpx

BASE_URL = os.environ.get("ORBITER_URL", "http://localhost:8000")


async def main() -> None:
    async with httpx.AsyncClient() as client, client.stream("POST", f"{BASE_URL}/chat", json={
        "agent_name": "assistant",
        "input": "Explain decorators",
        "stream": True,
    }) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                print(line[6:], end="", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
