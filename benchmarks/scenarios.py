"""The scenarios: what each sends, and the payloads, built once and shared.

Inputs are made of a fixed vocabulary so every run sends the same bytes.
A scenario with `targets` runs only on those (and their `+` variants): the
peers do not serve OpenAI's API, and neither does a `--baseline` commit
that may predate it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlencode

__all__ = [
    "AGENT",
    "HTTP_SCENARIOS",
    "WS_SCENARIOS",
    "HttpScenario",
    "WsScenario",
    "chat_body",
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
    """A request replayed by wrk; `session` makes every 4 requests share a session."""

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

    def serves(self, target: str) -> bool:
        return not self.targets or target.partition("+")[0] in self.targets


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

WS_SCENARIOS = [WsScenario("ws_1", 1), WsScenario("ws_32", 32)]
