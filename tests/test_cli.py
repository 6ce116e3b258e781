"""`orbiter-asgi serve`: targets, store selection, and sessions that outlive the process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from orbiter_asgi import OrbiterApp, create_app
from orbiter_asgi.cli import build_app, load_target
from orbiter_asgi.stores.memory import MemoryStore
from orbiter_asgi.stores.redis import RedisStore
from orbiter_asgi.stores.sqlite import SQLiteStore
from tests.servers import running_server

HERE = Path(__file__).parent


def test_targets_by_module_and_by_file() -> None:
    by_module = build_app("tests.apps.slow_agents:agents", "memory://")
    by_file = build_app(f"{HERE / 'apps' / 'slow_agents.py'}:agents", "memory://")
    for app in (by_module, by_file):
        assert isinstance(app, OrbiterApp)
        assert [entry.name for entry in app.agents.entries()] == ["assistant", "slow", "broken"]
    assert load_target("tests.apps.slow_agents").__name__ == "tests.apps.slow_agents"
    with pytest.raises(SystemExit, match="no attribute"):
        load_target("tests.apps.slow_agents:missing")
    with pytest.raises(SystemExit, match="No such file"):
        load_target("nowhere.py:app")


def test_store_comes_from_the_argument_or_orbiter_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORBITER_STORE", raising=False)
    assert isinstance(create_app(agents=[]).store, MemoryStore)
    monkeypatch.setenv("ORBITER_STORE", f"sqlite:///{tmp_path / 'env.db'}")
    assert isinstance(create_app(agents=[]).store, SQLiteStore)
    assert isinstance(create_app(agents=[], store="memory://").store, MemoryStore)
    for url in ("redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/1?prefix=t:"):
        assert isinstance(create_app(agents=[], store=url).store, RedisStore)  # connects lazily
    with pytest.raises(ValueError, match="Unknown store URL"):
        create_app(agents=[], store="mongodb://x")


@pytest.mark.e2e
def test_sessions_in_sqlite_outlive_the_server(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'sessions.db'}"
    with running_server(["--store", store]) as url:
        first = httpx.post(f"{url}/chat", json={"input": "remember me", "session_id": "kept"})
    assert first.status_code == 200
    with running_server(["--store", store]) as url:
        history = httpx.get(f"{url}/sessions/kept/messages").json()
        second = httpx.post(f"{url}/chat", json={"input": "again", "session_id": "kept"})
    assert [m["content"] for m in history] == ["remember me", "remember me"]
    assert second.json()["usage"]["input_tokens"] > first.json()["usage"]["input_tokens"]
