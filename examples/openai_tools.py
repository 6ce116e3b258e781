"""An OpenAI agent with two tools: a (made-up) weather lookup and a calculator.

    export OPENAI_API_KEY=sk-...
    python examples/openai_tools.py
    curl -s localhost:8000/chat -H 'content-type: application/json' \
         -d '{"input": "Is it warmer in Paris or Oslo, by how many degrees?"}'
    curl -N 'localhost:8000/stream?input=What%20is%2017%20*%2023%3F'

Any OpenAI-compatible server works too: set OPENAI_BASE_URL (vLLM, LM Studio,
llama.cpp...) and change the model name.
"""

from __future__ import annotations

import ast
import operator
from typing import Literal

from orbiter_asgi import Agent, create_app, tool

_TEMPERATURES = {"paris": 21, "oslo": 9, "tokyo": 26, "lima": 18}


async def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Current weather of a city.

    Args:
        city: The city name, e.g. "Paris".
        unit: The temperature unit.
    """
    celsius = _TEMPERATURES.get(city.lower())
    if celsius is None:
        raise ValueError(f"No weather data for {city!r}")  # goes back to the model as an error
    value = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city, "temperature": value, "unit": unit, "sky": "clear"}


_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError("Only numbers and + - * / // % ** are allowed")


@tool(name="calculate", description="Evaluate an arithmetic expression exactly.")
def calculator(expression: str) -> float:
    """A sync tool: it runs in a worker thread, so it may block."""
    return _evaluate(ast.parse(expression, mode="eval").body)


agent = Agent(
    name="assistant",
    model="openai:gpt-4o",
    instructions="Answer briefly. Use the tools for weather and arithmetic; never guess numbers.",
    tools=[get_weather, calculator],
    max_steps=6,
)

app = create_app(agents=[agent])

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
