"""Many writers on one session: nothing lost, each writer's messages in its own order.

Writers are tasks sharing one store, tasks on separate store instances (as
separate workers hold them), and separate processes. A worker killed while
holding a turn lock does not wedge its session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import pytest
from store_helpers import HERE

from orbiter_asgi.exceptions import StoreError
from orbiter_asgi.models import Message
from orbiter_asgi.stores import SessionStore, open_store

pytestmark = pytest.mark.anyio

WRITER = str(HERE / "store_writer.py")


def _check_writers(contents: list[str], writers: dict[str, int]) -> None:
    """Every writer's messages are all there, once, in the order it wrote them."""
    assert len(contents) == sum(writers.values())
    for writer, count in writers.items():
        mine = [c for c in contents if c.split(":")[0] == writer]
        assert mine == [f"{writer}:{i}" for i in range(count)]


async def test_concurrent_appends_from_tasks(open_stores: Callable[[], SessionStore]) -> None:
    stores = [open_stores(), open_stores()]
    await stores[0].create(session_id="busy")
    writers = {f"w{n}": 25 for n in range(8)}

    async def write(n: int, writer: str, count: int) -> None:
        store = stores[n % 2]
        for i in range(count):
            await store.append("busy", [Message(role="user", content=f"{writer}:{i}")])

    async with anyio.create_task_group() as group:
        for n, (writer, count) in enumerate(writers.items()):
            group.start_soon(write, n, writer, count)
    _check_writers([m.content for m in await stores[1].messages("busy")], writers)
    summary = (await stores[0].list()).items[0]
    assert summary.message_count == 200


async def test_batches_are_never_interleaved(open_stores: Callable[[], SessionStore]) -> None:
    stores = [open_stores(), open_stores()]
    await stores[0].create(session_id="batches")

    async def write(n: int) -> None:
        batch = [Message(role="user", content=f"b{n}:{i}") for i in range(5)]
        await stores[n % 2].append("batches", batch)

    async with anyio.create_task_group() as group:
        for n in range(20):
            group.start_soon(write, n)
    contents = [m.content for m in await stores[0].messages("batches")]
    for start in range(0, len(contents), 5):
        owner = contents[start].split(":")[0]
        assert contents[start : start + 5] == [f"{owner}:{i}" for i in range(5)]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that separate processes share (so not memory)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue(f"{request.param}_store_url")
    return url


async def test_concurrent_appends_from_two_processes(shared_url: str) -> None:
    store_url = shared_url
    store = open_store(store_url)
    try:
        await store.create(session_id="shared")
        writers = {"p1": 150, "p2": 150, "local": 50}
        children = [
            subprocess.Popen(
                [sys.executable, WRITER, store_url, "shared", "append", name, str(count)],
                stdout=subprocess.PIPE,
            )
            for name, count in writers.items()
            if name != "local"
        ]
        for i in range(writers["local"]):
            await store.append("shared", [Message(role="user", content=f"local:{i}")])
        for child in children:
            out, _ = child.communicate(timeout=60)
            assert child.returncode == 0
            assert out.strip() == b"done"
        _check_writers([m.content for m in await store.messages("shared")], writers)
    finally:
        await store.aclose()


async def test_crashed_lock_holder_does_not_wedge_the_session(shared_url: str) -> None:
    store_url = shared_url
    separator = "&" if "?" in store_url else "?"
    url = f"{store_url}{separator}lock_ttl=1&lock_wait=30"
    child = subprocess.Popen([sys.executable, WRITER, url, "wedged", "hold"], stdout=subprocess.PIPE)
    store = open_store(url)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"locked"
        # while the holder lives, the session is busy
        busy = open_store(url.replace("lock_wait=30", "lock_wait=0.2"))
        with pytest.raises(StoreError, match="busy"):
            async with busy.lock("wedged"):
                pass
        await busy.aclose()
        os.kill(child.pid, 9)
        child.wait(10)
        with anyio.fail_after(30):
            async with store.lock("wedged"):
                pass
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
        await store.aclose()


async def test_many_workers_opening_one_new_sqlite_file_at_once(tmp_path: Path) -> None:
    # every worker of a fresh deployment opens the file at the same moment; switching a
    # new file to WAL takes a lock SQLite does not wait for, so each opener must retry it
    for attempt in range(40):
        url = f"sqlite:///{tmp_path}/fresh{attempt}.db"
        stores = [open_store(url) for _ in range(8)]
        try:
            async with anyio.create_task_group() as group:
                for n, store in enumerate(stores):
                    group.start_soon(partial(store.history, f"s{n}", agent_name=None))  # creates it
            assert [len(await stores[0].messages(f"s{n}")) for n in range(8)] == [0] * 8
        finally:
            for store in stores:
                await store.aclose()
