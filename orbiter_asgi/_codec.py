"""One JSON encoder and one typed decoder per request shape, built once.

Decoding errors become FastAPI-shaped bodies: malformed JSON (invalid UTF-8
and nesting past msgspec's recursion limit included) is a 400 with a
`detail` string; a body that does not match its struct is a 422 whose
`detail` list gives `loc` (from msgspec's `$.path`), `msg` and `type`.
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

import msgspec

from .exceptions import RequestError
from .models import ValidationErrorItem, ValidationErrorResponse

__all__ = ["Decoder", "RequestValidationError", "encode", "encoder"]

T = TypeVar("T")

encoder = msgspec.json.Encoder()
encode = encoder.encode

_PATH = re.compile(r" - at `\$(.*)`$")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`$")


class RequestValidationError(RequestError):
    """A body that does not match its struct; rendered as a 422 list."""

    status_code = 422
    code = "validation_error"

    def __init__(self, items: list[ValidationErrorItem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, i.loc))}: {i.msg}" for i in items))
        self.items = items

    def body(self) -> bytes:
        return encode(ValidationErrorResponse(self.items))


def _loc(path: str, root: str) -> list[str | int]:
    loc: list[str | int] = [root]
    for name, index in _SEGMENT.findall(path):
        loc.append(int(index) if index else name or "*")
    return loc


def validation_error(exc: msgspec.ValidationError, root: str = "body") -> RequestValidationError:
    message = str(exc)
    match = _PATH.search(message)
    loc: list[str | int] = _loc(match.group(1), root) if match else [root]
    msg = message[: match.start()] if match else message
    kind = "value_error"
    if missing := _MISSING.match(msg):
        loc.append(missing.group(1))
        msg, kind = "Field required", "missing"
    elif unknown := _UNKNOWN.match(msg):
        loc.append(unknown.group(1))
        msg, kind = "Extra inputs are not permitted", "extra_forbidden"
    elif msg.startswith("Expected `"):
        kind = "type_error"
    return RequestValidationError([ValidationErrorItem(loc=loc, msg=msg, type=kind)])


class Decoder(Generic[T]):
    """A typed JSON decoder raising `RequestError` / `RequestValidationError`."""

    __slots__ = ("_decode",)

    def __init__(self, type: type[T] | Any) -> None:
        self._decode = msgspec.json.Decoder(type).decode

    def decode(self, data: bytes | str) -> T:
        try:
            value: T = self._decode(data)
        except msgspec.ValidationError as exc:
            raise validation_error(exc) from None
        except msgspec.DecodeError as exc:
            raise RequestError(f"Malformed JSON body: {exc}") from None
        except UnicodeDecodeError:
            raise RequestError("Malformed JSON body: not valid UTF-8") from None
        except RecursionError:
            raise RequestError("Malformed JSON body: nested too deeply") from None
        return value
