"""The public surface: every module's `__all__` is sorted and complete."""

from __future__ import annotations

import importlib
import pkgutil

import orbiter_asgi


def test_top_level_all_is_sorted_and_importable() -> None:
    names = orbiter_asgi.__all__
    assert list(names) == sorted(names)
    for name in names:
        assert getattr(orbiter_asgi, name) is not None


def test_every_module_declares_what_it_exports() -> None:
    for module_info in pkgutil.walk_packages(orbiter_asgi.__path__, "orbiter_asgi."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{module_info.name} has no __all__"
        for name in exported:
            assert hasattr(module, name), f"{module_info.name}.{name} is missing"


def test_drop_in_module_paths_mirror_the_original() -> None:
    from orbiter_asgi.agents import agent_router
    from orbiter_asgi.app import ChatRequest, ChatResponse, create_app, register_agent
    from orbiter_asgi.sessions import session_router
    from orbiter_asgi.streaming import stream_router

    assert orbiter_asgi.create_app is create_app
    assert orbiter_asgi.register_agent is register_agent
    assert {agent_router, session_router, stream_router} == {
        orbiter_asgi.agent_router,
        orbiter_asgi.session_router,
        orbiter_asgi.stream_router,
    }
    assert ChatRequest.__struct_fields__[:4] == ("input", "agent_name", "session_id", "stream")
    # the original's fields, in its order, then the run id
    assert ChatResponse.__struct_fields__ == (
        "output",
        "agent_name",
        "session_id",
        "steps",
        "usage",
        "run_id",
    )
