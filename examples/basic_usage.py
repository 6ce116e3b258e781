"""Guide: Basic Usage."""

from orbiter_asgi import Agent, create_app, register_agent

# Create an agent
agent = Agent(
    name="assistant",
    model="openai:gpt-4o",
    instructions="You are a helpful assistant.",
)

# Register it with the server
register_agent("assistant", agent)

# Create and run the app
app = create_app()

if __name__ == "__main__":
    # Run with uvicorn
    import uvicorn

    uvicorn.run(app, host="0.0.0.0", port=8000)
