"""Real server processes sharing one store, through HTTP.

Two separate uvicorn processes (and one with `--workers 2`) on one SQLite
file, one Redis or one PostgreSQL: a session started on one continues on the other with
one ordered history, and concurrent turns on one session are serialized
across processes. A server SIGKILLed mid-traffic loses no acknowledged
message (SQLite, PostgreSQL) and leaves a readable SQLite file.
"""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from store_helpers import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue(f"{request.param}_store_url")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store whose acknowledged writes outlive the process (Redis here keeps no disk copy)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'killed.db'}"
    url: str = request.getfixturevalue("postgres_store_url")
    return url


def _chat(client: httpx.Client, base: str, session_id: str, text: str) -> dict[str, object]:
    response = client.post(f"{base}/chat", json={"input": text, "session_id": session_id}, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert body["output"] == text
    return body


def _history(base: str, session_id: str) -> list[tuple[str, str]]:
    response = httpx.get(f"{base}/sessions/{session_id}/messages", timeout=30)
    assert response.status_code == 200, response.text
    return [(m["role"], m["content"]) for m in response.json()]


def test_two_servers_continue_one_session(shared_store: str) -> None:
    one, two = ServerProcess(shared_store), ServerProcess(shared_store)
    try:
        with httpx.Client() as client:
            for turn in range(6):
                base = (one, two)[turn % 2].url
                _chat(client, base, "relay", f"turn {turn}")
            expected = [(role, f"turn {turn}") for turn in range(6) for role in ("user", "assistant")]
            assert _history(one.url, "relay") == expected
            assert _history(two.url, "relay") == expected
            listed = client.get(f"{two.url}/sessions").json()
            assert [s["id"] for s in listed] == ["relay"]
            assert listed[0]["message_count"] == 12

            # concurrent turns on one session, through both servers: each user
            # message is followed by its own answer, so turns never overlapped
            def turn(n: int) -> None:
                with httpx.Client() as own:
                    _chat(own, (one, two)[n % 2].url, "contended", f"c{n}")

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(turn, range(16)))
            history = _history(one.url, "contended")
            assert len(history) == 32
            for user, answer in zip(history[::2], history[1::2], strict=True):
                assert user[0] == "user" and answer == ("assistant", user[1])
            assert sorted(c for _, c in history[::2]) == sorted(f"c{n}" for n in range(16))
    finally:
        one.stop()
        two.stop()


def test_workers_share_the_store(shared_store: str) -> None:
    server = ServerProcess(shared_store, workers=2)
    try:
        pids: set[str] = set()
        for turn in range(40):
            with httpx.Client() as client:  # a new connection each turn, for any worker
                response = client.post(
                    f"{server.url}/chat", json={"input": f"t{turn}", "session_id": "workers"}
                )
                assert response.status_code == 200, response.text
                pids.add(response.headers["x-worker-pid"])
        history = _history(server.url, "workers")
        assert history == [(role, f"t{turn}") for turn in range(40) for role in ("user", "assistant")]
        assert len(pids) == 2, "both workers should have answered some of 40 connections"
    finally:
        server.stop()


def test_sigkill_loses_no_acknowledged_message(durable_store: str) -> None:
    url = durable_store
    server = ServerProcess(url)
    acknowledged: dict[str, list[str]] = {f"w{n}": [] for n in range(4)}
    stop = threading.Event()
    enough = threading.Event()

    def writer(name: str) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                text = f"{name}:{i}"
                try:
                    if i % 2:
                        response = client.post(
                            f"{server.url}/sessions/{name}/messages",
                            json={"role": "user", "content": text},
                        )
                        ok = response.status_code == 201
                    else:
                        ok = (
                            client.post(
                                f"{server.url}/chat", json={"input": text, "session_id": name}
                            ).status_code
                            == 200
                        )
                except httpx.HTTPError:
                    return  # the server died under us: this one was never acknowledged
                if ok:
                    acknowledged[name].append(text)
                if sum(map(len, acknowledged.values())) >= 200:
                    enough.set()

    threads = [threading.Thread(target=writer, args=(name,)) for name in acknowledged]
    for thread in threads:
        thread.start()
    try:
        assert enough.wait(60), "the writers never got 200 acknowledgements"
        server.kill()  # SIGKILL while the writers are still sending
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        server.kill()

    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()

    again = ServerProcess(url)
    try:
        for name, texts in acknowledged.items():
            history = [c for r, c in _history(again.url, name) if r == "user"]
            # every acknowledged message is there, in the order it was sent
            assert [c for c in history if c in set(texts)] == texts
            assert len(texts) > 0
        # and the restarted server carries on with the same sessions
        with httpx.Client() as client:
            _chat(client, again.url, "w0", "after the crash")
    finally:
        again.stop()
