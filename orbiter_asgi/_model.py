"""`Model`: the base of every wire struct, with pydantic's everyday methods.

Users of the original package call `model_dump()`, `model_validate()` and
friends on its pydantic models. Here they are thin methods over msgspec, so
the structs keep msgspec's speed on the request path (which never calls
them) and code written against pydantic keeps working.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypeVar
from uuid import UUID

import msgspec

__all__ = ["Model"]

M = TypeVar("M", bound="Model")

_encoder = msgspec.json.Encoder()
# what `model_dump()` (python mode) leaves as objects, as pydantic does
_PYTHON_TYPES = (datetime, date, time, timedelta, UUID, Decimal, bytes)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


class Model(msgspec.Struct):
    """A msgspec struct that also answers pydantic's `model_*` methods.

    ```python
    response = ChatResponse(output="hi", agent_name="assistant")
    response.model_dump()                      # {"output": "hi", ...}
    ChatResponse.model_validate_json(raw)      # msgspec decodes and validates
    ```

    Validation errors are `msgspec.ValidationError`, not pydantic's.
    """

    _decoders: ClassVar[dict[type[Any], msgspec.json.Decoder[Any]]] = {}

    def model_dump(
        self, *, mode: Literal["python", "json"] = "python", exclude_none: bool = False
    ) -> dict[str, Any]:
        """The struct as a dict, nested structs included; `mode="json"` gives
        only JSON types (timestamps as RFC 3339 strings)."""
        builtin_types = _PYTHON_TYPES if mode == "python" else ()
        value: dict[str, Any] = msgspec.to_builtins(self, builtin_types=builtin_types)
        return _without_none(value) if exclude_none else value

    def model_dump_json(self, *, exclude_none: bool = False) -> str:
        if exclude_none:
            return _encoder.encode(self.model_dump(mode="json", exclude_none=True)).decode()
        return _encoder.encode(self).decode()

    def model_copy(self: M, *, update: dict[str, Any] | None = None) -> M:
        return msgspec.structs.replace(self, **(update or {}))

    @classmethod
    def model_validate(cls: type[M], obj: Any) -> M:
        """`obj` (a dict, or an object with the fields as attributes) as this struct."""
        if isinstance(obj, cls):
            return obj
        return msgspec.convert(obj, cls, from_attributes=not isinstance(obj, dict))

    @classmethod
    def model_validate_json(cls: type[M], data: str | bytes) -> M:
        decoder = Model._decoders.get(cls)
        if decoder is None:
            decoder = Model._decoders[cls] = msgspec.json.Decoder(cls)
        value: M = decoder.decode(data)
        return value

    @classmethod
    def model_json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of this struct (`$defs` for the nested ones)."""
        return msgspec.json.schema(cls)
