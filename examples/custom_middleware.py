"""Guide: Custom Middleware (authentication)."""

from orbiter_asgi import JSONResponse, Request, create_app

app = create_app()

@app.middleware("http")
async def auth_middleware(request: Request, call_next):
    api_key = request.headers.get("X-API-Key")
    if not api_key:
        return JSONResponse(status_code=401, content={"error": "Missing API key"})
    response = await call_next(request)
    return response
