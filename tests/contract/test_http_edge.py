"""The HTTP edge of send and status through functions-framework, with no service behind it: methods,
paths and bodies are refused with the documented JSON statuses, and an unavailable state store is a 503.

The outage is injected: an emulator cannot produce a quick ServiceUnavailable (a client pointed at a
dead emulator retries for minutes), so a stand-in Firestore client that raises is used for this fault only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import ServiceUnavailable

from sendit.app import runtime
from sendit.app.context import Context
from sendit.clients import Clients
from sendit.config import Settings

REPO = Path(__file__).resolve().parents[2]
SEND_ENV = {
    "GOOGLE_CLOUD_PROJECT": "unit-project",
    "SENDIT_STAGING_BUCKET": "staging",
    "SENDIT_PROCESSING_BUCKET": "processing",
    "SENDIT_DESTINATION_BUCKET": "destination",
    "SENDIT_BIGQUERY_TABLE": "unit-project.sendit.dicom",
    "SENDIT_DELIVER_TOPIC": "sendit-deliver",
    "SENDIT_SECRET_KEY": "unit-test-key-0123456789",
}
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


@pytest.fixture
def function_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A functions-framework test client per HTTP entry point, with a fresh runtime context."""
    from functions_framework import create_app

    for key, value in SEND_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(runtime, "_context", None)

    def make(target: str) -> Any:
        return create_app(target, str(REPO / "functions" / "main.py"), "http").test_client()

    yield make


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405_json(function_client: Any, method: str) -> None:
    response = function_client("send").open("/", method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST" and response.is_json
    assert response.get_json() == {"error": f"method {method} not allowed: use POST", "status": 405}


def test_malformed_json_is_400_through_the_framework(function_client: Any) -> None:
    response = function_client("send").post("/", data=b"{not json", content_type="application/json")
    assert response.status_code == 400 and response.is_json
    assert "malformed JSON" in response.get_json()["error"]
    assert response.headers["Cache-Control"] == "no-store"


def test_status_rejects_writes_and_unknown_paths_through_the_framework(function_client: Any) -> None:
    client = function_client("status")
    response = client.post("/batches")
    assert response.status_code == 405 and response.headers["Allow"] == "GET, HEAD"
    response = client.get("/some/where/else")
    assert response.status_code == 404 and response.get_json()["status"] == 404
    response = client.get("/batches/abc?page_size=5000")
    assert response.status_code == 400 and "page_size" in response.get_json()["error"]


def test_reprocess_route_outage_is_a_json_503(client_for: Any) -> None:
    response = client_for("send").post("/reprocess", json={"batch": "b1", "states": ["FAILED"]})
    assert response.status_code == 503 and "try again" in response.get_json()["error"]
    assert "MRN7734981" not in response.get_data(as_text=True)


def test_reprocess_route_refuses_bad_requests_through_the_framework(function_client: Any) -> None:
    client = function_client("send")
    response = client.get("/reprocess")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    response = client.post("/reprocess/", data=b"{not json", content_type="application/json")
    assert response.status_code == 400 and "malformed JSON" in response.get_json()["error"]
    response = client.post("/reprocess", json={"batch": "b1", "states": ["RECEIVED"]})
    assert response.status_code == 400 and "'states'" in response.get_json()["error"]
