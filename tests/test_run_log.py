"""The run log: one record per run end on `orbiter_asgi.runs`, and JSON lines from the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from orbiter_asgi import Agent, create_app
from orbiter_asgi._logging import JSONLines
from orbiter_asgi.models import Message
from tests.helpers import client_for, sse_run
from tests.servers import free_port

pytestmark = pytest.mark.anyio


def _runs(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [record.run for record in caplog.records if record.name == "orbiter_asgi.runs"]  # type: ignore[attr-defined]


async def _broken(input: str, messages: list[Message]) -> AsyncIterator[str]:
    yield "partial "
    raise RuntimeError("model fell over")


async def test_each_run_end_is_one_record_with_its_facts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="orbiter_asgi.runs")
    app = create_app(agents=[Agent("assistant", model="echo")])
    async with client_for(app) as client:
        answer = await client.post("/chat", json={"input": "one two three", "session_id": "s-1"})
        stream = await client.post("/chat", json={"input": "four five", "stream": True})
    [json_run, streamed] = _runs(caplog)
    assert json_run["run_id"] == answer.headers["x-run-id"]
    assert json_run["agent"] == "assistant" and json_run["session_id"] == "s-1"
    assert json_run["status"] == "completed" and json_run["error_code"] is None
    assert json_run["input_tokens"] == 3 and json_run["output_tokens"] == 3
    duration, first = json_run["duration_ms"], json_run["time_to_first_token_ms"]
    assert isinstance(duration, float) and isinstance(first, float) and 0 <= first <= duration
    assert streamed["run_id"] == sse_run(stream)[0] and streamed["session_id"] is None
    message = next(r for r in caplog.records if r.name == "orbiter_asgi.runs").getMessage()
    assert message.startswith(f"run {answer.headers['x-run-id']} completed in ")


async def test_a_failed_run_logs_its_error_code(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="orbiter_asgi.runs")
    app = create_app(agents={"broken": _broken})
    async with client_for(app) as client:
        response = await client.post("/chat", json={"input": "hi"})
    assert response.status_code == 502
    [run] = _runs(caplog)
    assert run["status"] == "failed" and run["error_code"] == "agent_error"
    assert run["run_id"] == response.headers["x-run-id"]


async def test_nothing_is_logged_below_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="orbiter_asgi.runs")
    async with client_for(create_app(agents=[Agent("assistant", model="echo")])) as client:
        assert (await client.post("/chat", json={"input": "quiet"})).status_code == 200
    assert _runs(caplog) == []


def test_json_lines_carry_a_records_fields() -> None:
    run = logging.LogRecord("orbiter_asgi.runs", logging.INFO, __file__, 1, "run %s done", ("r1",), None)
    run.run = {"run_id": "r1", "status": "completed"}
    line = json.loads(JSONLines().format(run))
    assert (line["logger"], line["level"], line["message"]) == ("orbiter_asgi.runs", "info", "run r1 done")
    assert line["run_id"] == "r1" and line["status"] == "completed" and line["time"].endswith("+00:00")
    access = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", "/chat", "1.1", 200), None,
    )  # fmt: skip
    fields = json.loads(JSONLines().format(access))
    assert (fields["method"], fields["path"], fields["status"]) == ("POST", "/chat", 200)


@pytest.mark.e2e
def test_serve_writes_json_lines_access_log_included() -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "orbiter_asgi", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--store", "memory://", "--log-format", "json",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.endswith("API_KEY")}  # the echo demo agent
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, "server did not start"
                time.sleep(0.1)
        response = httpx.post(f"{url}/chat", json={"input": "log me"}, timeout=10)
        assert response.status_code == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=15)
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    runs = [line for line in lines if line["logger"] == "orbiter_asgi.runs"]
    assert [run["run_id"] for run in runs] == [response.headers["x-run-id"]]
    assert runs[0]["status"] == "completed"
    access = [line for line in lines if line["logger"] == "uvicorn.access" and line.get("path") == "/chat"]
    assert len(access) == 1 and access[0]["method"] == "POST" and access[0]["status"] == 200
