"""Hypothesis drives each store through random operations and checks it against a dict model."""

from __future__ import annotations

import itertools
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from redis import Redis
from store_helpers import BACKENDS, drop_schemas, with_option

from orbiter_asgi.exceptions import ConflictError, SessionNotFound
from orbiter_asgi.models import Message
from orbiter_asgi.stores import SessionStore, open_store

IDS = st.sampled_from(["a", "b", "c", "d-1", "E.2"])
AGENTS = st.sampled_from([None, "alpha", "beta"])
TEXT = st.text(max_size=30)
TITLES = st.text(max_size=10)
METADATA = st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)
MESSAGES = st.lists(
    st.builds(Message, role=st.sampled_from(["user", "assistant", "tool"]), content=TEXT),
    max_size=4,
)


class _Model:
    __slots__ = ("agent_name", "messages", "metadata", "title")

    def __init__(self, agent_name: str | None, title: str, metadata: dict[str, Any]) -> None:
        self.agent_name = agent_name
        self.title = title
        self.metadata = metadata
        self.messages: list[tuple[str, str]] = []


def machine_for(portal: BlockingPortal, new_url: Callable[[], str]) -> type[RuleBasedStateMachine]:
    class StoreMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.store: SessionStore = open_store(new_url())
            self.model: dict[str, _Model] = {}

        def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
            return portal.call(lambda: getattr(self.store, method)(*args, **kwargs))

        @rule(session_id=IDS, agent_name=AGENTS, title=TITLES, metadata=METADATA)
        def create(
            self, session_id: str, agent_name: str | None, title: str, metadata: dict[str, Any]
        ) -> None:
            if session_id in self.model:
                with pytest.raises(ConflictError):
                    self.call("create", session_id=session_id, agent_name=agent_name, title=title)
                return
            session = self.call(
                "create", session_id=session_id, agent_name=agent_name, title=title, metadata=metadata
            )
            assert session.title == title
            assert session.metadata == metadata
            self.model[session_id] = _Model(agent_name, title, metadata)

        @rule(session_id=IDS, agent_name=AGENTS)
        def history(self, session_id: str, agent_name: str | None) -> None:
            history = self.call("history", session_id, agent_name=agent_name)
            if session_id not in self.model:
                self.model[session_id] = _Model(agent_name, "", {})
            assert [(m.role, m.content) for m in history] == self.model[session_id].messages

        @rule(session_id=IDS, messages=MESSAGES)
        def append(self, session_id: str, messages: list[Message]) -> None:
            if session_id not in self.model:
                with pytest.raises(SessionNotFound):
                    self.call("append", session_id, messages)
                return
            stored = self.call("append", session_id, messages)
            assert [(m.role, m.content) for m in stored] == [(m.role, m.content) for m in messages]
            self.model[session_id].messages.extend((m.role, m.content) for m in messages)

        @rule(
            session_id=IDS,
            agent_name=AGENTS | st.just(msgspec.UNSET),
            title=TITLES | st.just(msgspec.UNSET),
            metadata=METADATA | st.just(msgspec.UNSET),
        )
        def update(self, session_id: str, agent_name: Any, title: Any, metadata: Any) -> None:
            changes = {"agent_name": agent_name, "title": title, "metadata": metadata}
            if session_id not in self.model:
                with pytest.raises(SessionNotFound):
                    self.call("update", session_id, **changes)
                return
            session = self.call("update", session_id, **changes)
            record = self.model[session_id]
            if agent_name is not msgspec.UNSET:
                record.agent_name = agent_name
            if title is not msgspec.UNSET:
                record.title = title
            if metadata is not msgspec.UNSET:
                record.metadata = metadata
            assert (session.agent_name, session.title, session.metadata) == (
                record.agent_name,
                record.title,
                record.metadata,
            )

        @rule(session_id=IDS)
        def delete(self, session_id: str) -> None:
            assert self.call("delete", session_id) == (session_id in self.model)
            self.model.pop(session_id, None)

        @precondition(lambda self: bool(self.model))
        @rule(data=st.data())
        def get(self, data: st.DataObject) -> None:
            session_id = data.draw(st.sampled_from(sorted(self.model)))
            session = self.call("get", session_id)
            record = self.model[session_id]
            assert session.agent_name == record.agent_name
            assert session.title == record.title
            assert session.metadata == record.metadata
            assert [(m.role, m.content) for m in session.messages] == record.messages

        @rule(limit=st.integers(1, 4), agent_name=AGENTS)
        def list_all(self, limit: int, agent_name: str | None) -> None:
            items = []
            cursor = None
            for _ in range(100):
                page = self.call("list", agent_name=agent_name, limit=limit, cursor=cursor)
                items.extend(page.items)
                cursor = page.next_cursor
                if cursor is None:
                    break
            expected = {
                sid
                for sid, record in self.model.items()
                if agent_name is None or record.agent_name == agent_name
            }
            keys = [(i.created_at, i.id) for i in items]
            assert keys == sorted(keys, reverse=True)
            assert {i.id for i in items} == expected
            for item in items:
                assert item.message_count == len(self.model[item.id].messages)
                assert item.metadata == self.model[item.id].metadata
                assert item.title == self.model[item.id].title

        @invariant()
        def ids_agree(self) -> None:
            assert {i.id for i in self.call("list", limit=100).items} == set(self.model)

        def teardown(self) -> None:
            portal.call(self.store.aclose)

    return StoreMachine


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as portal:
        yield portal


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_matches_model(backend: str, portal: BlockingPortal, request: pytest.FixtureRequest) -> None:
    counter = itertools.count()
    cleanup: list[Callable[[], None]] = []
    if backend == "memory":

        def new_url() -> str:
            return "memory://"
    elif backend == "sqlite":
        directory = tempfile.TemporaryDirectory()
        cleanup.append(directory.cleanup)

        def new_url() -> str:
            return f"sqlite:///{Path(directory.name) / f'm{next(counter)}.db'}"
    elif backend == "postgres":
        postgres_url: str = request.getfixturevalue("postgres_url")
        schemas = f"test_model_{uuid.uuid4().hex[:8]}_"

        def new_url() -> str:
            return with_option(postgres_url, f"schema={schemas}{next(counter)}")

        cleanup.append(lambda: drop_schemas(postgres_url, schemas))
    else:
        redis_url: str = request.getfixturevalue("redis_url")
        prefix = f"test:model:{uuid.uuid4().hex[:8]}:"

        def new_url() -> str:
            return f"{redis_url}?prefix={prefix}{next(counter)}:"

        def drop() -> None:
            client = Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()

        cleanup.append(drop)
    machine = machine_for(portal, new_url)
    machine.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    try:
        machine.TestCase().runTest()
    finally:
        for step in cleanup:
            step()
