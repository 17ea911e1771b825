"""Fixtures and hooks of the reliability suite (helpers: tests/support/reliability.py)."""

from __future__ import annotations

from typing import Any

import pytest
from support.phi import remember
from support.reliability import Rel


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Captured stdout/stderr/log of every reliability test (and its failure text) go to the PHI scan."""
    for name, content in report.sections:
        remember(f"{report.nodeid} {name}", content)
    if report.longrepr is not None:
        remember(f"{report.nodeid} longrepr", str(report.longrepr))


@pytest.fixture(scope="session")
def rel(stack: Any, clients: Any) -> Rel:
    from sendit.config import Settings

    return Rel(stack, clients, Settings.from_env(stack.settings_env()))
