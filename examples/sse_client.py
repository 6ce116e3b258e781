"""Guide: SSE Streaming (a client of GET /stream).

Set ORBITER_URL to point it at a server other than http://localhost:8000.
"""

import asyncio
import os

import httpx

BASE_URL = os.environ.get("ORBITER_URL", "http://localhost:8000")


async def main() -> None:
    async with httpx.AsyncClient() as client:
        async with client.stream("GET", f"{BASE_URL}/stream", params={
            "agent_name": "assistant",
            "input": "Tell me a story",
        }) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    print(line[6:], end="")


if __name__ == "__main__":
    asyncio.run(main())
