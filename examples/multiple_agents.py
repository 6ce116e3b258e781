"""Guide: Multiple Agent Deployment."""

from orbiter_asgi import Agent, create_app, register_agent

general_agent = Agent(name="general", instructions="You help with anything.")
coding_agent = Agent(name="coder", instructions="You write code.")
data_agent = Agent(name="analyst", instructions="You analyse data.")

# Register specialized agents
register_agent("general", general_agent)
register_agent("coder", coding_agent)
register_agent("analyst", data_agent)

app = create_app()
# All agents accessible via /chat with different agent_name values
