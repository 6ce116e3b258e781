"""Logging for `orbiter-asgi serve`: the server's logs and the run log, as text or JSON lines.

`--log-format json` writes one JSON object a line to the log stream, so a
log shipper needs no parsing rules: `time`, `level`, `logger`, `message`,
and the fields the record carries, the run log's (`orbiter_asgi.runs`) and
uvicorn's access log's (`client`, `method`, `path`, `http_version`, `status`).
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = ["JSONLines", "uvicorn_log_config"]

_encode = msgspec.json.Encoder(enc_hook=str).encode
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JSONLines(logging.Formatter):
    """A record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        run = getattr(record, "run", None)
        if isinstance(run, dict):
            line.update(run)
        elif record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            line.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line).decode()


def uvicorn_log_config(level: str, log_format: str) -> dict[str, Any]:
    """uvicorn's logging config, with the run log added at `level`, in `log_format` (text or json)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["orbiter_asgi"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    if log_format == "json":
        for formatter in config["formatters"].values():
            formatter.clear()
            formatter["()"] = "orbiter_asgi._logging.JSONLines"
    return config
