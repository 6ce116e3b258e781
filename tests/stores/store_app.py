"""The app the multi-process store tests serve: the echo agent over `$ORBITER_TEST_STORE`."""

from __future__ import annotations

import os

from orbiter_asgi import Agent, OrbiterApp, create_app


def factory() -> OrbiterApp:
    return create_app(
        agents=[Agent("assistant", model=os.environ.get("ORBITER_TEST_MODEL", "echo"))],
        store=os.environ["ORBITER_TEST_STORE"],
    )
