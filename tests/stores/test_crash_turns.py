"""A worker SIGKILLed in the middle of a chat turn, on every store that outlives a process.

Two uvicorn workers, A and B, share one store and serve the echo agent at
0.1 s a word. Both first get acknowledged work on a session: completed
turns, and appends of one message and of lists. Then A starts a long turn
(streamed or JSON) and is killed while the agent speaks. What must hold:

- every acknowledged message is in the session exactly once, in order, as
  B and a store opened afresh both read it; the killed turn left its user
  message and no answer; another session is untouched;
- the session is not wedged: B's next turn, sent after the kill or already
  waiting for the lock when the kill came, completes within the lock's lease
  (`?lock_ttl=3`). SQLite notices a dead process on its own machine at
  once; a lease-only store (Redis, PostgreSQL) keeps the dead worker's lease
  until it lapses, at least two thirds of `lock_ttl` after the last renewal,
  so the next turn cannot start sooner.

`test_store_servers.py` kills a server under a flood of writes (SQLite);
`test_runs_across_workers.py` follows a killed worker's run to `worker_lost`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import anyio
import httpx
import pytest
from store_helpers import BACKENDS, ServerProcess, wait_for

from orbiter_asgi.stores import open_store

pytestmark = pytest.mark.e2e

PERSISTENT = [param for param in BACKENDS if param.values[0] != "memory"]
LOCK_TTL = 3.0
SLOW_ECHO = {"ORBITER_TEST_MODEL": "echo?delay=0.1"}
LONG = " ".join(f"w{n}" for n in range(40))  # four seconds of echo
# stores whose turn lock is a lease and nothing else: a dead holder's lease runs its course
LEASE_ONLY = {"redis", "postgres"}

Message = tuple[str, str]


def _with_options(url: str, options: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{options}"


@pytest.fixture
def shared_url(store_url: str) -> str:
    return _with_options(store_url, f"lock_ttl={LOCK_TTL:g}")


@pytest.fixture
def workers(shared_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a = ServerProcess(shared_url, env=SLOW_ECHO)
    try:
        b = ServerProcess(shared_url, env=SLOW_ECHO)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.kill()
        b.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def _chat(http: httpx.Client, base: str, session_id: str, text: str) -> None:
    response = http.post(f"{base}/chat", json={"input": text, "session_id": session_id})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == text


def _history(http: httpx.Client, base: str, session_id: str) -> list[Message]:
    response = http.get(f"{base}/sessions/{session_id}/messages")
    assert response.status_code == 200, response.text
    return [(m["role"], m.get("content", "")) for m in response.json()]


def _acknowledged_work(
    http: httpx.Client, workers: tuple[ServerProcess, ServerProcess]
) -> dict[str, list[Message]]:
    """Turns and appends on two sessions, through both workers; what each acknowledged (2xx)."""
    expected: dict[str, list[Message]] = {"crashed": [], "quiet": []}
    for step in range(6):
        base = workers[step % 2].url
        for session_id, history in expected.items():
            text = f"{session_id} {step}"
            if step % 3 == 0:
                _chat(http, base, session_id, text)
                history += [("user", text), ("assistant", text)]
            elif step % 3 == 1:
                message = {"role": "user", "content": text}
                response = http.post(f"{base}/sessions/{session_id}/messages", json=message)
                assert response.status_code == 201, response.text
                history.append(("user", text))
            else:
                batch = [{"role": "system", "content": f"{text} a"}, {"role": "tool", "content": f"{text} b"}]
                response = http.post(f"{base}/sessions/{session_id}/messages", json=batch)
                assert response.status_code == 201, response.text
                history += [(m["role"], m["content"]) for m in batch]
    return expected


def _in_store(url: str, session_ids: list[str]) -> dict[str, list[Message]]:
    """The histories as a store opened afresh on the URL reads them: no worker in between."""

    async def read() -> dict[str, list[Message]]:
        store = open_store(url)
        try:
            return {sid: [(m.role, m.content) for m in await store.messages(sid)] for sid in session_ids}
        finally:
            await store.aclose()

    return anyio.run(read)


def _start_turn_and_wait_mid_turn(
    http: httpx.Client, a: ServerProcess, b: ServerProcess, stream: bool, pool: ThreadPoolExecutor
) -> Future[list[str]]:
    """Starts the long turn on A and returns once its agent speaks: SSE, when its first
    text arrived; JSON, when B sees the turn's user message stored. The future gives
    what the turn's client got: the SSE data lines read before the connection broke,
    or the JSON answer's body (none when the request broke)."""
    body = {"input": LONG, "session_id": "crashed", "stream": stream}
    speaking: Future[None] = Future()

    def read_stream() -> list[str]:
        lines: list[str] = []
        try:
            with http.stream("POST", f"{a.url}/chat", json=body) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        lines.append(line.removeprefix("data: "))
                        if '"type":"text"' in line and not speaking.done():
                            speaking.set_result(None)
        except httpx.TransportError:
            pass
        finally:
            if not speaking.done():
                speaking.set_exception(AssertionError(f"the turn never spoke: {lines}"))
        return lines

    def post_json() -> list[str]:
        try:
            return [http.post(f"{a.url}/chat", json=body).text]
        except httpx.TransportError:
            return []

    if stream:
        turn = pool.submit(read_stream)
        speaking.result(timeout=10)
    else:
        turn = pool.submit(post_json)
        wait_for(lambda: ("user", LONG) in _history(http, b.url, "crashed"))
    return turn


@pytest.mark.parametrize("store_url", PERSISTENT, indirect=True)
@pytest.mark.parametrize("stream", [True, False], ids=["sse", "json"])
def test_a_kill_mid_turn_loses_no_acknowledged_message_and_frees_the_session(
    store_url: str,
    shared_url: str,
    workers: tuple[ServerProcess, ServerProcess],
    http: httpx.Client,
    stream: bool,
    request: pytest.FixtureRequest,
) -> None:
    a, b = workers
    backend = request.node.callspec.params["store_url"]
    expected = _acknowledged_work(http, workers)
    with ThreadPoolExecutor(2) as pool:
        turn = _start_turn_and_wait_mid_turn(http, a, b, stream, pool)
        # mid-turn, for every worker: the question is stored, no answer yet
        assert _history(http, b.url, "crashed") == [*expected["crashed"], ("user", LONG)]
        a.kill()
        killed = time.monotonic()
        _chat(http, b.url, "crashed", "after the crash")
        took = time.monotonic() - killed
        got = turn.result(timeout=10)
    # the killed turn was never acknowledged: its stream broke before `done`, its request failed
    if stream:
        assert json.loads(got[0])["type"] == "start" and json.loads(got[1])["type"] == "text", got
        assert "[DONE]" not in got and all(json.loads(data)["type"] in ("start", "text") for data in got)
    else:
        assert got == [], got

    _assert_lock_freed_in_time(backend, took)
    after = [("user", "after the crash"), ("assistant", "after the crash")]
    crashed = [*expected["crashed"], ("user", LONG), *after]
    assert _history(http, b.url, "crashed") == crashed
    assert _history(http, b.url, "quiet") == expected["quiet"]
    assert _in_store(shared_url, ["crashed", "quiet"]) == {"crashed": crashed, "quiet": expected["quiet"]}
    listed = {s["id"]: s["message_count"] for s in http.get(f"{b.url}/sessions").json()}
    assert listed == {"crashed": len(crashed), "quiet": len(expected["quiet"])}


@pytest.mark.parametrize("store_url", PERSISTENT, indirect=True)
def test_a_turn_waiting_on_another_worker_runs_once_that_worker_is_killed(
    store_url: str,
    shared_url: str,
    workers: tuple[ServerProcess, ServerProcess],
    http: httpx.Client,
    request: pytest.FixtureRequest,
) -> None:
    a, b = workers
    backend = request.node.callspec.params["store_url"]
    expected = _acknowledged_work(http, workers)
    with ThreadPoolExecutor(2) as pool:
        turn = _start_turn_and_wait_mid_turn(http, a, b, True, pool)

        def queued() -> httpx.Response:
            with httpx.Client(timeout=30) as own:
                return own.post(f"{b.url}/chat", json={"input": "queued turn", "session_id": "crashed"})

        waiting = pool.submit(queued)
        time.sleep(0.5)
        # B's turn waits for A's lock: it has stored nothing and answered nothing
        assert not waiting.done()
        assert _history(http, b.url, "crashed") == [*expected["crashed"], ("user", LONG)]
        a.kill()
        killed = time.monotonic()
        response = waiting.result(timeout=LOCK_TTL + 10)
        took = time.monotonic() - killed
        assert "[DONE]" not in turn.result(timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["output"] == "queued turn"
    _assert_lock_freed_in_time(backend, took)
    crashed = [*expected["crashed"], ("user", LONG), ("user", "queued turn"), ("assistant", "queued turn")]
    assert _history(http, b.url, "crashed") == crashed
    assert _in_store(shared_url, ["crashed", "quiet"]) == {"crashed": crashed, "quiet": expected["quiet"]}


def _assert_lock_freed_in_time(backend: str, took: float) -> None:
    """`took`: from the kill to the end of the next turn on the session (0.1 s of echo and a round trip)."""
    assert took < LOCK_TTL + 1.5, f"the dead worker's lock held the session for {took:.2f}s"
    if backend == "sqlite":
        assert took < 1.0, f"SQLite should see the dead holder at once; the turn took {took:.2f}s"
    elif backend in LEASE_ONLY:
        # the lease was renewed at most lock_ttl / 3 before the kill
        assert took > LOCK_TTL * 2 / 3 - 0.5, f"the next turn ran {took:.2f}s after the kill: in the lease"
