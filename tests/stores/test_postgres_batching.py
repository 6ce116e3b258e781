"""PostgreSQL: the statements of one pass of the event loop go out together, each
in its own transaction with its own outcome; a turn with its run is two statements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from store_helpers import with_option

from orbiter_asgi.exceptions import ConflictError, RequestError, StoreError
from orbiter_asgi.models import Message, RunInfo
from orbiter_asgi.stores import open_store
from orbiter_asgi.stores.base import RunEnd
from orbiter_asgi.stores.postgres import PostgresStore

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def store(postgres_store_url: str) -> AsyncIterator[PostgresStore]:
    opened = open_store(postgres_store_url)
    assert isinstance(opened, PostgresStore)
    await opened.ping()  # opened and migrated before anything is counted
    try:
        yield opened
    finally:
        await opened.aclose()


def _count_batches(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each batch the store sends, as it sends it."""
    sizes: list[int] = []
    send = store._send

    async def counted(pending: Any) -> None:
        sizes.append(len(pending))
        await send(pending)

    monkeypatch.setattr(store, "_send", counted)
    return sizes


def _count_statements(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    queries: list[str] = []
    fetch = store._fetch

    async def counted(query: str, params: Any) -> Any:
        queries.append(query)
        return await fetch(query, params)

    monkeypatch.setattr(store, "_fetch", counted)
    monkeypatch.setattr(store._journal, "_fetch", counted)
    return queries


async def test_postgres_calls_of_one_pass_share_a_pipeline_each_with_its_own_outcome(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create(session_id="taken")
    sizes = _count_batches(store, monkeypatch)
    outcomes: dict[str, Any] = {}

    async def call(name: str, work: Any) -> None:
        try:
            outcomes[name] = await work
        except Exception as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "made", store.create(session_id="new"))
        tg.start_soon(call, "nul", store.create(session_id="a\x00b"))
        tg.start_soon(call, "again", store.create(session_id="taken"))
        tg.start_soon(call, "broken", store._fetch("SELECT 1 / 0", ()))
        tg.start_soon(call, "appended", store.append("taken", [Message(role="user", content="hi")]))
        tg.start_soon(call, "read", store.get("taken"))

    assert sizes == [6]  # one pipeline; the NUL fails as its value is dumped, and is never sent
    assert outcomes["made"].id == "new"
    assert isinstance(outcomes["nul"], RequestError)
    assert isinstance(outcomes["again"], ConflictError)
    assert isinstance(outcomes["broken"], StoreError)
    assert [m.content for m in outcomes["appended"]] == ["hi"]
    assert outcomes["read"].id == "taken"
    # an error after a write in the same pipeline undoes nothing of it
    assert [m.content for m in await store.messages("taken")] == ["hi"]
    assert (await store.get("new")).id == "new"


async def test_postgres_turn_with_its_run_is_two_statements(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = RunInfo(id="run-1", agent_name="assistant", session_id="s")
    queries = _count_statements(store, monkeypatch)
    opening = [Message(role="user", content="q")]
    turn = await store.begin_turn("s", agent_name="assistant", messages=opening, run=info)
    assert len(queries) == 1
    started = await store.runs.get("run-1")
    assert started is not None and started.status == "running"

    queries.clear()
    ended = RunInfo(id="run-1", agent_name="assistant", session_id="s", status="completed")
    end = RunEnd(ended, None, max_bytes=1 << 20, retention=60.0)
    await store.end_turn(turn, [Message(role="assistant", content="a")], run=end)
    assert len(queries) == 1
    finished = await store.runs.get("run-1")
    assert finished is not None and finished.status == "completed"
    assert [m.content for m in await store.messages("s")] == ["q", "a"]
    read = await store.runs.read("run-1", 0, wait=0)
    assert read is not None and read.ended


async def test_postgres_turn_whose_run_cannot_start_fails_and_holds_nothing(
    postgres_store_url: str, store: PostgresStore
) -> None:
    info = RunInfo(id="dup", agent_name="assistant", session_id="s")
    await store.runs.start(info)  # the id is taken: the turn's start fails
    with pytest.raises(StoreError):
        await store.begin_turn("s", agent_name=None, messages=[Message(role="user", content="x")], run=info)
    # nothing written, and the session is free at once, here and in another process
    other = open_store(with_option(postgres_store_url, "lock_wait=0.5"))
    try:
        with anyio.fail_after(2):
            turn = await other.begin_turn("s", agent_name=None, messages=[])
        assert turn.history == []
        await other.end_turn(turn, [])
    finally:
        await other.aclose()
    turn = await store.begin_turn("s", agent_name=None, messages=[])
    await store.end_turn(turn, [])
