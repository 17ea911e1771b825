"""Shared fixtures. The local stack (four emulators + one functions-framework server per function) is
started once per test session by the ``stack`` fixture, only when a test asks for it, and stopped at the end,
right after the session's PHI scan (``support.phi``). Helpers live in ``tests/support``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MESSAGELEVEL", "QUIET")  # deid's own logger


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from sendit.local.stack import LocalStack

    workdir: Path = tmp_path_factory.mktemp("stack")
    local = LocalStack(workdir)
    saved = dict(os.environ)
    local.start()
    os.environ.update(local.settings_env())
    try:
        yield local
        # The PHI scan, once, after every test of the session (whatever their order), stack still up.
        from support import phi

        leaked = phi.scan(local)
        assert not leaked, "PHI outside the staging side: " + "; ".join(leaked)
    finally:
        local.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def clients(stack: object) -> object:
    from sendit.clients import Clients

    return Clients(stack.project)  # type: ignore[attr-defined]


@pytest.fixture
def settings(stack: object) -> object:
    from sendit.config import Settings

    return Settings.from_env(stack.settings_env())  # type: ignore[attr-defined]


@pytest.fixture
def batch_name() -> str:
    """A unique top-level folder name per test, so tests never see each other's state."""
    return f"T{uuid.uuid4().hex[:10]}"
