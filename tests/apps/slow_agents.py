"""A target file for `orbiter-asgi serve`: echo agents, one slowed down."""

from orbiter_asgi import Agent

agents = [
    Agent("assistant", description="fast echo"),
    Agent("slow", model="echo?delay=0.05", description="one word every 50 ms"),
]
