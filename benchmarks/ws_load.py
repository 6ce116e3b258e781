"""A lean WebSocket load client, run in its own process on the client core.

`python -m benchmarks.ws_load --port P --connections 32 --words 100 --duration 5`
prints one JSON line: completed turns, turns per second, p50/p99 turn
latency. Before it, the lines `COUNTING` and `STOPPED` mark the measured
interval, so the runner can read the server's CPU time at both ends. Each
connection sends a turn, reads frames until the turn's `done` event, and
sends the next one. The framing is hand-rolled over an asyncio
`Protocol` (the request frame is built and masked once per connection) so
that the client stays cheaper than any server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from .scenarios import AGENT, words

__all__ = ["main"]

_DONE = b'{"type":"done"'
_ERROR = b'{"type":"error"'
_HANDSHAKE = (
    "GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def _client_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes([0x81, 0x80 | length])
    elif length < 65536:
        header = bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class _Connection(asyncio.Protocol):
    def __init__(self, frame: bytes, handshake: bytes, stats: _Stats) -> None:
        self.frame = frame
        self.handshake = handshake
        self.stats = stats
        self.buffer = bytearray()
        self.upgraded = False
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.write(self.handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send_turn(self) -> None:
        if self.stats.stopping or self.transport is None or self.transport.is_closing():
            if self.transport is not None:
                self.transport.close()
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.stats.errors += 1
                assert self.transport is not None
                self.transport.close()
                return
            del buffer[: end + 4]
            self.upgraded = True
            self.send_turn()
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            length = buffer[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = buffer[pos] & 0x0F
            pos = end
            if opcode == 1 or opcode == 2:
                self.stats.frames += 1
                head = bytes(buffer[start : start + 16])
                if head.startswith(_DONE):
                    self.stats.turn_done(time.perf_counter() - self.sent_at)
                    self.send_turn()
                elif head.startswith(_ERROR):
                    self.stats.errors += 1
            elif opcode == 8:  # close
                assert self.transport is not None
                self.transport.close()
        if pos:
            del buffer[:pos]


class _Stats:
    def __init__(self) -> None:
        self.counting = False
        self.stopping = False
        self.turns = 0
        self.frames = 0
        self.errors = 0
        self.latencies: list[float] = []

    def turn_done(self, latency: float) -> None:
        if self.counting:
            self.turns += 1
            self.latencies.append(latency)


async def _run(port: int, connections: int, n_words: int, duration: float, warmup: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    message = json.dumps({"agent_name": AGENT, "input": words(n_words), "session_id": None})
    handshake = _HANDSHAKE.format(port=port).encode()
    stats = _Stats()
    protocols: list[_Connection] = []
    for _ in range(connections):
        frame = _client_frame(message.encode())
        _, protocol = await loop.create_connection(
            lambda frame=frame: _Connection(frame, handshake, stats), "127.0.0.1", port
        )
        protocols.append(protocol)
    await asyncio.sleep(warmup)
    print("COUNTING", flush=True)
    stats.counting = True
    started = time.perf_counter()
    await asyncio.sleep(duration)
    stats.counting = False
    elapsed = time.perf_counter() - started
    print("STOPPED", flush=True)
    stats.stopping = True
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    await asyncio.wait([p.closed for p in protocols], timeout=10)
    latencies = sorted(stats.latencies) or [0.0]
    return {
        "turns": stats.turns,
        "rate": stats.turns / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": stats.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ws_load")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(_run(args.port, args.connections, args.words, args.duration, args.warmup))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
