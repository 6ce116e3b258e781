"""What the persistent backends share: exact timestamps, message and metadata codecs, options.

Timestamps are stored as integer microseconds since the epoch, so the
`(created_at, id)` order of a listing and the cursors built on it compare
exactly, with no float or text-format rounding in between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from ..models import Message
from .base import utcnow

__all__ = [
    "decode_message",
    "decode_metadata",
    "encode_message",
    "encode_metadata",
    "from_micros",
    "micros",
    "split_options",
    "stamp",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_encoder = msgspec.json.Encoder()
_message = msgspec.json.Decoder(Message)
_metadata = msgspec.json.Decoder(dict[str, Any])


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def stamp(messages: Sequence[Message]) -> tuple[list[Message], datetime]:
    """The messages with `created_at` filled in where missing, and the time used."""
    now = utcnow()
    stored = [
        m if m.created_at is not None else msgspec.structs.replace(m, created_at=now)
        for m in messages
    ]
    return stored, now


def encode_message(message: Message) -> bytes:
    return _encoder.encode(message)


def decode_message(raw: bytes | str) -> Message:
    return _message.decode(raw)


def encode_metadata(metadata: Mapping[str, Any]) -> bytes:
    return _encoder.encode(metadata)


def decode_metadata(raw: bytes | str) -> dict[str, Any]:
    return _metadata.decode(raw)


def split_options(url: str, names: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The URL without the query options in `names`, and those options."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in names:
            ours[key] = value
        else:
            rest.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), ours
