"""The built-in agent runtime: `Agent`, tools and the run loop."""

from __future__ import annotations

from .agent import Agent, AgentResult
from .loop import AgentEvent, run_loop
from .tools import Tool, ToolArgumentError, tool

__all__ = ["Agent", "AgentEvent", "AgentResult", "Tool", "ToolArgumentError", "run_loop", "tool"]
