"""Benchmarks: `orbiter_asgi` against FastAPI, Litestar and a bare ASGI callable.

Run `python -m benchmarks` (see `benchmarks/README.md`). Nothing here is
imported by the package or run in CI.
"""

from __future__ import annotations

__all__: list[str] = []
