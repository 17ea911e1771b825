"""The send trigger's request handling, through functions-framework (no emulator needed for these)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sendit import runtime, send_api

REPO = Path(__file__).resolve().parents[2]
ENV = {
    "GOOGLE_CLOUD_PROJECT": "unit-project",
    "SENDIT_STAGING_BUCKET": "staging",
    "SENDIT_PROCESSING_BUCKET": "processing",
    "SENDIT_DESTINATION_BUCKET": "destination",
    "SENDIT_BIGQUERY_TABLE": "unit-project.sendit.dicom",
    "SENDIT_DELIVER_TOPIC": "sendit-deliver",
    "SENDIT_SECRET_KEY": "unit-test-key-0123456789",
}


@pytest.fixture
def function_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A functions-framework test client per HTTP entry point, with a fresh runtime context."""
    from functions_framework import create_app

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(runtime, "_context", None)

    def make(target: str) -> Any:
        return create_app(target, str(REPO / "functions" / "main.py"), "http").test_client()

    yield make


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", None),
        (b"  \n", None),
        (b"null", None),
        (b"{}", None),
        (b'{"batches": null}', None),
        (b'{"batches": ["a1", "b2", "a1"]}', ["a1", "b2"]),
    ],
)
def test_parse_body_accepts(raw: bytes, expected: list[str] | None) -> None:
    assert send_api.parse_body(raw) == expected


def test_force_is_read_with_the_names() -> None:
    assert send_api.parse_request(b'{"batches": ["a1"], "force": true}') == (["a1"], True)
    assert send_api.parse_request(b'{"batches": ["a1"]}') == (["a1"], False)
    assert send_api.parse_request(b"") == (None, False)


@pytest.mark.parametrize(
    ("raw", "status", "says"),
    [
        (b"{oops", 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b'"text"', 400, "JSON object"),
        (b'{"batches": [1]}', 400, "list of batch id strings"),
        (b'{"batches": []}', 400, "empty"),
        (b'{"batches": ["ok"], "urgent": true}', 400, "unknown field"),
        (b'{"batches": ["ok"], "force": "yes"}', 400, "'force' must be true or false"),
        (b'{"force": true}', 400, "'force' needs 'batches'"),
        (b'{"batches": ["has space"]}', 400, "may only contain"),
        (b'{"batches": ["' + b"x" * 129 + b'"]}', 400, "may only contain"),
        (b" " * (send_api.MAX_BODY + 1), 413, "larger than"),
    ],
)
def test_parse_body_rejects(raw: bytes, status: int, says: str) -> None:
    with pytest.raises(send_api.BadRequest) as caught:
        send_api.parse_body(raw)
    assert caught.value.status == status and says in str(caught.value)


def test_error_messages_never_echo_the_body() -> None:
    secret = b'{"batches": ["Zyxwort^Quillane MRN7734981"]}'
    with pytest.raises(send_api.BadRequest) as caught:
        send_api.parse_body(secret)
    assert "Zyxwort" not in str(caught.value) and "MRN" not in str(caught.value)


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
