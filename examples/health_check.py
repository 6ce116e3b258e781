"""Guide: Health Check."""

from orbiter_asgi import create_app, registered_agents

app = create_app()

@app.get("/health")
async def health():
    return {"status": "ok", "agents": len(registered_agents)}
