"""The run journal, on every store: the one suite each backend passes.

`open_stores()` gives another handle on the same data, as another worker
process would have (the memory store hands out the same one).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orbiter_asgi.models import RunError, RunInfo, Usage
from orbiter_asgi.stores import SessionStore
from orbiter_asgi.stores.journal import IdempotencyMismatch, JournalGone, start_frame

pytestmark = pytest.mark.anyio

MiB = 1 << 20


def _info(**changes: object) -> RunInfo:
    return RunInfo(id=secrets.token_urlsafe(16), agent_name="assistant", session_id="s", **changes)  # type: ignore[arg-type]


def _frames(run_id: str, first: int, count: int) -> list[bytes]:
    return [b'id: %b:%d\ndata: {"type":"text","content":"w%d"}\n\n' % (run_id.encode(), n, n)
            for n in range(first, first + count)]


def _ended(info: RunInfo, output: str = "w1 w2") -> RunInfo:
    return RunInfo(
        id=info.id,
        agent_name=info.agent_name,
        session_id=info.session_id,
        status="completed",
        created_at=info.created_at,
        ended_at=info.created_at,
        output=output,
        steps=1,
        usage=Usage(input_tokens=2, output_tokens=2, total_tokens=4),
    )


async def test_a_run_is_recorded_framed_and_ended(open_stores: Callable[[], SessionStore]) -> None:
    owner, other = open_stores(), open_stores()
    info = _info()
    assert await owner.runs.start(info) == info
    assert await other.runs.get(info.id) == info
    start = start_frame(info)
    assert start.startswith(b"id: %b:1\ndata: {\"type\":\"start\"" % info.id.encode())
    assert await other.runs.read(info.id, 0, wait=0) == ([start], 1, False)  # frame 1, from the start
    await owner.runs.append(info.id, _frames(info.id, 2, 2), max_bytes=MiB)
    await owner.runs.append(info.id, _frames(info.id, 4, 1), max_bytes=MiB)
    running = await other.runs.read(info.id, 0, wait=0)
    assert running is not None
    assert running.frames == [start, *_frames(info.id, 2, 3)] and running.first == 1 and not running.ended
    later = await other.runs.read(info.id, 3, wait=0)
    assert later is not None and later.frames == _frames(info.id, 4, 1) and later.first == 4
    ended = _ended(info)
    await owner.runs.finish(ended, [b"final\n\n", b"done\n\n"], max_bytes=MiB, retention=60)
    assert await other.runs.get(info.id) == ended
    last = await other.runs.read(info.id, 4, wait=5)
    assert last is not None and last.frames == [b"final\n\n", b"done\n\n"] and last.ended
    assert (await other.runs.read(info.id, 6, wait=5)) == ([], 7, True)  # the end seen: nothing to wait for
    whole = await other.runs.read(info.id, 0, wait=0)
    assert whole is not None and whole.frames[0] == start and len(whole.frames) == 6


async def test_a_run_that_streamed_nothing_ends_as_recorded(open_stores: Callable[[], SessionStore]) -> None:
    owner, other = open_stores(), open_stores()
    info = _info()
    await owner.runs.start(info)
    await owner.runs.finish(_ended(info, output="w1"), None, max_bytes=MiB, retention=60)
    piece = await other.runs.read(info.id, 0, wait=0)
    assert piece is not None and piece.ended and piece.frames[0] == start_frame(info)
    events = [json.loads(frame.split(b"data: ", 1)[1]) for frame in piece.frames[1:-1]]
    assert [event["type"] for event in events] == ["done"] and events[0]["output"] == "w1"
    assert piece.frames[-1] == b"id: %b:3\ndata: [DONE]\n\n" % info.id.encode()


async def test_unknown_runs_are_none(store: SessionStore) -> None:
    assert await store.runs.get("nope") is None
    assert await store.runs.read("nope", 0, wait=0) is None
    assert await store.runs.cancel("nope") is None


async def test_a_failed_run_keeps_its_error(store: SessionStore) -> None:
    info = _info()
    await store.runs.start(info)
    failed = RunInfo(
        id=info.id,
        agent_name="assistant",
        status="failed",
        created_at=info.created_at,
        error=RunError(code="agent_error", message="boom"),
    )
    await store.runs.finish(failed, [b"error\n\n"], max_bytes=MiB, retention=60)
    assert await store.runs.get(info.id) == failed


async def test_a_reader_waits_for_frames_from_another_worker(open_stores: Callable[[], SessionStore]) -> None:
    owner, follower = open_stores(), open_stores()
    info = _info()
    await owner.runs.start(info)
    got: list[bytes] = []

    async def follow() -> None:
        piece = await follower.runs.read(info.id, 1, wait=5)
        assert piece is not None
        got.extend(piece.frames)

    started = time.monotonic()
    async with anyio.create_task_group() as group:
        group.start_soon(follow)
        await anyio.sleep(0.1)
        await owner.runs.append(info.id, _frames(info.id, 2, 1), max_bytes=MiB)
    assert got == _frames(info.id, 2, 1)
    assert time.monotonic() - started < 2  # woken by the frame, not by the wait running out
    empty = await follower.runs.read(info.id, 2, wait=0.1)
    assert empty is not None and empty.frames == [] and not empty.ended


async def test_frames_past_max_bytes_are_dropped_oldest_first(store: SessionStore) -> None:
    info = _info()
    await store.runs.start(info)
    frames = _frames(info.id, 2, 10)
    size = max(map(len, frames))
    for frame in frames:
        await store.runs.append(info.id, [frame], max_bytes=size * 4)
    with pytest.raises(JournalGone):
        await store.runs.read(info.id, 0, wait=0)  # `start` went first
    kept = await store.runs.read(info.id, 7, wait=0)
    assert kept is not None and kept.frames == frames[6:] and kept.first == 8


async def test_ended_runs_are_forgotten_after_their_retention(store: SessionStore) -> None:
    info = _info()
    await store.runs.start(info, idempotency_key="k", fingerprint="f")
    await store.runs.finish(_ended(info), [b"x\n\n"], max_bytes=MiB, retention=0.2)
    assert await store.runs.get(info.id) is not None
    await anyio.sleep(1.1)
    assert await store.runs.get(info.id) is None
    assert await store.runs.read(info.id, 0, wait=0) is None
    again = _info()
    assert await store.runs.start(again, idempotency_key="k", fingerprint="other") == again


async def test_idempotency_keys_attach_to_the_first_run(open_stores: Callable[[], SessionStore]) -> None:
    one, two = open_stores(), open_stores()
    first, second = _info(), _info()
    assert await one.runs.start(first, idempotency_key="key-1", fingerprint="body") == first
    assert await two.runs.start(second, idempotency_key="key-1", fingerprint="body") == first
    with pytest.raises(IdempotencyMismatch):
        await two.runs.start(_info(), idempotency_key="key-1", fingerprint="another body")
    assert await two.runs.get(second.id) is None  # the repeat made no run of its own


async def test_a_cancel_reaches_the_process_running_the_run(open_stores: Callable[[], SessionStore]) -> None:
    owner, elsewhere = open_stores(), open_stores()
    info = _info()
    await owner.runs.start(info)
    cancelled = anyio.Event()
    owner.runs.watch(info.id, cancelled.set)
    try:
        assert await elsewhere.runs.cancel(info.id) == info
        with anyio.fail_after(1):
            await cancelled.wait()
    finally:
        owner.runs.unwatch(info.id)


async def test_touches_tell_that_a_client_follows(open_stores: Callable[[], SessionStore]) -> None:
    owner, follower = open_stores(), open_stores()
    info = _info()
    await owner.runs.start(info)
    before = time.time()
    assert not await owner.runs.touched_since(info.id, before - 60)
    await follower.runs.touch(info.id)
    assert await owner.runs.touched_since(info.id, before - 0.01)
    assert not await owner.runs.touched_since(info.id, time.time() + 1)


Batch = tuple[bool, list[bytes]]  # (written as one chunk?, frames)

# any SSE frame: one `data:` line of JSON, whose strings escape their newlines
frames = st.text(max_size=30).map(lambda text: b"data: %b\n\n" % json.dumps(text).encode())


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.lists(st.tuples(st.booleans(), st.lists(frames, min_size=1, max_size=5)), max_size=6))
async def test_any_frames_read_back_exactly(store: SessionStore, batches: list[Batch]) -> None:
    info = _info()
    await store.runs.start(info)
    for as_chunk, batch in batches:
        if as_chunk:  # written back to back, as a stream sends a text batch
            await store.runs.append_chunk(info.id, b"".join(batch), len(batch), max_bytes=MiB)
        else:
            await store.runs.append(info.id, batch, max_bytes=MiB)
    every = [start_frame(info), *(frame for _, batch in batches for frame in batch)]
    piece = await store.runs.read(info.id, 0, wait=0)
    assert piece is not None and piece.frames == every
    middle = len(every) // 2
    rest = await store.runs.read(info.id, middle, wait=0)
    assert rest is not None and rest.frames == every[middle:] and rest.first == middle + 1


async def test_the_memory_journal_keeps_ended_runs_within_its_bytes() -> None:
    from orbiter_asgi.stores import memory_journal

    journal = memory_journal.MemoryJournal(max_ended_bytes=1000)
    runs = [_info() for _ in range(10)]
    for info in runs:
        await journal.start(info)
        await journal.append(info.id, _frames(info.id, 2, 3), max_bytes=MiB)
        await journal.finish(_ended(info), [b"end\n\n"], max_bytes=MiB, retention=60)
    await journal.start(_info())  # forgets what is past the bound
    kept = [info for info in runs if await journal.get(info.id) is not None]
    assert kept == runs[-len(kept):] and 0 < len(kept) < 10  # the newest stay
    pieces = [await journal.read(info.id, 0, wait=0) for info in kept]
    assert sum(len(frame) for piece in pieces if piece for frame in piece.frames) <= 1000
