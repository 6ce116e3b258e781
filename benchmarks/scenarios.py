"""The scenarios: what each sends, and the payloads, built once and shared.

Inputs are made of a fixed vocabulary so every run sends the same bytes.
A scenario with `targets` runs only on those (and their `+` variants): the
peers do not serve OpenAI's API, and neither does a `--baseline` commit
that may predate it.

A scenario with a `store` other than memory, or with `history_limit`, runs on
an `orbiter_asgi` server of its own (`orbiter_asgi+sqlite`, `+redis`,
`+postgres`, with `+h20` for `history_limit=20`): the peers keep sessions in
memory and show the model the whole history. `chat_session_long_N[_store]`
turns on sessions preloaded with N messages before the timed part (see
`long_sessions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlencode

__all__ = [
    "AGENT",
    "HTTP_SCENARIOS",
    "STORES",
    "WS_SCENARIOS",
    "HttpScenario",
    "WsScenario",
    "chat_body",
    "long_sessions",
    "openai_body",
    "stream_path",
    "words",
]

AGENT = "assistant"
_VOCABULARY = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs", "while", "seven", "agents",
    "stream", "tokens", "across", "sockets", "and", "servers", "measure", "every", "byte", "twice",
]  # fmt: skip


def words(n: int) -> str:
    """`n` words separated by single spaces."""
    return " ".join(_VOCABULARY[i % len(_VOCABULARY)] for i in range(n))


def chat_body(n: int, *, stream: bool = False, session_id: str | None = None) -> bytes:
    body: dict[str, object] = {"agent_name": AGENT, "input": words(n)}
    if stream:
        body["stream"] = True
    if session_id is not None:
        body["session_id"] = session_id
    return json.dumps(body, separators=(",", ":")).encode()


def openai_body(n: int, *, stream: bool = False) -> bytes:
    """A Chat Completions request of `n` words to the agent, by its model name."""
    body: dict[str, object] = {"model": AGENT, "messages": [{"role": "user", "content": words(n)}]}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def stream_path(n: int) -> str:
    return "/stream?" + urlencode({"agent_name": AGENT, "input": words(n)})


@dataclass(frozen=True)
class HttpScenario:
    """A request replayed by wrk; `session` makes every 4 requests share a session.

    With `preload` (messages) as well, requests go round-robin over sessions
    that hold that many messages when the round starts: `long_sessions` of them.
    """

    name: str
    method: str
    path: str
    body: bytes = b""
    session: bool = False
    store: str = "memory"  # only for session scenarios
    connections: int = 64
    note: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    targets: tuple[str, ...] = ()  # the only targets that serve it; empty: all
    preload: int = 0  # messages in each session before the round
    history_limit: int | None = None  # `Agent(history_limit=...)` of the server

    def serves(self, target: str) -> bool:
        return not self.targets or target.partition("+")[0] in self.targets

    @property
    def variant(self) -> str:
        """The `orbiter_asgi` server it needs beside the plain one, or "" for the plain one."""
        parts = [self.store] if self.store != "memory" else []
        if self.history_limit is not None:
            parts.append(f"h{self.history_limit}")
        return "+".join(parts)


@dataclass(frozen=True)
class WsScenario:
    name: str
    connections: int
    words: int = 100


HTTP_SCENARIOS = [
    HttpScenario("chat_json", "POST", "/chat", chat_body(20), note="POST /chat, 20 words"),
    HttpScenario(
        "chat_sse", "POST", "/chat", chat_body(100, stream=True), note="POST /chat stream, 100 words"
    ),
    HttpScenario(
        "chat_openai",
        "POST",
        "/v1/chat/completions",
        openai_body(20),
        note="POST /v1/chat/completions, 20 words",
        targets=("orbiter_asgi",),
    ),
    HttpScenario(
        "chat_openai_sse",
        "POST",
        "/v1/chat/completions",
        openai_body(100, stream=True),
        note="POST /v1/chat/completions stream, 100 words",
        targets=("orbiter_asgi",),
    ),
    HttpScenario(
        "stream_get", "GET", stream_path(1000), connections=32, note="GET /stream, 1,000 words"
    ),
    HttpScenario("agents", "GET", "/agents", note="GET /agents"),
    HttpScenario(
        "chat_session",
        "POST",
        "/chat",
        chat_body(20, session_id="SESSION"),
        session=True,
        note="POST /chat, 20 words, 4 turns per session, memory store",
    ),
    HttpScenario(
        "chat_session_sqlite",
        "POST",
        "/chat",
        chat_body(20, session_id="SESSION"),
        session=True,
        store="sqlite",
        note="as chat_session, SQLite store",
    ),
]

STORES = ("memory", "sqlite", "redis", "postgres")

for _store in STORES[2:]:
    HTTP_SCENARIOS.append(
        HttpScenario(
            f"chat_session_{_store}",
            "POST",
            "/chat",
            chat_body(20, session_id="SESSION"),
            session=True,
            store=_store,
            note=f"as chat_session, {_store.capitalize()} store",
        )
    )

LONG_LENGTHS = (10, 1_000, 10_000)
_LONG_CONNECTIONS = 32
_PRELOAD_BUDGET = 160_000  # messages preloaded per round, beyond one session per connection

for _store in STORES:
    for _n in LONG_LENGTHS:
        HTTP_SCENARIOS.append(
            HttpScenario(
                f"chat_session_long_{_n}" + ("" if _store == "memory" else f"_{_store}"),
                "POST",
                "/chat",
                chat_body(20, session_id="SESSION"),
                session=True,
                store=_store,
                connections=_LONG_CONNECTIONS,
                preload=_n,
                history_limit=20,
                note=f"POST /chat, 20 words, on sessions of {_n:,} messages, {_store} store, "
                "Agent(history_limit=20)",
            )
        )


def long_sessions(scenario: HttpScenario) -> int:
    """Sessions a round of a preloaded scenario goes round-robin over.

    At least one per connection, so turns do not wait on each other's session
    lock; more when they are short (up to 1,024), so that a round's turns
    grow each session by few messages and a 10-message session stays short.
    """
    return max(scenario.connections, min(1024, _PRELOAD_BUDGET // max(scenario.preload, 1)))


WS_SCENARIOS = [WsScenario("ws_1", 1), WsScenario("ws_32", 32)]
