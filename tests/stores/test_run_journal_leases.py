"""Leases of the SQLite and PostgreSQL run journals: a run whose worker stopped
renewing is ended by its next reader, once, and its worker is told to stop."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from contextlib import closing

import anyio
import psycopg
import pytest

from orbiter_asgi.models import RunInfo
from orbiter_asgi.stores import SessionStore, postgres_journal, sqlite_journal
from orbiter_asgi.stores.journal import start_frame
from orbiter_asgi.stores.postgres import PostgresStore
from orbiter_asgi.stores.sqlite import SQLiteStore

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize(
        "store_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
    ),
]

MiB = 1 << 20


def _info() -> RunInfo:
    return RunInfo(id=secrets.token_urlsafe(16), agent_name="assistant", session_id="s")


def _frames(run_id: str, first: int, count: int) -> list[bytes]:
    return [b'id: %b:%d\ndata: {"type":"text","content":"w%d"}\n\n' % (run_id.encode(), n, n)
            for n in range(first, first + count)]


def _sql(store: SessionStore, statement: str, *params: object) -> list[tuple[object, ...]]:
    """Runs one statement on the store's data, as another program (or a dead worker) would have."""
    if isinstance(store, PostgresStore):
        with psycopg.connect(**store._params, autocommit=True) as pg:
            pg.execute(f'SET search_path TO "{store.schema}"')
            cursor = pg.execute(statement.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description is not None else []
    assert isinstance(store, SQLiteStore)
    with closing(sqlite3.connect(store.path)) as conn:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
    return rows


def _expire_lease(store: SessionStore, run_id: str) -> None:
    _sql(store, "UPDATE runs SET lease_until = 0 WHERE id = ?", run_id)


def _assert_lost(info: RunInfo | None) -> None:
    assert info is not None and info.status == "failed" and info.ended_at is not None
    assert info.error is not None and info.error.code == "worker_lost"


async def test_a_run_whose_lease_ran_out_reads_back_as_lost(open_stores: Callable[[], SessionStore]) -> None:
    owner, reader, other = open_stores(), open_stores(), open_stores()
    info = _info()
    await owner.runs.start(info)
    await owner.runs.append(info.id, _frames(info.id, 2, 2), max_bytes=MiB)
    _expire_lease(owner, info.id)

    # two processes find it lost at once: one ends it, both see that end
    found: list[RunInfo | None] = []

    async def get(store: SessionStore) -> None:
        found.append(await store.runs.get(info.id))

    async with anyio.create_task_group() as group:
        group.start_soon(get, reader)
        group.start_soon(get, other)
    for record in found:
        _assert_lost(record)
    assert found[0] == found[1]

    piece = await reader.runs.read(info.id, 0, wait=5)
    assert piece is not None and piece.ended and piece.first == 1
    assert piece.frames[:3] == [start_frame(info), *_frames(info.id, 2, 2)] and len(piece.frames) == 5
    error, done = piece.frames[3:]
    assert error.startswith(b"id: %b:4\n" % info.id.encode()) and b'"worker_lost"' in error
    assert done == b"id: %b:5\ndata: [DONE]\n\n" % info.id.encode()


async def test_a_waiting_reader_is_not_left_hanging(open_stores: Callable[[], SessionStore]) -> None:
    owner, reader = open_stores(), open_stores()
    info = _info()
    await owner.runs.start(info)
    _expire_lease(owner, info.id)
    with anyio.fail_after(2):
        piece = await reader.runs.read(info.id, 1, wait=30)
    assert piece is not None and piece.ended and len(piece.frames) == 2


async def test_the_late_worker_cannot_write_past_the_end(open_stores: Callable[[], SessionStore]) -> None:
    owner, reader = open_stores(), open_stores()
    info = _info()
    await owner.runs.start(info)
    told = anyio.Event()
    owner.runs.watch(info.id, told.set)
    try:
        _expire_lease(owner, info.id)
        _assert_lost(await reader.runs.get(info.id))
        with anyio.fail_after(2):
            await told.wait()  # the owner learns its run was ended, and stops it
        await owner.runs.append(info.id, _frames(info.id, 2, 1), max_bytes=MiB)
        late = RunInfo(id=info.id, agent_name="assistant", status="completed", output="late")
        await owner.runs.finish(late, [b"final\n\n", b"done\n\n"], max_bytes=MiB, retention=60)
    finally:
        owner.runs.unwatch(info.id)
    _assert_lost(await reader.runs.get(info.id))
    piece = await reader.runs.read(info.id, 0, wait=0)
    assert piece is not None and len(piece.frames) == 3 and b"[DONE]" in piece.frames[-1]


async def test_a_repeat_of_a_lost_run_attaches_to_its_end(open_stores: Callable[[], SessionStore]) -> None:
    owner, retry = open_stores(), open_stores()
    info = _info()
    await owner.runs.start(info, idempotency_key="k", fingerprint="f")
    _expire_lease(owner, info.id)
    again = await retry.runs.start(_info(), idempotency_key="k", fingerprint="f")
    assert again.id == info.id
    _assert_lost(again)


async def test_a_watched_run_keeps_its_lease(
    open_stores: Callable[[], SessionStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_journal, "LEASE_TTL", 0.6)  # renewed every 0.2 s
    monkeypatch.setattr(postgres_journal, "LEASE_TTL", 0.6)
    owner, reader = open_stores(), open_stores()
    info = _info()
    await owner.runs.start(info)
    owner.runs.watch(info.id, lambda: None)
    try:
        await anyio.sleep(1.5)
        assert await reader.runs.get(info.id) == info  # still running, well past one lease
    finally:
        owner.runs.unwatch(info.id)
    await anyio.sleep(1)
    _assert_lost(await reader.runs.get(info.id))  # unwatched: nobody renews it


async def test_the_poller_stops_when_nothing_is_watched(open_stores: Callable[[], SessionStore]) -> None:
    store = open_stores()
    assert isinstance(store, SQLiteStore | PostgresStore)
    info = _info()
    await store.runs.start(info)
    store.runs.watch(info.id, lambda: None)
    poller = store._journal._watch.task
    assert poller is not None and not poller.done()
    store.runs.unwatch(info.id)
    with anyio.fail_after(1):
        while not poller.done():
            await anyio.sleep(0.05)
    store.runs.watch(info.id, lambda: None)  # watched again: a new poller, stopped by aclose
    again = store._journal._watch.task
    assert again is not None and again is not poller
    await store.aclose()
    assert again.done()


async def test_ended_runs_and_their_frames_are_deleted_by_later_starts(
    open_stores: Callable[[], SessionStore],
) -> None:
    store = open_stores()
    info = _info()
    await store.runs.start(info, idempotency_key="k", fingerprint="f")
    await store.runs.append(info.id, _frames(info.id, 2, 3), max_bytes=MiB)
    ended = RunInfo(id=info.id, agent_name="assistant", status="completed")
    await store.runs.finish(ended, [b"done\n\n"], max_bytes=MiB, retention=0)
    assert await store.runs.get(info.id) is None  # expired: gone for readers at once
    for _ in range(50):  # SQLite sweeps expired runs every 50th start
        await store.runs.start(_info())
    assert _sql(store, "SELECT count(*) FROM runs WHERE id = ?", info.id) == [(0,)]
    assert _sql(store, "SELECT count(*) FROM run_frames WHERE run_id = ?", info.id) == [(0,)]
