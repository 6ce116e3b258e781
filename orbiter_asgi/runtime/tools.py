"""Tools: plain Python functions the model may call.

The JSON schema comes from the type hints (through msgspec) and the
docstring: its first paragraph describes the tool, an `Args:` section
(Google style) or `:param name:` lines (Sphinx style) describe the
parameters. Arguments from the model are validated against the
same types before the call.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, get_type_hints, overload

import anyio.to_thread
import msgspec

from ..providers.base import ToolSpec

__all__ = ["Tool", "ToolArgumentError", "tool"]

F = TypeVar("F", bound=Callable[..., Any])

_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+):\s*(.*)$")


class ToolArgumentError(ValueError):
    """The model's arguments do not match the tool's signature."""


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    summary_lines: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        if match := _SPHINX_PARAM.match(stripped):
            section, current = "sphinx", match.group(1)
            params[current] = match.group(2).strip()
            continue
        if stripped.startswith(":") and section in (None, "sphinx"):
            section, current = "other", None  # :returns:, :raises: ...
            continue
        if stripped.rstrip(":").lower() in ("args", "arguments", "parameters", "params"):
            section, current = "args", None
            continue
        if stripped.rstrip(":").lower() in ("returns", "raises", "yields", "example", "examples"):
            section, current = "other", None
            continue
        if section is None:
            summary_lines.append(line)
        elif section == "sphinx":
            if current and stripped:
                params[current] = f"{params[current]} {stripped}".strip()
        elif section == "args":
            match = _ARG_LINE.match(line)
            if match and not line.startswith(" " * 8):
                current = match.group(1).lstrip("*")
                params[current] = match.group(2).strip()
            elif current and stripped:
                params[current] = f"{params[current]} {stripped}".strip()
    summary = "\n".join(summary_lines).strip().split("\n\n")[0].replace("\n", " ")
    return summary, params


class Tool:
    """A callable with the schema the model sees.

    ```python
    def get_weather(city: str, unit: str = "celsius") -> str:
        '''Current weather of a city.

        Args:
            city: The city name.
        '''
    Agent(..., tools=[get_weather])
    ```
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        self.func = func
        self.name = name or getattr(func, "__name__", None) or type(func).__name__
        if not _TOOL_NAME.match(self.name):
            # both APIs reject the whole request over one bad tool name; fail at startup instead
            raise ValueError(f"Tool name {self.name!r} must match {_TOOL_NAME.pattern}")
        summary, param_docs = _parse_docstring(func.__doc__ or "")
        self.description = description if description is not None else summary
        self.is_async = inspect.iscoroutinefunction(func)
        hints = get_type_hints(func)
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for param in inspect.signature(func).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            annotation = hints.get(param.name, Any)
            if param.default is param.empty:
                fields.append((param.name, annotation))
            else:
                fields.append((param.name, annotation, param.default))
        self._arguments = msgspec.defstruct(
            f"{self.name}_arguments", fields, kw_only=True, forbid_unknown_fields=True
        )
        schema = msgspec.json.schema(self._arguments)
        body = schema["$defs"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
        defs = {k: v for k, v in schema.get("$defs", {}).items() if k != self._arguments.__name__}
        parameters: dict[str, Any] = {
            "type": "object",
            "properties": body.get("properties", {}),
            "required": body.get("required", []),
        }
        for param_name, text in param_docs.items():
            if param_name in parameters["properties"]:
                parameters["properties"][param_name].setdefault("description", text)
        if defs:
            parameters["$defs"] = defs
        self.spec = ToolSpec(name=self.name, description=self.description, parameters=parameters)

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments converted to the declared types, or `ToolArgumentError`."""
        try:
            value = msgspec.convert(arguments, self._arguments, strict=False)
        except msgspec.ValidationError as exc:
            raise ToolArgumentError(f"Invalid arguments for {self.name}: {exc}") from None
        return {f: getattr(value, f) for f in value.__struct_fields__}

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        kwargs = self.validate(arguments)
        if self.is_async:
            result: Any = await self.func(**kwargs)
            return result
        # abandon_on_cancel: a cancelled run returns at once; the thread finishes alone
        return await anyio.to_thread.run_sync(
            lambda: self.func(**kwargs), abandon_on_cancel=True
        )


@overload
def tool(func: F, /) -> F: ...
@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[[F], F]: ...


def tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Any:
    """Mark a function as a tool, optionally renaming or describing it.

    `@tool` and `@tool(name=..., description=...)` both work; the function
    itself is returned unchanged, with its `Tool` attached.
    """

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f.__orbiter_tool__ = Tool(f, name=name, description=description)  # type: ignore[attr-defined]
        return f

    return mark(func) if func is not None else mark


def as_tool(obj: Tool | Callable[..., Any] | Callable[..., Awaitable[Any]]) -> Tool:
    if isinstance(obj, Tool):
        return obj
    marked = getattr(obj, "__orbiter_tool__", None)
    return marked if isinstance(marked, Tool) else Tool(obj)
