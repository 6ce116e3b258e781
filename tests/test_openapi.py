from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_openapi_31_document_from_the_structs(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"] == "3.1.0"
    assert set(spec["paths"]) == {
        "/chat",
        "/agents",
        "/agents/{agent_name}",
        "/agents/{agent_name}/workspace",
        "/agents/{agent_name}/workspace/{file_name}",
        "/sessions",
        "/sessions/{session_id}",
        "/sessions/{session_id}/messages",
        "/stream",
        "/runs/{run_id}",
        "/runs/{run_id}/events",
        "/runs/{run_id}/cancel",
        "/healthz",
        "/readyz",
        "/v1/models",
        "/v1/chat/completions",
        "/agents/{agent_name}/ag-ui",
    }
    chat = spec["paths"]["/chat"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatRequest"
    }
    ok = chat["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatResponse"}
    assert "text/event-stream" in ok
    assert "422" in chat["responses"]
    schemas = spec["components"]["schemas"]
    assert set(schemas["ChatRequest"]["properties"]) >= {"agent_name", "input", "session_id", "stream"}
    assert set(schemas["ChatResponse"]["properties"]) == {
        "output",
        "agent_name",
        "session_id",
        "steps",
        "usage",
        "run_id",
    }
    assert schemas["TextEvent"]["properties"]["type"] == {"enum": ["text"]}
    # the `Event` union of the streams starts with `start`, which always has its run's id
    stream = spec["paths"]["/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    [data, _done] = stream["schema"]["properties"]["data"]["anyOf"]
    events = data["contentSchema"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in events["anyOf"]] == [
        "StartEvent",
        "TextEvent",
        "ToolCallEvent",
        "ToolResultEvent",
        "DoneEvent",
        "ErrorEvent",
    ]
    assert events["discriminator"]["mapping"]["start"] == "#/components/schemas/StartEvent"
    assert schemas["StartEvent"]["properties"]["type"] == {"enum": ["start"]}
    assert set(schemas["StartEvent"]["required"]) == {"type", "run_id", "agent_name"}
    assert {"run_id"} <= set(schemas["DoneEvent"]["properties"]) & set(schemas["ErrorEvent"]["properties"])
    assert set(spec["paths"]["/sessions/{session_id}"]) == {"get", "patch", "delete"}
    params = {p["name"] for p in spec["paths"]["/sessions"]["get"]["parameters"]}
    assert params == {"agent_name", "limit", "cursor"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], (method, path)
            for ref in _refs(operation):
                assert ref.rsplit("/", 1)[1] in schemas, ref


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []
