"""Fixtures for the de-identification engine tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MESSAGELEVEL", "QUIET")  # deid's own logger (used by the differential tests)
sys.path.insert(0, str(Path(__file__).parent))  # deid_factory

from deid_factory import KEY, header_only_recipe

from sendit.deid.engine import Engine


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine(secret_key=KEY)


@pytest.fixture(scope="session")
def header_recipe(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The default recipe's header actions without its filters."""
    return header_only_recipe(tmp_path_factory.mktemp("recipe") / "deid.header-only")
