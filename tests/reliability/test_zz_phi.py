"""No identifier in any log line, HTTP error body or status field (runs last in the reliability suite).

Reads every function log file of the session's stack (everything the suite - and the tests that ran before
it in the session - made the functions do), the captured output of every reliability test and every HTTP
body the suite saw, provokes the HTTP errors of send and status and reads their bodies, and reads every
batch's reasons and errors as the status API exposes them. None may contain a planted identifier, an
identifier of the real sample files, or the upload folder names (they carry the planted accession number).

The one exception is the rule of issue #11: the status API and dashboard show each batch's ``folder`` and
each file's ``object`` name to the staging-side operators who uploaded them - in those fields and cells
only, and not at all with ``SENDIT_STATUS_NAMES=hidden`` (checked with the status function redeployed so).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliability_kit import FUNCTIONS, PROVOKED, Rel, http, names_removed

from sendit.local import corpus
from sendit.local.demo import REAL_SAMPLE_IDENTIFIERS

pytestmark = [pytest.mark.stack]


def _needles(rel: Rel) -> list[bytes]:
    needles = set(corpus.planted_needles()) | set(REAL_SAMPLE_IDENTIFIERS)
    # every folder and file name the suite uploaded (the accession is in each folder name)
    for up in rel.uploaded:
        needles.add(up.name.encode("utf-8"))
        needles.add(up.name.split("/", 1)[0].encode("utf-8"))
    # dates appear in log timestamps (2026...), never the planted birth date as written; names also
    # appear in the JSON-escaped form of non-ASCII text
    escaped = {json.dumps(n.decode("utf-8"))[1:-1].encode() for n in needles}
    return sorted(needles | escaped)


def _leaks(text: bytes, needles: list[bytes]) -> list[str]:
    return [n.decode("utf-8", "replace") for n in needles if n and n in text]


def test_http_errors_of_send_and_status_name_nothing(rel: Rel) -> None:
    send, status = rel.stack.function_url("send"), rel.stack.function_url("status")
    folder = f"{corpus.PLANTED['accession']}-{corpus.PLANTED['patient_name']}"
    provoked = [
        http("POST", send, raw=b"{not json " + corpus.PLANTED["patient_id"].encode()),
        http("POST", send, {"batches": [folder, corpus.PLANTED["patient_id"]]}),
        http("POST", send, {"batches": "ACC99817263"}),
        http("GET", send),
        http("GET", f"{status}/batches/{folder}"),
        http("GET", f"{status}/batches/{corpus.PLANTED['accession']}?page_token=%ZZ"),
        http("DELETE", f"{status}/batches"),
        http("GET", f"{status}/{corpus.PLANTED['patient_id']}/../../etc/passwd"),
    ]
    codes = [code for code, _ in provoked]
    assert all(400 <= code < 500 for code in codes), codes
    for code, body in provoked:
        assert not _leaks(body, corpus.planted_needles()), (code, "an error body echoes the request")


def _status_pages(rel: Rel) -> tuple[bytes, bytes]:
    """Every status API page (the listing, each batch's file pages) as raw JSON, and the dashboard."""
    status = rel.stack.function_url("status")
    code, raw = http("GET", f"{status}/batches")
    assert code == 200
    text = raw
    for batch in json.loads(raw).get("batches", []):
        token = ""
        while True:
            code, page = http(
                "GET", f"{status}/batches/{batch['id']}" + (f"?page_token={token}" if token else "")
            )
            assert code == 200
            text += page
            token = json.loads(page).get("next_page_token") or ""
            if not token:
                break
    code, html = http("GET", status + "/", timeout=60)
    assert code == 200
    return text, html


def test_status_reasons_and_errors_name_nothing(rel: Rel) -> None:
    needles = _needles(rel)
    text, html = _status_pages(rel)
    folders = [up.name.split("/", 1)[0] for up in rel.uploaded]
    assert any(f.encode() in text for f in folders), "names are shown to operators by default"
    leaked = [n for chunk in text.split(b"\n") if chunk for n in _leaks(names_removed(chunk), needles)]
    assert not leaked, "an identifier in the status API outside the folder/object fields"
    assert not _leaks(names_removed(html), needles)


def test_hidden_names_leave_no_identifier_in_the_status_api_at_all(rel: Rel) -> None:
    needles = _needles(rel)
    rel.stack.restart("function status", env={"SENDIT_STATUS_NAMES": "hidden"})
    try:
        text, html = _status_pages(rel)
    finally:
        rel.stack.restart("function status", env={"SENDIT_STATUS_NAMES": "shown"})
    assert not _leaks(text, needles), "an identifier in the status API with names hidden"
    assert not _leaks(html, needles)


def test_no_identifier_in_any_function_log_or_captured_output(rel: Rel) -> None:
    needles = _needles(rel)
    assert len(rel.uploaded) > 0, "run with the rest of the reliability suite"
    read = 0
    for name in FUNCTIONS:
        path: Path = rel.stack.service(f"function {name}").log_path
        data = path.read_bytes()
        read += len(data)
        leaked = _leaks(data, needles)
        assert not leaked, f"{len(leaked)} identifiers in the {name} log"
    assert read > 0
    for where, text in PROVOKED:
        leaked = _leaks(text.encode("utf-8"), needles)
        assert not leaked, f"{len(leaked)} identifiers in {where.split(' ')[0]}"
