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
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from ._version import __version__

__all__ = ["build_app", "load_target", "main"]

DEFAULT_STORE = "sqlite:///orbiter.db"
_TARGET_ENV = "ORBITER_TARGET"
_STORE_ENV = "ORBITER_STORE"


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


def build_app(target: str | None, store: str | None) -> ASGIApp:
    """The ASGI app to serve for TARGET (or the demo) with `store`."""
    from .app import OrbiterApp, create_app
    from .registry import registered_agents

    if target is None:
        return create_app(agents=[_demo_agent()], store=store)
    obj = load_target(target)
    if isinstance(obj, OrbiterApp):
        return obj
    if _is_agent(obj):
        return create_app(agents=[obj], store=store)
    if isinstance(obj, Mapping) or (isinstance(obj, Sequence) and not isinstance(obj, str)):
        return create_app(agents=obj, store=store)
    if callable(obj) and not isinstance(obj, type(sys)):
        return obj  # type: ignore[no-any-return]  # any other ASGI app
    # a module: its `app` if it has one, else whatever it registered
    app = getattr(obj, "app", None)
    if app is not None:
        return app  # type: ignore[no-any-return]
    if not registered_agents:
        raise SystemExit(f"{target!r} holds no app and registered no agents")
    return create_app(store=store)


def _factory() -> ASGIApp:
    """What each server worker imports: the app for the environment's TARGET."""
    return build_app(os.environ.get(_TARGET_ENV) or None, os.environ.get(_STORE_ENV) or None)


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
    app = _factory()  # fail fast, in this process, on a bad target
    _describe(app, args)
    if args.server == "hypercorn":
        _serve_hypercorn(app, args)
        return
    import uvicorn

    if args.workers > 1:
        uvicorn.run(
            "orbiter_asgi.cli:_factory",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=not args.no_access_log,
        )
    else:
        uvicorn.run(
            app, host=args.host, port=args.port, log_level=args.log_level,
            access_log=not args.no_access_log,
        )


def _serve_hypercorn(app: ASGIApp, args: argparse.Namespace) -> None:
    try:
        import hypercorn.asyncio
        from hypercorn.config import Config
    except ImportError:
        raise SystemExit("hypercorn is not installed: pip install 'orbiter-asgi[hypercorn]'") from None
    import asyncio

    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.loglevel = args.log_level.upper()
    config.workers = 1
    if not args.no_access_log:
        config.accesslog = "-"
    asyncio.run(hypercorn.asyncio.serve(app, config))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        _serve(args)
