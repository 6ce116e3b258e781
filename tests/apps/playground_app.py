"""A target file for `orbiter-asgi serve` in the playground's browser tests: a plain
echo agent and one that says a word every 50 ms, to watch an answer stream."""

from orbiter_asgi import Agent

agents = [
    Agent("assistant", description="echo"),
    Agent("slow", model="echo?delay=0.05", description="one word every 50 ms"),
]
