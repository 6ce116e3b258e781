from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from orbiter_asgi import Agent, OrbiterApp, create_app, registered_agents


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_module_registry() -> Iterator[None]:
    """Tests that register on the module-level registry leave it as found."""
    before = dict(registered_agents.items())
    default = registered_agents.default_name
    yield
    registered_agents.clear()
    for name, agent in before.items():
        registered_agents.register(agent, name=name, default=name == default)


@pytest.fixture
def app() -> OrbiterApp:
    return create_app(agents=[Agent("assistant", description="Echoes you")], heartbeat_interval=0.2)


@pytest.fixture
async def client(app: OrbiterApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
