"""Fixtures for the de-identification engine tests."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MESSAGELEVEL", "QUIET")  # deid's own logger (used by the differential tests)
sys.path.insert(0, str(Path(__file__).parent))  # the local factory module

from sendit.deid.engine import Engine

KEY = b"unit-test-secret-key-0123456789"


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine(secret_key=KEY)


@pytest.fixture(scope="session")
def any_modality_engine() -> Engine:
    return Engine(secret_key=KEY, allowed_modalities=None)


def run(engine: Engine, data: bytes):
    """Process bytes; return (outcome, output bytes)."""
    out = io.BytesIO()
    outcome = engine.process(io.BytesIO(data), out)
    return outcome, out.getvalue()
