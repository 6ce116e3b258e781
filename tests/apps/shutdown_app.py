"""A target for shutdown tests: slow echo agents and a store that mirrors
every append to the JSON-lines file named by `$ORBITER_TEST_JOURNAL`, so a
test can read what was stored after the process is gone."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from orbiter_asgi import Agent, create_app
from orbiter_asgi.models import Message
from orbiter_asgi.stores import MemoryStore


class JournalStore(MemoryStore):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    async def append(self, session_id: str, messages: Sequence[Message]) -> list[Message]:
        stored = await super().append(session_id, messages)
        with open(self.path, "a", encoding="utf-8") as journal:
            for message in stored:
                journal.write(
                    json.dumps({"session": session_id, "role": message.role, "content": message.content})
                )
                journal.write("\n")
        return stored


app = create_app(
    agents=[
        Agent("quick", model="echo?delay=0.05", description="ten words take half a second"),
        Agent("endless", model="echo?delay=0.2", description="never done within the grace period"),
    ],
    store=JournalStore(os.environ["ORBITER_TEST_JOURNAL"]),
)
