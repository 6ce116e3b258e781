"""`GET /metrics`: run, token, HTTP, stream and store series, scraped after known traffic."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from orbiter_asgi import Agent, OrbiterApp, create_app
from orbiter_asgi.cli import _options, _parser, build_app
from tests.helpers import client_for, http_scope
from tests.servers import running_server

pytestmark = pytest.mark.anyio

WORDS = " ".join(f"w{n}" for n in range(40))

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def broken(input: str) -> AsyncIterator[str]:
    yield "partial"
    raise RuntimeError("model exploded")


def _app(**options: Any) -> OrbiterApp:
    agents = [Agent("assistant"), Agent("slow", model="echo?delay=0.05"), broken]
    return create_app(agents=agents, **options)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


async def test_runs_are_counted_by_agent_and_outcome() -> None:
    async with client_for(_app()) as client:
        for _ in range(2):
            assert (await client.post("/chat", json={"input": "one two three"})).status_code == 200
        streamed = await client.post("/chat", json={"input": "one two three", "stream": True})
        assert b'"type":"done"' in streamed.content
        assert (await client.post("/chat", json={"agent_name": "broken", "input": "hi"})).status_code == 502
        accepted = await client.post("/chat", json={"agent_name": "slow", "input": WORDS, "background": True})
        run_id = accepted.json()["run_id"]
        await anyio.sleep(0.15)
        assert (await client.post(f"/runs/{run_id}/cancel")).status_code == 202
        with anyio.fail_after(2):
            await client.get(f"/runs/{run_id}/events")  # until it has ended
        samples = await scrape(client)
    runs = {
        (dict(labels)["agent"], dict(labels)["outcome"]): count
        for (name, labels), count in samples.items()
        if name == "orbiter_runs_total" and count
    }
    assert runs == {("assistant", "completed"): 3, ("broken", "failed"): 1, ("slow", "cancelled"): 1}
    assert value(samples, "orbiter_tokens_total", agent="assistant", type="input") == 9
    assert value(samples, "orbiter_tokens_total", agent="assistant", type="output") == 9
    assert value(samples, "orbiter_run_duration_seconds_count", agent="assistant") == 3
    assert value(samples, "orbiter_run_duration_seconds_count", agent="broken") == 1
    assert value(samples, "orbiter_run_duration_seconds_count", agent="slow") == 1
    assert value(samples, "orbiter_run_duration_seconds_sum", agent="slow") >= 0.15
    # every run produced output before it ended: each has a time to first token
    assert value(samples, "orbiter_time_to_first_token_seconds_count", agent="assistant") == 3
    assert value(samples, "orbiter_time_to_first_token_seconds_count", agent="broken") == 1
    assert 0.04 < value(samples, "orbiter_time_to_first_token_seconds_sum", agent="slow") < 0.15
    assert value(samples, "orbiter_time_to_first_token_seconds_bucket", agent="slow", le="0.05") == 0
    assert value(samples, "orbiter_time_to_first_token_seconds_bucket", agent="slow", le="+Inf") == 1
    assert value(samples, "orbiter_active_runs") == 0


async def test_a_run_that_runs_out_of_time_counts_as_a_timeout() -> None:
    async with client_for(_app(run_timeout=0.1)) as client:
        response = await client.post("/chat", json={"agent_name": "slow", "input": WORDS})
        samples = await scrape(client)
    assert response.status_code == 504
    assert value(samples, "orbiter_runs_total", agent="slow", outcome="timeout") == 1
    assert value(samples, "orbiter_runs_total", agent="slow", outcome="failed") == 0


async def test_requests_are_counted_by_route_template_never_the_raw_path() -> None:
    async with client_for(_app()) as client:
        await client.post("/chat", json={"input": "hi", "session_id": "abc"})
        await client.get("/sessions/abc")
        await client.get("/sessions/abc")
        await client.get("/sessions/missing")
        await client.get("/nowhere")
        await client.delete("/chat")  # the path exists, the method does not
        await client.get("/healthz")
        await client.get("/readyz")
        await client.get("/metrics")
        samples = await scrape(client)
    requests = {
        (dict(labels)["route"], dict(labels)["method"], dict(labels)["status"]): count
        for (name, labels), count in samples.items()
        if name == "orbiter_http_requests_total"
    }
    assert requests == {
        ("/chat", "POST", "200"): 1,
        ("/sessions/{session_id}", "GET", "200"): 2,
        ("/sessions/{session_id}", "GET", "404"): 1,
        ("other", "GET", "404"): 1,
        ("/chat", "DELETE", "405"): 1,
    }


async def test_an_unknown_agent_or_method_mints_no_series() -> None:
    async with client_for(_app()) as client:
        assert (await client.post("/chat", json={"agent_name": "ghost", "input": "hi"})).status_code == 404
        await client.request("BREW", "/chat")
        text = (await client.get("/metrics")).text
    assert "ghost" not in text and "BREW" not in text
    assert 'orbiter_http_requests_total{method="other",route="/chat",status="405"} 1.0' in text


async def test_store_operations_are_timed_by_store_and_operation() -> None:
    async with client_for(_app()) as client:
        await client.post("/chat", json={"input": "hi", "session_id": "s"})
        await client.get("/sessions/s")
        await client.get("/sessions")
        samples = await scrape(client)

    def count(operation: str) -> float:
        return value(samples, "orbiter_store_operation_seconds_count", store="memory", operation=operation)

    # a turn in a session: one step to begin it (lock, history, the user's message), one to end it
    assert (count("begin_turn"), count("end_turn")) == (1, 1)
    assert (count("lock"), count("history"), count("append")) == (0, 0, 0)
    assert (count("get"), count("list"), count("create"), count("delete")) == (1, 1, 0, 0)


async def test_an_open_event_stream_is_counted_until_it_ends() -> None:
    app = _app()
    body = json.dumps({"agent_name": "slow", "input": "a b c d e f", "stream": True}).encode()
    first = anyio.Event()
    ended = anyio.Event()

    async def receive() -> dict[str, Any]:
        if not first.is_set() and body:
            return {"type": "http.request", "body": body}
        await ended.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            first.set()

    async def stream() -> None:
        await app(http_scope("POST", "/chat"), receive, send)
        ended.set()

    async with client_for(app) as client, anyio.create_task_group() as group:
        with anyio.fail_after(5):
            group.start_soon(stream)
            await first.wait()
            await anyio.sleep(0.07)  # past the first word: the run is running
            during = await scrape(client)
            await ended.wait()
        after = await scrape(client)
    assert value(during, "orbiter_open_sse_streams") == 1
    assert value(during, "orbiter_active_runs") == 1
    assert value(after, "orbiter_open_sse_streams") == 0
    assert value(after, "orbiter_active_runs") == 0
    assert value(after, "orbiter_http_requests_total", route="/chat", method="POST", status="200") == 1


def test_an_open_websocket_is_counted_until_it_closes() -> None:
    with TestClient(_app()) as client:
        with client.websocket_connect("/ws/chat") as socket:
            socket.send_json({"input": "hi"})
            while socket.receive_json()["type"] != "done":
                pass
            during = parse(client.get("/metrics").text)
        after = parse(client.get("/metrics").text)
    assert value(during, "orbiter_open_websockets") == 1
    assert value(after, "orbiter_open_websockets") == 0
    assert value(after, "orbiter_runs_total", agent="assistant", outcome="completed") == 1


async def test_metrics_false_serves_no_metrics_and_wraps_nothing() -> None:
    app = _app(metrics=False)
    async with client_for(app) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.post("/chat", json={"input": "hi"})).status_code == 200
    assert app.metrics is None and app.context.store is app.store and app.context.run_observers == []


async def test_metrics_are_behind_the_api_keys() -> None:
    async with client_for(_app(api_keys=["k"])) as client:
        assert (await client.get("/metrics")).status_code == 401
        await client.get("/sessions/abc")  # refused before routing: still its template
        response = await client.get("/metrics", headers={"authorization": "Bearer k"})
    assert response.status_code == 200
    samples = parse(response.text)
    assert (
        value(
            samples, "orbiter_http_requests_total", route="/sessions/{session_id}", method="GET", status="401"
        )
        == 1
    )


def test_two_apps_in_one_process_keep_their_own_series() -> None:
    one, two = _app(), _app()
    with TestClient(one) as first, TestClient(two) as second:
        first.post("/chat", json={"input": "hi"})
        assert (
            value(
                parse(first.get("/metrics").text),
                "orbiter_runs_total",
                agent="assistant",
                outcome="completed",
            )
            == 1
        )
        assert (
            value(
                parse(second.get("/metrics").text),
                "orbiter_runs_total",
                agent="assistant",
                outcome="completed",
            )
            == 0
        )


def test_metrics_need_the_extra_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "orbiter_asgi.metrics.prometheus")
    assert create_app(agents=[Agent("assistant")]).metrics is None
    with pytest.raises(ImportError, match=r"orbiter-asgi\[metrics\]"):
        create_app(agents=[Agent("assistant")], metrics=True)


def test_the_command_line_turns_metrics_off() -> None:
    options = _options(_parser().parse_args(["serve", "--no-metrics"]))
    assert options["metrics"] is False
    app = build_app(None, "memory://", options)
    assert isinstance(app, OrbiterApp) and app.metrics is None
    assert "metrics" not in _options(_parser().parse_args(["serve"]))


@pytest.mark.e2e
def test_a_scrape_sums_every_worker(tmp_path: Path) -> None:
    """Under `--workers 2` each worker writes its own files; one scrape, on
    whichever worker answers it, sums them."""
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    target = str(Path(__file__).parent / "apps" / "slow_agents.py") + ":agents"
    count = 0
    with running_server([target, "--workers", "2", "--store", "memory://"], env=env, timeout=40) as url:
        # a connection each, which the workers share out, until both have counted runs
        while count < 12 or (len(_pids(multiproc)) < 2 and count < 400):
            with httpx.Client(base_url=url, timeout=10) as client:
                assert client.post("/chat", json={"input": "one two"}).status_code == 200
            count += 1
        with httpx.Client(base_url=url, timeout=10) as client:
            samples = parse(client.get("/metrics").text)
        assert len(_pids(multiproc)) == 2
    runs = sum(v for (name, _), v in samples.items() if name == "orbiter_runs_total")
    assert runs == count
    assert value(samples, "orbiter_runs_total", agent="assistant", outcome="completed") == count
    assert value(samples, "orbiter_tokens_total", agent="assistant", type="output") == 2 * count
    assert value(samples, "orbiter_run_duration_seconds_count", agent="assistant") == count
    assert value(samples, "orbiter_active_runs") == 0
    assert value(samples, "orbiter_http_requests_total", route="/chat", method="POST", status="200") == count


def _pids(directory: Path) -> set[str]:
    """The processes that counted something: only workers serve requests."""
    return {path.stem.rpartition("_")[2] for path in directory.glob("counter_*.db")}
