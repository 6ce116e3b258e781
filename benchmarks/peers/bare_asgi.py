"""The practical limit: the benchmarked routes as one hand-written ASGI callable.

No framework: a dict from (method, path) to a coroutine, msgspec structs
(untracked by the garbage collector, as `orbiter_asgi`'s events are) with
encoders and decoders built once, constant bytes pre-encoded, and SSE events
that are ready together framed in one go and written in one `send` (as
`orbiter_asgi` does: all the words of an undelayed echo answer are ready at
once). It serves the same
contract as `orbiter_asgi` for these routes, including in-memory sessions,
but none of its other behaviour (heartbeats, disconnect watching, error
shapes beyond the few below).
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any
from urllib.parse import parse_qsl

import msgspec

__all__ = ["app"]

DELAY = float(os.environ.get("BENCH_ECHO_DELAY") or 0)
AGENT = "assistant"
_WORD = re.compile(r"\s*\S+\s*|\s+")


class Usage(msgspec.Struct, gc=False):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class ChatRequest(msgspec.Struct, kw_only=True, gc=False):
    input: str
    agent_name: str | None = None
    session_id: str | None = None
    stream: bool = False


class ChatResponse(msgspec.Struct, kw_only=True, gc=False):
    output: str
    agent_name: str
    session_id: str | None
    steps: int
    usage: Usage


class TextEvent(msgspec.Struct, tag="text", tag_field="type", gc=False):
    content: str


class DoneEvent(msgspec.Struct, tag="done", tag_field="type", kw_only=True, gc=False):
    output: str
    agent_name: str
    session_id: str | None
    steps: int
    usage: Usage


class ErrorEvent(msgspec.Struct, tag="error", tag_field="type", kw_only=True, gc=False):
    error: str
    code: str


_encode = msgspec.json.Encoder().encode
_decode_chat = msgspec.json.Decoder(ChatRequest).decode

_JSON = [(b"content-type", b"application/json")]
_SSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ],
}
_DONE = b"data: [DONE]\n\n"
_AGENTS = _encode([{"name": AGENT, "model": "echo", "description": ""}])
_NOT_FOUND = _encode({"detail": "Not Found"})

# Sessions: id -> history of (role, content); one lock per session.
_histories: dict[str, list[tuple[str, str]]] = {}
_locks: dict[str, asyncio.Lock] = {}


async def _json(send: Any, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Any) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def _words(text: str) -> int:
    return len(_WORD.findall(text))


class _Turn:
    """One echo turn: the chunks, and the done event it ends with."""

    __slots__ = ("chunks", "done", "session_id")

    def __init__(self, input: str, session_id: str | None) -> None:
        self.session_id = session_id
        self.chunks = _WORD.findall(input)
        input_tokens = len(self.chunks)
        if session_id is not None:
            history = _histories.setdefault(session_id, [])
            input_tokens += sum(_words(content) for _, content in history)
        out = len(self.chunks)
        self.done = DoneEvent(
            output=input,
            agent_name=AGENT,
            session_id=session_id,
            steps=1,
            usage=Usage(input_tokens, out, input_tokens + out),
        )

    def store(self, input: str) -> None:
        if self.session_id is not None:
            _histories[self.session_id] += [("user", input), ("assistant", self.done.output)]


def _lock(session_id: str | None) -> asyncio.Lock | None:
    if session_id is None:
        return None
    lock = _locks.get(session_id)
    if lock is None:
        lock = _locks[session_id] = asyncio.Lock()
    return lock


_TEXT_PREFIXES = [b'id: %d\ndata: {"type":"text","content":"' % n for n in range(4096)]


def _text_frames(first_id: int, chunks: list[str]) -> bytes:
    # one encode for all the words, cut apart at `","` and spliced with pre-made
    # `id:` prefixes; exact unless a quote was escaped: then one by one
    encoded = _encode(chunks)
    if b"\\" in encoded and b'\\"' in encoded:
        return b"".join(
            b"id: %d\ndata: %b\n\n" % (n, _encode(TextEvent(c))) for n, c in enumerate(chunks, first_id)
        )
    end = first_id + len(chunks)
    prefixes = _TEXT_PREFIXES[first_id:end] if end <= len(_TEXT_PREFIXES) else [
        b'id: %d\ndata: {"type":"text","content":"' % n for n in range(first_id, end)
    ]
    strings = encoded[2:-2].split(b'","')
    parts = [b'"}\n\n'] * (3 * len(strings))
    parts[0::3] = prefixes
    parts[1::3] = strings
    return b"".join(parts)


async def _sse(send: Any, turn: _Turn) -> None:
    await send(_SSE_START)
    parts: list[bytes] = []
    event_id = 0
    if DELAY:
        for chunk in turn.chunks:
            if parts:
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                parts = []
            await asyncio.sleep(DELAY)
            event_id += 1
            parts.append(_text_frames(event_id, [chunk]))
    elif turn.chunks:
        parts.append(_text_frames(1, turn.chunks))
        event_id = len(turn.chunks)
    parts.append(b"id: %d\ndata: %b\n\n" % (event_id + 1, _encode(turn.done)))
    parts.append(_DONE)
    await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})


async def _chat(scope: Any, receive: Any, send: Any) -> None:
    try:
        request = _decode_chat(await _read_body(receive))
    except msgspec.DecodeError as exc:
        await _json(send, _encode({"detail": str(exc)}), 422)
        return
    if request.agent_name not in (None, AGENT):
        await _json(send, _encode({"detail": f"Agent {request.agent_name!r} not found"}), 404)
        return
    lock = _lock(request.session_id)
    if lock is not None:
        await lock.acquire()
    try:
        turn = _Turn(request.input, request.session_id)
        if request.stream:
            await _sse(send, turn)
        else:
            done = turn.done
            response = ChatResponse(
                output=done.output,
                agent_name=AGENT,
                session_id=done.session_id,
                steps=1,
                usage=done.usage,
            )
            await _json(send, _encode(response))
        turn.store(request.input)
    finally:
        if lock is not None:
            lock.release()


async def _stream(scope: Any, receive: Any, send: Any) -> None:
    query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
    await _sse(send, _Turn(query.get("input", ""), query.get("session_id")))


async def _agents(scope: Any, receive: Any, send: Any) -> None:
    await _json(send, _AGENTS)


_ROUTES = {
    ("POST", "/chat"): _chat,
    ("GET", "/stream"): _stream,
    ("GET", "/agents"): _agents,
}


async def _websocket(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] != "/ws/chat":
        await send({"type": "websocket.close", "code": 1000})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("text") or message.get("bytes") or b""
        try:
            request = _decode_chat(data)
        except msgspec.DecodeError as exc:
            event = ErrorEvent(error=f"Invalid message: {exc}", code="bad_request")
            await send({"type": "websocket.send", "text": _encode(event).decode()})
            continue
        turn = _Turn(request.input, request.session_id)
        for chunk in turn.chunks:
            if DELAY:
                await asyncio.sleep(DELAY)
            await send({"type": "websocket.send", "text": _encode(TextEvent(chunk)).decode()})
        await send({"type": "websocket.send", "text": _encode(turn.done).decode()})
        turn.store(request.input)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Any, receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "http":
        handler = _ROUTES.get((scope["method"], scope["path"]))
        if handler is None:
            await _json(send, _NOT_FOUND, 404)
            return
        await handler(scope, receive, send)
    elif kind == "websocket":
        await _websocket(scope, receive, send)
    else:
        await _lifespan(receive, send)

