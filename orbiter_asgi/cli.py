"""`orbiter-asgi serve [TARGET]`: run agents under uvicorn or hypercorn.

TARGET is `module:attr` or a `.py` file (optionally `file.py:attr`) naming an
app, an agent, a list or dict of agents, or a module that registered agents
with `register_agent`. Without TARGET a demo `assistant` is served: OpenAI's
`gpt-4o-mini` when `OPENAI_API_KEY` is set, else the offline `echo` model.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp

from ._logging import JSONLines, uvicorn_log_config
from ._version import __version__

if TYPE_CHECKING:
    from .app import OrbiterApp

__all__ = ["build_app", "load_target", "main"]

DEFAULT_STORE = "sqlite:///orbiter.db"
_TARGET_ENV = "ORBITER_TARGET"
_STORE_ENV = "ORBITER_STORE"
_OPTIONS_ENV = "ORBITER_SERVE_OPTIONS"  # the flags below, for worker processes
_SHUTDOWN_MARGIN = 2.0  # seconds the server waits past the grace period for streams to end

# `serve` flags that become `create_app` keywords: (flag, type, help)
_LIMIT_FLAGS: list[tuple[str, type, str]] = [
    ("--max-body-size", int, "largest request body in bytes (default 1048576)"),
    ("--max-input-length", int, "longest input in characters (default 100000)"),
    ("--max-ws-message-size", int, "largest WebSocket message in bytes (default 1048576)"),
    ("--max-session-id-length", int, "longest session id (default 128)"),
    ("--max-page-size", int, "largest ?limit= of GET /sessions (default 100)"),
    ("--max-json-depth", int, "deepest nesting of metadata and tool arguments (default 32)"),
    ("--max-concurrent-runs", int, "turns at once per worker, then 503; 0: no limit (default 1024)"),
    ("--run-timeout", float, "wall-clock seconds per turn; 0: no limit (default 300)"),
    ("--grace-period", float, "seconds running turns get after SIGTERM (default 10)"),
    ("--heartbeat-interval", float, "seconds between SSE heartbeats (default 15)"),
]


def _import_file(path: Path) -> Any:
    module_name = f"_orbiter_target_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"Cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.resolve().parent))
    spec.loader.exec_module(module)
    return module


def load_target(target: str) -> Any:
    """The object TARGET names: a module, or one attribute of it."""
    location, _, attr = target.rpartition(":") if target.count(":") == 1 else (target, "", "")
    if location.endswith(".py") or Path(location).suffix == ".py":
        path = Path(location)
        if not path.is_file():
            raise SystemExit(f"No such file: {location}")
        module = _import_file(path)
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise SystemExit(f"Cannot import {location!r}: {exc}") from None
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"{location!r} has no attribute {attr!r}") from None


def _demo_agent() -> Any:
    from .runtime import Agent

    if os.environ.get("OPENAI_API_KEY"):
        model = "openai:" + os.environ.get("ORBITER_DEMO_MODEL", "gpt-4o-mini")
    else:
        model = "echo"
    return Agent(
        name="assistant",
        model=model,
        instructions="You are a helpful assistant.",
        description="Demo agent" + (" (echo: answers with your own words)" if model == "echo" else ""),
    )


def _is_agent(obj: Any) -> bool:
    return any(callable(getattr(obj, m, None)) for m in ("stream", "run"))


def _configure(app: OrbiterApp, options: Mapping[str, Any]) -> OrbiterApp:
    """Apply the flags given on the command line to an app the target built."""
    from ._context import Limits
    from .security import APIKeyMiddleware, cors_middleware

    for name, value in options.items():
        if name in Limits.__slots__:
            setattr(app.context.limits, name, value)
    if options.get("cors_origins"):
        middleware = cors_middleware(options["cors_origins"])
        app.add_middleware(middleware.cls, *middleware.args, **middleware.kwargs)
    if options.get("api_keys"):
        app.add_middleware(APIKeyMiddleware, api_keys=options["api_keys"])
        app.secured = True
    app._openapi = None
    return app


_NULLABLE = ("max_concurrent_runs", "run_timeout")


def build_app(target: str | None, store: str | None, options: Mapping[str, Any] | None = None) -> ASGIApp:
    """The ASGI app to serve for TARGET (or the demo) with `store`.

    `options` are `create_app` keywords (limits, `api_keys`, `cors_origins`);
    an app the target built itself gets them applied on top.
    """
    from .app import OrbiterApp, create_app
    from .registry import registered_agents

    options = dict(options or {})
    if target is None:
        return create_app(agents=[_demo_agent()], store=store, **options)
    obj = load_target(target)
    if isinstance(obj, OrbiterApp):
        return _configure(obj, options)
    if _is_agent(obj):
        return create_app(agents=[obj], store=store, **options)
    if isinstance(obj, Mapping) or (isinstance(obj, Sequence) and not isinstance(obj, str)):
        return create_app(agents=obj, store=store, **options)
    if callable(obj) and not isinstance(obj, type(sys)):
        return obj  # type: ignore[no-any-return]  # any other ASGI app
    # a module: its `app` if it has one, else whatever it registered
    app = getattr(obj, "app", None)
    if app is not None:
        return _configure(app, options) if isinstance(app, OrbiterApp) else app
    if not registered_agents:
        raise SystemExit(f"{target!r} holds no app and registered no agents")
    return create_app(store=store, **options)


def _factory() -> ASGIApp:
    """What each server worker imports: the app for the environment's TARGET."""
    options = json.loads(os.environ.get(_OPTIONS_ENV) or "{}")
    return build_app(os.environ.get(_TARGET_ENV) or None, os.environ.get(_STORE_ENV) or None, options)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The `create_app` keywords the flags ask for (only those given)."""
    options: dict[str, Any] = {}
    for flag, _, _ in _LIMIT_FLAGS:
        name = flag[2:].replace("-", "_")
        value = getattr(args, name)
        if value is not None:
            options[name] = (value or None) if name in _NULLABLE else value
    if args.api_key:
        options["api_keys"] = args.api_key
    if args.cors_origin:
        options["cors_origins"] = args.cors_origin
    if args.no_metrics:
        options["metrics"] = False
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orbiter-asgi", description="Serve LLM agents over HTTP.")
    parser.add_argument("--version", action="version", version=f"orbiter-asgi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve agents over HTTP")
    serve.add_argument("target", nargs="?", help="module:attr or file.py[:attr]; default: a demo agent")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--store",
        default=os.environ.get(_STORE_ENV) or DEFAULT_STORE,
        help=f"session store URL (default: $ORBITER_STORE or {DEFAULT_STORE})",
    )
    serve.add_argument("--workers", type=int, default=1, help="worker processes (uvicorn)")
    serve.add_argument("--server", choices=["uvicorn", "hypercorn"], default="uvicorn")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--no-access-log", action="store_true")
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object a line, the access log and the run log included",
    )
    for flag, kind, text in _LIMIT_FLAGS:
        serve.add_argument(flag, type=kind, default=None, help=text)
    serve.add_argument(
        "--api-key",
        action="append",
        help="require this key (Bearer or X-API-Key); repeatable; default: $ORBITER_API_KEYS",
    )
    serve.add_argument("--cors-origin", action="append", help="allow this CORS origin; repeatable")
    serve.add_argument(
        "--no-metrics",
        action="store_true",
        help="no GET /metrics, even with prometheus-client installed (an app the target "
        "built itself: create_app(metrics=False))",
    )
    return parser


def _describe(app: ASGIApp, args: argparse.Namespace) -> None:
    from .app import OrbiterApp

    print(f"orbiter-asgi {__version__} on http://{args.host}:{args.port}  (store: {args.store})")
    if isinstance(app, OrbiterApp):
        for entry in app.agents.entries():
            print(f"  agent {entry.name!r}: {entry.model}")
    sys.stdout.flush()


def _serve(args: argparse.Namespace) -> None:
    os.environ[_STORE_ENV] = args.store
    if args.target:
        os.environ[_TARGET_ENV] = args.target
    else:
        os.environ.pop(_TARGET_ENV, None)
    os.environ[_OPTIONS_ENV] = json.dumps(_options(args))
    app = _factory()  # fail fast, in this process, on a bad target
    _describe(app, args)
    if args.server == "hypercorn":
        _serve_hypercorn(app, args)
        return
    import uvicorn

    # Turns get the grace period (the app drains on SIGTERM), their streams a
    # moment more to send the final `error` event; then uvicorn cancels.
    shutdown_timeout = math.ceil(_grace(app, args) + _SHUTDOWN_MARGIN)
    if args.workers > 1:
        uvicorn.run(
            "orbiter_asgi.cli:_factory",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            log_config=uvicorn_log_config(args.log_level, args.log_format),
            access_log=not args.no_access_log,
            timeout_graceful_shutdown=shutdown_timeout,
        )
    else:
        uvicorn.run(
            app, host=args.host, port=args.port, log_level=args.log_level,
            log_config=uvicorn_log_config(args.log_level, args.log_format),
            access_log=not args.no_access_log, timeout_graceful_shutdown=shutdown_timeout,
        )


def _grace(app: ASGIApp, args: argparse.Namespace) -> float:
    from .app import OrbiterApp

    if args.grace_period is not None:
        return float(args.grace_period)
    if isinstance(app, OrbiterApp):
        return app.context.limits.grace_period
    return 10.0


def _serve_hypercorn(app: ASGIApp, args: argparse.Namespace) -> None:
    try:
        import hypercorn.asyncio
        from hypercorn.config import Config
    except ImportError:
        raise SystemExit("hypercorn is not installed: pip install 'orbiter-asgi[hypercorn]'") from None
    import asyncio

    # hypercorn keeps its own log format; the run log follows `--log-format`
    handler = logging.StreamHandler()
    handler.setFormatter(JSONLines() if args.log_format == "json" else logging.Formatter("%(message)s"))
    runs_logger = logging.getLogger("orbiter_asgi")
    runs_logger.addHandler(handler)
    runs_logger.setLevel(args.log_level.upper())
    runs_logger.propagate = False

    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.loglevel = args.log_level.upper()
    config.workers = 1
    config.graceful_timeout = _grace(app, args) + _SHUTDOWN_MARGIN
    if not args.no_access_log:
        config.accesslog = "-"
    asyncio.run(hypercorn.asyncio.serve(app, config))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        _serve(args)
