"""`python -m benchmarks.listing`: `GET /sessions` latency over a million sessions.

    python -m benchmarks.listing                       # SQLite and Postgres, 1,000,000 sessions
    python -m benchmarks.listing --stores sqlite --sessions 200000 --requests 300

Per store: the store is opened once through `open_store`, so its own
migrations make the schema, then `--sessions` rows are written straight into
its `sessions` table in bulk (one SQLite transaction; Postgres `COPY`), in
the format the store writes them (integer microseconds, metadata as JSON
text; for Postgres the column types are read from the catalog). A real
uvicorn then serves that store, and each query shape is asked `--requests`
times, one at a time over one keep-alive connection, from this process
pinned to the load generator's CPU. Reported: p50 and p99 latency per shape,
as the client sees it (the client's own share included: about 0.2 ms).

Shapes: the first page (`?limit=20`), the page 10 pages deep (its cursor
found by walking), the page in the middle of the million (a cursor made with
`encode_cursor`), and the same three with `agent_name=writer`, an agent of
5% of the sessions. Target: p99 ≤ 5 ms on each store. The Postgres cluster
is a throwaway one (see `services.py`); a fill plus measure stays within
about three minutes per store.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from .servers import ROOT, TARGETS, client_cpus, start_server

__all__ = ["main"]

_AGENTS = ["assistant"] * 16 + ["researcher"] * 3 + ["writer"]  # writer: 5% of sessions
_FILTERED = "writer"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_START = int((datetime(2026, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds()) * 1_000_000


@dataclass
class Row:
    id: str
    agent_name: str
    created_at: int  # microseconds since the epoch, as the stores keep time


def _rows(n: int) -> Iterator[Row]:
    """`n` sessions, one millisecond apart, ids random hex as `new_session_id` makes them."""
    rng = random.Random(20260101)
    for i in range(n):
        yield Row(f"{rng.getrandbits(128):032x}", _AGENTS[i % len(_AGENTS)], _START + i * 1000)


def _row_at(n: int, index: int) -> Row:
    """The `index`-th row `_rows(n)` yields, without keeping the others."""
    for i, row in enumerate(_rows(n)):
        if i == index:
            return row
    raise IndexError(index)


# --- filling ----------------------------------------------------------------------


async def _migrate(url: str) -> str:
    """Open the store once so that its migrations make the schema; one session through its API.

    Returns the Postgres schema its tables are in (the store's `schema`).
    """
    from orbiter_asgi.stores import open_store

    store = open_store(url)
    try:
        await store.create(session_id="listing-probe", agent_name="probe")
        await store.delete("listing-probe")
    finally:
        await store.aclose()
    return str(getattr(store, "schema", "public"))


def _fill_sqlite(path: str, n: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB: the random-id primary key fits
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO sessions (id, agent_name, title, metadata, message_count, created_at, updated_at) "
            "VALUES (?, ?, '', '{}', 0, ?, ?)",
            ((r.id, r.agent_name, r.created_at, r.created_at) for r in _rows(n)),
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()


def _postgres_value(column: str, data_type: str, row: Row) -> object:
    """`row`'s value of `column`, in the column's type (the store keeps JSON and titles as bytea)."""
    value: object
    if column in ("created_at", "updated_at"):
        if data_type.startswith("timestamp"):
            return _EPOCH + timedelta(microseconds=row.created_at)
        return row.created_at
    if column == "message_count":
        return 0
    value = {"id": row.id, "agent_name": row.agent_name, "metadata": "{}", "title": ""}[column]
    return value.encode() if data_type == "bytea" and isinstance(value, str) else value


def _fill_postgres(url: str, schema: str, n: int) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, column_default IS NOT NULL OR is_nullable = 'YES' "
            "FROM information_schema.columns "
            "WHERE table_name = 'sessions' AND table_schema = %s ORDER BY ordinal_position",
            (schema,),
        ).fetchall()
        if not columns:
            raise RuntimeError("the Postgres store made no `sessions` table")
        known = {"id", "agent_name", "title", "metadata", "message_count", "created_at", "updated_at"}
        unknown = [name for name, _, optional in columns if name not in known and not optional]
        if unknown:
            raise RuntimeError(f"sessions has required columns this filler does not know: {unknown}")
        used = [(name, kind) for name, kind, _ in columns if name in known]
        table = sql.Identifier(schema, "sessions")
        names = sql.SQL(", ").join(sql.Identifier(name) for name, _ in used)
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(table, names)
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            for row in _rows(n):
                copy.write_row([_postgres_value(name, kind, row) for name, kind in used])
        # as a table long in use would be: hint bits set, visibility map made, statistics
        # fresh, and no autovacuum of a million new rows running during the measurement
        conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(table))
        conn.execute("CHECKPOINT")  # the fill's dirty pages written now, not while measuring


# --- measuring ----------------------------------------------------------------------


@dataclass
class Shape:
    name: str
    params: dict[str, str]


def _cursor_after_pages(client: httpx.Client, params: dict[str, str], pages: int) -> str:
    cursor = ""
    for _ in range(pages):
        response = client.get("/sessions", params={**params, **({"cursor": cursor} if cursor else {})})
        response.raise_for_status()
        cursor = response.headers["x-next-cursor"]
    return cursor


def _shapes(client: httpx.Client, n: int) -> list[Shape]:
    from orbiter_asgi.stores.base import encode_cursor

    base = {"limit": "20"}
    agent = {**base, "agent_name": _FILTERED}
    middle = _row_at(n, n // 2)
    middle_cursor = encode_cursor(_EPOCH + timedelta(microseconds=middle.created_at), middle.id)
    # the middle writer row: rows are written in agent cycles, so n // 2 rounded to a writer row
    writer_index = (n // 2) - (n // 2) % len(_AGENTS) + _AGENTS.index(_FILTERED)
    writer = _row_at(n, writer_index)
    writer_cursor = encode_cursor(_EPOCH + timedelta(microseconds=writer.created_at), writer.id)
    agent_deep = _cursor_after_pages(client, agent, 10)
    return [
        Shape("first page", base),
        Shape("10 pages deep", {**base, "cursor": _cursor_after_pages(client, base, 10)}),
        Shape("middle (cursor)", {**base, "cursor": middle_cursor}),
        Shape(f"agent_name={_FILTERED}, first page", agent),
        Shape(f"agent_name={_FILTERED}, 10 pages deep", {**agent, "cursor": agent_deep}),
        Shape(f"agent_name={_FILTERED}, middle", {**agent, "cursor": writer_cursor}),
    ]


def _check(client: httpx.Client, n: int) -> None:
    """The newest row we wrote is the listing's first, readable as a session: the format is right."""
    newest = _row_at(n, n - 1)
    response = client.get("/sessions", params={"limit": "1"})
    response.raise_for_status()
    items = response.json()
    if not items or items[0]["id"] != newest.id:
        raise RuntimeError(f"the listing starts with {items[:1]}, not the newest row written ({newest.id})")
    client.get(f"/sessions/{newest.id}").raise_for_status()


def _latencies(client: httpx.Client, shape: Shape, requests: int) -> list[float]:
    for _ in range(min(50, requests)):  # warm up: the server's code and the store's pages
        client.get("/sessions", params=shape.params).raise_for_status()
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get("/sessions", params=shape.params)
        timings.append(time.perf_counter() - started)
        if response.status_code != 200 or len(response.json()) != 20:
            raise RuntimeError(f"{shape.name}: {response.status_code} {response.text[:200]}")
    return timings


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@contextlib.contextmanager
def _store_url(store: str, workdir: Path) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{workdir / 'listing.db'}"
    elif store == "postgres":
        from orbiter_asgi.stores import STORES

        from .services import postgres_server

        if "postgresql" not in STORES and "postgres" not in STORES:
            raise RuntimeError("this orbiter_asgi has no Postgres store (postgresql://)")
        with postgres_server(shared_buffers="256MB") as service:
            yield service.url
    else:
        raise ValueError(f"unknown store {store!r}")


def _measure_store(store: str, args: argparse.Namespace, log_dir: Path) -> list[str]:
    import asyncio

    rows: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="orbiter-bench-listing-") as tree,
        _store_url(store, Path(tree)) as url,
    ):
        started = time.monotonic()
        schema = asyncio.run(_migrate(url))
        if store == "sqlite":
            _fill_sqlite(url.partition(":///")[2], args.sessions)
        else:
            _fill_postgres(url, schema, args.sessions)
        fill = time.monotonic() - started
        print(f"{store}: {args.sessions:,} sessions written in {fill:.1f} s", flush=True)
        with (
            start_server(TARGETS[0], "uvicorn", log_dir, {"BENCH_STORE": url}, f"-listing-{store}") as server,
            httpx.Client(base_url=server.base_url, timeout=30) as client,
        ):
            _check(client, args.sessions)
            for shape in _shapes(client, args.sessions):
                timings = _latencies(client, shape, args.requests)
                p50, p99 = _percentile(timings, 0.5) * 1000, _percentile(timings, 0.99) * 1000
                mean = statistics.fmean(timings) * 1000
                print(f"  {store:8} {shape.name:34} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms", flush=True)
                rows.append(
                    f"| {store} | {shape.name} | {p50:.2f} | {p99:.2f} | {mean:.2f} | "
                    f"{'yes' if p99 <= 5 else '**no**'} |"
                )
        print(f"{store}: done in {time.monotonic() - started:.0f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.listing", description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per query shape")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "last-listing.md")
    args = parser.parse_args(argv)
    cpus = client_cpus()
    if cpus:  # the server has the first core to itself
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    log_dir = ROOT / "benchmarks" / "logs"
    log_dir.mkdir(exist_ok=True)
    rows: list[str] = []
    skipped: list[str] = []
    for store in args.stores.split(","):
        try:
            rows += _measure_store(store, args, log_dir)
        except RuntimeError as exc:
            print(f"{store}: skipped: {exc}", file=sys.stderr, flush=True)
            skipped.append(f"- {store}: skipped ({exc})")
    table = "\n".join(
        [
            f"## GET /sessions over {args.sessions:,} sessions, {args.requests} requests per shape, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            "| store | query (limit=20) | p50 ms | p99 ms | mean ms | p99 ≤ 5 ms |",
            "|---|---|---:|---:|---:|---|",
            *rows,
            *(["", *skipped] if skipped else []),
        ]
    )
    print()
    print(table)
    args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
