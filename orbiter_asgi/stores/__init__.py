"""Session stores, chosen by URL: `memory://`, `sqlite:///path.db`, `redis://host:port/db`,
`postgresql://user:pass@host:port/db` (or `postgres://`).

Backends are import strings loaded only when their scheme is used, so the
`redis` package is needed only by those who pick Redis, and psycopg only
by those who pick PostgreSQL.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Page, SessionStore
from .memory import MemoryStore

__all__ = ["STORES", "MemoryStore", "Page", "SessionStore", "open_store"]

STORES: dict[str, str] = {
    "memory": "orbiter_asgi.stores.memory:MemoryStore",
    "sqlite": "orbiter_asgi.stores.sqlite:SQLiteStore",
    "redis": "orbiter_asgi.stores.redis:RedisStore",
    "rediss": "orbiter_asgi.stores.redis:RedisStore",
    "postgresql": "orbiter_asgi.stores.postgres:PostgresStore",
    "postgres": "orbiter_asgi.stores.postgres:PostgresStore",
}


def open_store(url: str, **options: Any) -> SessionStore:
    """The store a URL names. Backends other than memory take the URL itself."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in STORES:
        known = ", ".join(f"{s}://" for s in STORES)
        raise ValueError(f"Unknown store URL {url!r}; use one of {known}")
    module_name, _, attr = STORES[scheme].partition(":")
    store_class = getattr(importlib.import_module(module_name), attr)
    if scheme == "memory":
        store: SessionStore = store_class(**options)
    else:
        store = store_class(url, **options)
    return store
