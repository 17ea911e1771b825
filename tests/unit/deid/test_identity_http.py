"""HttpIdentity against a real local HTTP server: retries of 5xx, a fresh token on 401, answers checked."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from sendit.deid.identity import HttpIdentity, IdentityError, IdentityRefused, Subject

KEY = b"unit-test-key-0123456789abcdef"


class _Server(BaseHTTPRequestHandler):
    status: ClassVar[int] = 200
    answer: ClassVar[dict[str, Any]] = {}
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        _Server.seen.append(self.headers.get("Authorization", ""))
        data = json.dumps(_Server.answer).encode()
        self.send_response(_Server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Server.seen.clear()
    _Server.status, _Server.answer = (
        200,
        {"results": [{"suid": "E1", "jitter": 3, "items": [{"suid": "I1"}]}]},
    )
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_5xx_is_retried_then_an_identity_error(server: str) -> None:
    _Server.status = 503
    client = HttpIdentity(server, KEY, retries=2, backoff=0.0, token=lambda fresh: "t0k3n")
    with pytest.raises(IdentityError, match=r"answered HTTP 503 after 3 tries"):
        client.identity(Subject("MRN-1", "ACC-1"))
    assert _Server.seen == ["Bearer t0k3n"] * 3


def test_401_asks_for_a_fresh_token_once_then_refuses(server: str) -> None:
    _Server.status = 401
    asked: list[bool] = []

    def token(fresh: bool) -> str:
        asked.append(fresh)
        return "new" if fresh else "old"

    client = HttpIdentity(server, KEY, retries=3, backoff=0.0, token=token)
    with pytest.raises(IdentityRefused, match=r"refused the credentials \(HTTP 401\)") as info:
        client.identity(Subject("MRN-2"))
    assert asked == [False, True] and _Server.seen == ["Bearer old", "Bearer new"]
    assert "MRN-2" not in str(info.value)


@pytest.mark.parametrize(
    "result",
    [
        {"suid": "a/b", "jitter": 3, "items": [{"suid": "I1"}]},  # not a path segment
        {"suid": "E" * 65, "jitter": 3, "items": [{"suid": "I1"}]},  # longer than LO
        {"suid": "E1", "jitter": 3, "items": [{"suid": "I" * 17}]},  # longer than SH
        {"suid": "E1", "jitter": 0, "items": [{"suid": "I1"}]},  # no shift
        {"suid": "E1", "jitter": 999, "items": [{"suid": "I1"}]},  # beyond the maximum
    ],
)
def test_answers_outside_the_protocol_are_refused(server: str, result: dict[str, Any]) -> None:
    _Server.answer = {"results": [result]}
    with pytest.raises(IdentityError):
        HttpIdentity(server, KEY, retries=0).identity(Subject("MRN-3", "ACC-3"))


def test_the_request_names_the_id_sources(server: str) -> None:
    client = HttpIdentity(server, KEY, collection="trial-7")
    body = client.request_body(Subject("Doe^Jane", "ST1", None, "PatientName", "StudyID"))
    assert body["collection"] == "trial-7"
    assert body["identifiers"] == [
        {"id": "Doe^Jane", "id_source": "PatientName", "items": [{"id": "ST1", "id_source": "StudyID"}]}
    ]
    found = client.identity(Subject("Doe^Jane", "ST1", None, "PatientName", "StudyID"))
    assert (found.patient_id, found.accession, found.date_shift) == ("E1", "I1", 3)
    assert _Server.seen == [""]  # no token source: no Authorization header
