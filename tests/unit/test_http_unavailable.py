"""send and status answer 503 JSON (never an HTML 500) when the state store is unavailable.

The outage is injected: an emulator cannot produce a quick ServiceUnavailable (a client pointed at a
dead emulator retries for minutes), so a stand-in Firestore client that raises is used for this fault only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import ServiceUnavailable
from test_send_api import ENV as SEND_ENV

from sendit.app import runtime
from sendit.app.context import Context
from sendit.clients import Clients
from sendit.config import Settings

REPO = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in SEND_ENV.items() if k != "SENDIT_SECRET_KEY"}  # status/send hold no key


class _DownFirestore:
    def collection(self, *_: Any, **__: Any) -> Any:
        raise ServiceUnavailable("firestore down for MRN7734981")  # text must not reach the answer


@pytest.fixture
def client_for(monkeypatch: pytest.MonkeyPatch) -> Any:
    from functions_framework import create_app

    clients = Clients("unit-project")
    clients._cache["firestore"] = _DownFirestore()
    context = Context(settings=Settings.from_env(ENV, require_key=False), clients=clients)
    monkeypatch.setattr(runtime, "_context", context)
    return lambda target: create_app(target, str(REPO / "functions" / "main.py"), "http").test_client()


@pytest.mark.parametrize(
    ("target", "method", "path"),
    [("send", "post", "/"), ("status", "get", "/batches"), ("status", "get", "/batches/abc")],
)
def test_state_store_outage_is_a_json_503(client_for: Any, target: str, method: str, path: str) -> None:
    response = getattr(client_for(target), method)(path, headers={"Accept": "application/json"})
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == 503 and "try again" in body["error"]
    assert "MRN7734981" not in response.get_data(as_text=True)
