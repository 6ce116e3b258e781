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
    }
    assert schemas["TextEvent"]["properties"]["type"] == {"enum": ["text"]}
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
