"""The reprocess route's HTTP edge (``sendit.http.reprocess_api``): parsing, and each documented status for
what the stage raises or returns (the stage itself runs against the emulators in tests/e2e)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, Request, Response, request
from google.api_core.exceptions import ServiceUnavailable

from sendit.errors import Refused, UnknownBatch
from sendit.http import reprocess_api
from sendit.http.responses import BadRequest
from sendit.store.reopen import ReprocessRequest, ReprocessResult
from sendit.store.vocabulary import FileState

APP = Flask(__name__)
NAME = "Zyxwort^Quillane MRN7734981"  # stands for a staging folder name: must never be echoed


def _call(run: Callable[[ReprocessRequest], ReprocessResult], body: bytes, method: str = "POST") -> Response:
    with APP.test_request_context("/reprocess", method=method, data=body, content_type="application/json"):
        assert reprocess_api.is_reprocess(request)
        req: Request = request
        return reprocess_api.handle(req, run)


def _never(_: ReprocessRequest) -> ReprocessResult:
    raise AssertionError("the stage must not run for a bad request")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"batch": "b1"}', ReprocessRequest(batch="b1")),
        (
            b'{"batch": "b1", "states": ["SKIPPED", "FAILED", "SKIPPED"]}',
            ReprocessRequest(("SKIPPED", "FAILED"), "b1"),
        ),
        (b'{"folder": "' + NAME.encode() + b'"}', ReprocessRequest(folder=NAME)),
        (b'{"files": ["k1", "k2", "k1"]}', ReprocessRequest(keys=("k1", "k2"))),
        (b'{"batch": "b1", "folder": null}', ReprocessRequest(batch="b1")),
    ],
)
def test_parse_accepts(raw: bytes, expected: ReprocessRequest) -> None:
    assert reprocess_api.parse_request(raw) == expected


@pytest.mark.parametrize(
    ("raw", "status", "says"),
    [
        (b"", 400, "JSON object"),
        (b"{oops", 400, "malformed JSON"),
        (b"[]", 400, "JSON object"),
        (b"{}", 400, "exactly one of"),
        (b'{"batch": "b1", "files": ["k"]}', 400, "exactly one of"),
        (b'{"batch": "b1", "force": true}', 400, "unknown field"),
        (b'{"batch": "has space"}', 400, "'batch' must be a batch id"),
        (b'{"batch": 7}', 400, "'batch' must be a batch id"),
        (b'{"folder": ""}', 400, "'folder' must be"),
        (b'{"files": []}', 400, "non-empty list of file keys"),
        (b'{"files": ["a/b"]}', 400, "a file key may only contain"),
        (b'{"files": ["k"], "states": []}', 400, "'states' must be"),
        (b'{"batch": "b1", "states": ["RECEIVED"]}', 400, "'states' must be"),
        (b'{"batch": "b1", "states": "FAILED"}', 400, "'states' must be"),
        (b'{"files": [' + b",".join([b'"k"'] * 1001) + b"]}", 400, "at most 1000"),
        (b" " * (reprocess_api.MAX_BODY + 1), 413, "larger than"),
    ],
)
def test_bad_bodies_are_refused_before_any_work(raw: bytes, status: int, says: str) -> None:
    response = _call(_never, raw)
    body = response.get_json()
    assert response.status_code == status and body["status"] == status and says in body["error"]


def test_only_post_is_allowed() -> None:
    response = _call(_never, b"", method="GET")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


def test_messages_never_echo_the_body() -> None:
    for raw in (b'{"folder": "' + NAME.encode() + b'", "extra": 1}', b'{"batch": "' + NAME.encode() + b'"}'):
        with pytest.raises(BadRequest) as caught:
            reprocess_api.parse_request(raw)
        assert "Zyxwort" not in str(caught.value) and "MRN" not in str(caught.value)


def _raises(exc: Exception) -> Callable[[ReprocessRequest], ReprocessResult]:
    def run(_: ReprocessRequest) -> ReprocessResult:
        raise exc

    return run


def test_an_unknown_batch_or_folder_is_404_naming_nothing() -> None:
    response = _call(_raises(UnknownBatch("b1")), b'{"batch": "b1"}')
    assert response.status_code == 404 and response.get_json()["error"] == "unknown batch"
    response = _call(_raises(UnknownBatch("x")), b'{"folder": "' + NAME.encode() + b'"}')
    assert response.status_code == 404 and response.get_json()["error"] == "no batch for that folder"
    assert "Zyxwort" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("why", "status"),
    [("delivering", 409), ("buffered", 409), ("layout", 409), ("ambiguous", 409), ("gone", 410)],
)
def test_refusals_map_to_their_status_with_the_reason(why: str, status: int) -> None:
    refused = Refused(f"refused because {why}", why, batch="b1", files=["k1", "k2"])
    response = _call(_raises(refused), b'{"batch": "b1", "states": ["SENT"]}')
    assert response.status_code == status
    assert response.get_json() == {
        "error": f"refused because {why}",
        "status": status,
        "why": why,
        "batch": "b1",
        "files": ["k1", "k2"],
    }


def test_a_state_store_outage_is_503_and_other_errors_propagate() -> None:
    response = _call(_raises(ServiceUnavailable("down for " + NAME)), b'{"batch": "b1"}')
    assert response.status_code == 503 and "Zyxwort" not in response.get_data(as_text=True)
    with pytest.raises(KeyError):
        _call(_raises(KeyError("bug")), b'{"batch": "b1"}')


def test_reopened_files_answer_202_nothing_to_do_200() -> None:
    seen: list[ReprocessRequest] = []

    def run(wanted: ReprocessRequest) -> ReprocessResult:
        seen.append(wanted)
        result = ReprocessResult(states=list(wanted.states), batch="b1", status="SENT")
        if FileState.SKIPPED in wanted.states:
            result.reopened, result.by_state["SKIPPED"] = ["k1"], 1
        return result

    response = _call(run, b'{"batch": "b1", "states": ["SKIPPED"]}')
    body: dict[str, Any] = response.get_json()
    assert response.status_code == 202 and body["reopened"] == ["k1"] and body["published"] == 1
    assert body["reopened_by_state"] == {"SKIPPED": 1} and body["status"] == "SENT"
    response = _call(run, b'{"batch": "b1"}')
    assert response.status_code == 200 and response.get_json()["reopened"] == []
    assert seen[1].states == (FileState.FAILED,)  # the default


def test_files_route_is_404_only_when_every_key_is_unknown() -> None:
    def run(wanted: ReprocessRequest) -> ReprocessResult:
        result = ReprocessResult(states=list(wanted.states))
        result.unknown = [k for k in wanted.keys if k.startswith("x")]
        result.unchanged = [{"key": k, "state": "ANONYMIZED"} for k in wanted.keys if not k.startswith("x")]
        return result

    response = _call(run, b'{"files": ["x1", "x2"]}')
    assert response.status_code == 404 and response.get_json()["unknown"] == ["x1", "x2"]
    response = _call(run, b'{"files": ["x1", "k2"]}')
    body = response.get_json()
    assert response.status_code == 200 and body["unknown"] == ["x1"] and body["refused"] == []
    assert "batch" not in body
