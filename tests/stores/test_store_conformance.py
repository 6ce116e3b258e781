"""One suite for every `SessionStore`: memory, SQLite and Redis behave alike."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import anyio
import msgspec
import pytest

from orbiter_asgi.exceptions import ConflictError, RequestError, SessionNotFound
from orbiter_asgi.models import Message, ToolCall
from orbiter_asgi.stores import SessionStore

pytestmark = pytest.mark.anyio


def _content(messages: list[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


async def _all_ids(store: SessionStore, *, limit: int, agent_name: str | None = None) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        page = await store.list(agent_name=agent_name, limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        ids.extend(item.id for item in page.items)
        if page.next_cursor is None:
            return ids
        assert len(page.items) == limit
        cursor = page.next_cursor
    raise AssertionError("listing never ended")


async def test_create_and_get(store: SessionStore) -> None:
    created = await store.create(agent_name="assistant", metadata={"user": "ada", "n": [1, 2]})
    assert created.agent_name == "assistant"
    assert created.metadata == {"user": "ada", "n": [1, 2]}
    assert created.messages == []
    assert created.created_at == created.updated_at
    assert created.created_at.tzinfo is not None
    fetched = await store.get(created.id)
    assert fetched == created


async def test_create_with_id_and_conflict(store: SessionStore) -> None:
    await store.create(session_id="chosen-id.1:x", metadata={"a": 1})
    with pytest.raises(ConflictError):
        await store.create(session_id="chosen-id.1:x")
    assert (await store.get("chosen-id.1:x")).metadata == {"a": 1}


async def test_missing_session(store: SessionStore) -> None:
    with pytest.raises(SessionNotFound):
        await store.get("nope")
    with pytest.raises(SessionNotFound):
        await store.messages("nope")
    with pytest.raises(SessionNotFound):
        await store.append("nope", [Message(role="user", content="x")])
    with pytest.raises(SessionNotFound):
        await store.update("nope", metadata={})
    assert await store.delete("nope") is False


async def test_list_newest_first_with_pages(store: SessionStore) -> None:
    created = [(await store.create(session_id=f"s{i:02d}")).id for i in range(7)]
    newest_first = list(reversed(created))
    first = await store.list()
    assert [item.id for item in first.items] == newest_first
    assert first.next_cursor is None
    for limit in (1, 2, 3, 7, 8):
        assert await _all_ids(store, limit=limit) == newest_first


async def test_list_summaries_and_agent_filter(store: SessionStore) -> None:
    a = await store.create(agent_name="a", metadata={"k": "v"})
    b = await store.create(agent_name="b")
    a2 = await store.create(agent_name="a")
    two = [Message(role="user", content="1"), Message(role="assistant", content="2")]
    await store.append(a.id, two)
    assert await _all_ids(store, limit=1, agent_name="a") == [a2.id, a.id]
    assert await _all_ids(store, limit=5, agent_name="b") == [b.id]
    assert (await store.list(agent_name="nobody")).items == []
    summary = next(i for i in (await store.list()).items if i.id == a.id)
    assert summary.message_count == 2
    assert summary.metadata == {"k": "v"}
    assert summary.agent_name == "a"
    assert summary.updated_at >= summary.created_at


async def test_invalid_cursor(store: SessionStore) -> None:
    with pytest.raises(RequestError):
        await store.list(cursor="not a cursor!")


async def test_deleting_during_a_listing(store: SessionStore) -> None:
    ids = [(await store.create()).id for _ in range(6)]
    newest_first = list(reversed(ids))
    page = await store.list(limit=2)
    assert [i.id for i in page.items] == newest_first[:2]
    # delete the page's last item (the cursor's anchor) and one further on
    assert await store.delete(newest_first[1])
    assert await store.delete(newest_first[3])
    rest = await store.list(limit=10, cursor=page.next_cursor)
    assert [i.id for i in rest.items] == [newest_first[2], newest_first[4], newest_first[5]]
    # sessions created meanwhile are newer than the cursor, so they do not reappear
    await store.create()
    again = await store.list(limit=10, cursor=page.next_cursor)
    assert [i.id for i in again.items] == [newest_first[2], newest_first[4], newest_first[5]]


async def test_update(store: SessionStore) -> None:
    session = await store.create(agent_name="a", metadata={"x": 1})
    await store.append(session.id, [Message(role="user", content="kept")])
    only_meta = await store.update(session.id, metadata={"y": "ü"})
    assert only_meta.agent_name == "a"
    assert only_meta.metadata == {"y": "ü"}
    assert _content(only_meta.messages) == [("user", "kept")]
    assert only_meta.updated_at >= session.updated_at
    moved = await store.update(session.id, agent_name="b")
    assert moved.agent_name == "b"
    assert moved.metadata == {"y": "ü"}
    assert await _all_ids(store, limit=5, agent_name="a") == []
    assert await _all_ids(store, limit=5, agent_name="b") == [session.id]
    cleared = await store.update(session.id, agent_name=None)
    assert cleared.agent_name is None
    assert await _all_ids(store, limit=5, agent_name="b") == []
    untouched = await store.update(session.id, agent_name=msgspec.UNSET, metadata=msgspec.UNSET)
    assert untouched.metadata == {"y": "ü"}
    assert await store.get(session.id) == untouched


async def test_title(store: SessionStore) -> None:
    created = await store.create(agent_name="a", title="Trip to Mars 🚀", metadata={"k": 1})
    assert created.title == "Trip to Mars 🚀"
    assert (await store.get(created.id)).title == "Trip to Mars 🚀"
    summary = next(i for i in (await store.list()).items if i.id == created.id)
    assert summary.title == "Trip to Mars 🚀"
    untitled = await store.create()
    assert untitled.title == ""
    assert (await store.get(untitled.id)).title == ""


async def test_update_title_alone_and_others_without_it(store: SessionStore) -> None:
    session = await store.create(agent_name="a", title="first", metadata={"x": 1})
    await store.append(session.id, [Message(role="user", content="kept")])
    renamed = await store.update(session.id, title="second")
    assert renamed.title == "second"
    assert renamed.agent_name == "a"
    assert renamed.metadata == {"x": 1}
    assert _content(renamed.messages) == [("user", "kept")]
    assert await store.get(session.id) == renamed
    assert await _all_ids(store, limit=5, agent_name="a") == [session.id]
    others = await store.update(session.id, agent_name="b", metadata={"y": 2})
    assert others.title == "second"
    assert (await store.list()).items[0].title == "second"
    cleared = await store.update(session.id, title="")
    assert cleared.title == ""
    assert (await store.get(session.id)).title == ""
    assert (await store.list()).items[0].title == ""


async def test_delete(store: SessionStore) -> None:
    session = await store.create(agent_name="a")
    await store.append(session.id, [Message(role="user", content="bye")])
    assert await store.delete(session.id) is True
    assert await store.delete(session.id) is False
    with pytest.raises(SessionNotFound):
        await store.get(session.id)
    assert await _all_ids(store, limit=5) == []
    assert await _all_ids(store, limit=5, agent_name="a") == []
    # the id is free again, with an empty history
    again = await store.create(session_id=session.id)
    assert again.messages == []


async def test_append_and_messages(store: SessionStore) -> None:
    session = await store.create()
    fixed = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    call = ToolCall(id="c1", name="add", arguments={"a": 1, "nested": {"b": [1, "two"]}})
    stored = await store.append(
        session.id,
        [
            Message(role="user", content="hello"),
            Message(role="assistant", content="", tool_calls=[call]),
            Message(role="tool", content="3", tool_call_id="c1", name="add", is_error=True),
            Message(role="assistant", content="three", created_at=fixed),
        ],
    )
    assert all(m.created_at is not None for m in stored)
    assert stored[3].created_at == fixed
    assert await store.messages(session.id) == stored
    assert (await store.get(session.id)).messages == stored
    assert await store.append(session.id, []) == []
    more = await store.append(session.id, [Message(role="user", content="again")])
    last_two = _content(await store.messages(session.id))[-2:]
    assert last_two == [("assistant", "three"), ("user", "again")]
    assert (await store.get(session.id)).updated_at == more[0].created_at


async def test_unicode_and_large_messages(store: SessionStore) -> None:
    session = await store.create(metadata={"名前": "テスト", "emoji": "🛰️", "nul": "a\x00b"})
    texts = [
        "🚀 émoji, RTL שלום, CJK 你好, combining é, NUL \x00 and \u2028 separators",
        "x" * 1_000_000,
        'line\nbreaks\r\nand "quotes" and \\ backslashes',
        "",
    ]
    await store.append(session.id, [Message(role="user", content=t) for t in texts])
    fetched = await store.get(session.id)
    assert [m.content for m in fetched.messages] == texts
    assert fetched.metadata == {"名前": "テスト", "emoji": "🛰️", "nul": "a\x00b"}


async def test_many_messages_in_one_append(store: SessionStore) -> None:
    session = await store.create()
    batch = [Message(role="user", content=str(i)) for i in range(2500)]
    await store.append(session.id, batch)
    assert [m.content for m in await store.messages(session.id)] == [str(i) for i in range(2500)]


async def test_history_creates_then_reads(store: SessionStore) -> None:
    assert await store.history("turns", agent_name="assistant") == []
    created = await store.get("turns")
    assert created.agent_name == "assistant"
    assert created.title == ""
    assert created.metadata == {}
    await store.append("turns", [Message(role="user", content="hi")])
    assert _content(await store.history("turns", agent_name="other")) == [("user", "hi")]
    assert (await store.get("turns")).agent_name == "assistant"  # not changed by later turns
    assert await _all_ids(store, limit=5, agent_name="assistant") == ["turns"]
    assert (await store.list()).items[0].title == ""


async def test_lock_serializes_turns(open_stores: Callable[[], SessionStore]) -> None:
    stores = [open_stores(), open_stores()]
    inside = 0
    overlaps = 0
    order: list[int] = []

    async def turn(n: int) -> None:
        nonlocal inside, overlaps
        store = stores[n % 2]
        async with store.lock("locked"):
            inside += 1
            overlaps += inside > 1
            await anyio.sleep(0.001)
            order.append(n)
            inside -= 1

    async with anyio.create_task_group() as group:
        for n in range(12):
            group.start_soon(turn, n)
    assert overlaps == 0
    assert sorted(order) == list(range(12))


async def test_lock_is_released_on_error_and_cancel(store: SessionStore) -> None:
    with pytest.raises(ZeroDivisionError):
        async with store.lock("s"):
            1 / 0  # noqa: B018
    with anyio.move_on_after(0.05):
        async with store.lock("s"):
            await anyio.sleep(10)
    with anyio.fail_after(10):
        async with store.lock("s"):
            pass


async def test_lock_waiters_are_served_in_order_and_may_give_up(store: SessionStore) -> None:
    served: list[str] = []
    scopes = {name: anyio.CancelScope() for name in "abc"}

    async def wait_for_it(name: str) -> None:
        with scopes[name]:
            async with store.lock("queued"):
                served.append(name)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group, store.lock("queued"):
            for name in "abc":
                group.start_soon(wait_for_it, name)
                await anyio.sleep(0.01)  # queued in this order
            scopes["b"].cancel()  # gives up while waiting
        async with store.lock("queued"):  # and nothing is left holding it
            served.append("after")
    assert served == ["a", "c", "after"]


async def test_lock_handed_to_a_cancelled_waiter_passes_on(store: SessionStore) -> None:
    served: list[str] = []

    async def wait_for_it(name: str) -> None:
        async with store.lock("handed"):
            served.append(name)

    with anyio.fail_after(10):
        loop = asyncio.get_running_loop()
        async with store.lock("handed"):
            first = loop.create_task(wait_for_it("first"))
            await anyio.sleep(0.01)
            second = loop.create_task(wait_for_it("second"))
            await anyio.sleep(0.01)
        first.cancel()  # the lock was just handed to it; it has not run yet
        await asyncio.gather(first, second, return_exceptions=True)
        async with store.lock("handed"):
            served.append("after")
    assert first.cancelled()
    assert served == ["second", "after"]


async def test_locks_of_different_sessions_are_independent(store: SessionStore) -> None:
    with anyio.fail_after(10):
        async with store.lock("one"), store.lock("two"):
            pass


async def test_reopen_after_aclose(open_stores: Callable[[], SessionStore]) -> None:
    store = open_stores()
    session = await store.create(metadata={"kept": True})
    await store.aclose()
    assert (await store.get(session.id)).metadata == {"kept": True}


# --- turns: begin_turn / end_turn ------------------------------------------------------


def _user(text: str) -> Message:
    return Message(role="user", content=text)


async def test_a_turn_creates_a_new_session(store: SessionStore) -> None:
    turn = await store.begin_turn("fresh", agent_name="assistant", messages=[_user("hi")])
    assert turn.history == []
    assert _content(turn.stored) == [("user", "hi")] and turn.stored[0].created_at is not None
    answer = await store.end_turn(turn, [Message(role="assistant", content="hello")])
    assert _content(answer) == [("assistant", "hello")]
    session = await store.get("fresh")
    assert session.agent_name == "assistant"
    assert _content(session.messages) == [("user", "hi"), ("assistant", "hello")]
    again = await store.begin_turn("fresh", agent_name="other", messages=[_user("more")])
    await store.end_turn(again, [])
    assert _content(again.history) == [("user", "hi"), ("assistant", "hello")]
    assert (await store.get("fresh")).agent_name == "assistant"  # not changed by later turns


async def test_a_seed_is_adopted_only_by_an_empty_history(store: SessionStore) -> None:
    seed = [_user("earlier"), Message(role="assistant", content="answer")]
    first = await store.begin_turn("seeded", agent_name=None, messages=[_user("now")], seed=seed)
    assert _content(first.history) == _content(seed)
    assert _content(first.stored) == [("user", "now")]
    await store.end_turn(first, [Message(role="assistant", content="done")])
    expected = [*_content(seed), ("user", "now"), ("assistant", "done")]
    assert _content(await store.messages("seeded")) == expected
    # a history that is there wins over a seed
    second = await store.begin_turn("seeded", agent_name=None, messages=[_user("x")], seed=[_user("ignored")])
    await store.end_turn(second, [])
    assert _content(second.history) == expected
    assert _content(await store.messages("seeded")) == [*expected, ("user", "x")]


async def test_a_window_shows_the_last_messages_and_keeps_them_all(store: SessionStore) -> None:
    await store.create(session_id="long")
    await store.append("long", [_user(str(n)) for n in range(10)])
    for window in (3, 3, 1, 20):  # twice: the second may come from this process's cache
        turn = await store.begin_turn("long", agent_name=None, messages=[], window=window)
        await store.end_turn(turn, [])
        assert [m.content for m in turn.history] == [str(n) for n in range(10)][-window:]
    turn = await store.begin_turn("long", agent_name=None, messages=[_user("10")], window=2)
    assert [m.content for m in turn.history] == ["8", "9"]
    await store.end_turn(turn, [_user("11")])
    turn = await store.begin_turn("long", agent_name=None, messages=[], window=4)
    await store.end_turn(turn, [])
    assert [m.content for m in turn.history] == ["8", "9", "10", "11"]
    assert [m.content for m in await store.messages("long")] == [str(n) for n in range(12)]


async def test_a_turn_sees_what_other_workers_wrote(open_stores: Callable[[], SessionStore]) -> None:
    here, there = open_stores(), open_stores()
    turn = await here.begin_turn("shared", agent_name=None, messages=[_user("a")])
    await here.end_turn(turn, [Message(role="assistant", content="b")])
    other = await there.begin_turn("shared", agent_name=None, messages=[_user("c")])
    assert _content(other.history) == [("user", "a"), ("assistant", "b")]
    await there.end_turn(other, [Message(role="assistant", content="d")])
    await there.append("shared", [_user("e")])  # outside any turn, too
    again = await here.begin_turn("shared", agent_name=None, messages=[], window=4)
    await here.end_turn(again, [])
    assert [m.content for m in again.history] == ["b", "c", "d", "e"]
    whole = await here.begin_turn("shared", agent_name=None, messages=[])
    await here.end_turn(whole, [])
    assert [m.content for m in whole.history] == ["a", "b", "c", "d", "e"]


async def test_a_recreated_session_is_not_served_from_a_stale_cache(
    open_stores: Callable[[], SessionStore],
) -> None:
    here, there = open_stores(), open_stores()
    turn = await here.begin_turn("reborn", agent_name=None, messages=[_user("old 1"), _user("old 2")])
    await here.end_turn(turn, [])
    await anyio.sleep(0.002)  # a new incarnation: another creation time
    assert await there.delete("reborn")
    await there.create(session_id="reborn")
    await there.append("reborn", [_user("new 1"), _user("new 2"), _user("new 3")])
    again = await here.begin_turn("reborn", agent_name=None, messages=[])
    await here.end_turn(again, [])
    assert [m.content for m in again.history] == ["new 1", "new 2", "new 3"]


async def test_a_busy_session_waits_for_the_turn_to_end(open_stores: Callable[[], SessionStore]) -> None:
    here, there = open_stores(), open_stores()
    first = await here.begin_turn("busy-turn", agent_name=None, messages=[_user("1")])
    got: list[list[str]] = []

    async def second(store: SessionStore) -> None:
        turn = await store.begin_turn("busy-turn", agent_name=None, messages=[_user("2")])
        got.append([m.content for m in turn.history])
        await store.end_turn(turn, [Message(role="assistant", content="a2")])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(second, there)  # another worker
            group.start_soon(second, here)  # and another task of this one
            await anyio.sleep(0.2)
            assert got == []  # both wait
            await here.end_turn(first, [Message(role="assistant", content="a1")])
    contents = [m.content for m in await here.messages("busy-turn")]
    assert contents == ["1", "a1", "2", "a2", "2", "a2"]
    assert got == [["1", "a1"], ["1", "a1", "2", "a2"]]


async def test_a_turn_on_a_session_deleted_meanwhile(store: SessionStore) -> None:
    turn = await store.begin_turn("gone", agent_name=None, messages=[_user("1")])
    assert await store.delete("gone")
    with pytest.raises(SessionNotFound):
        await store.end_turn(turn, [Message(role="assistant", content="lost")])
    with anyio.fail_after(10):  # the lock was given back all the same
        turn = await store.begin_turn("gone", agent_name=None, messages=[_user("again")])
        await store.end_turn(turn, [])
    assert _content(turn.history) == []
