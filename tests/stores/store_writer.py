"""A second process for the concurrency tests.

python store_writer.py URL SESSION append WRITER COUNT   # COUNT appends, one message each
python store_writer.py URL SESSION hold                  # takes the turn lock, then hangs
"""

from __future__ import annotations

import sys

import anyio

from orbiter_asgi.models import Message
from orbiter_asgi.stores import open_store


async def main(url: str, session_id: str, mode: str, *args: str) -> None:
    store = open_store(url)
    try:
        if mode == "append":
            writer, count = args[0], int(args[1])
            for i in range(count):
                await store.append(session_id, [Message(role="user", content=f"{writer}:{i}")])
            print("done", flush=True)
        else:
            async with store.lock(session_id):
                print("locked", flush=True)
                await anyio.sleep_forever()
    finally:
        await store.aclose()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
