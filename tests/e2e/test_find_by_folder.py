"""Find and send a batch by the folder the operator uploaded (issue #11, item 4), with the real CLIs.

`GET /batches?folder=NAME`, `sendit status NAME` (the batch's files with states and reasons) and
`sendit send NAME`, for a folder name with spaces and non-ASCII letters; an unknown folder is a 404 JSON
that names nothing, and no folder name reaches a log line. With SENDIT_STATUS_NAMES=hidden the status
API shows neither folder nor object names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from support.dicom import StudySpec, write_study
from support.polling import wait_for

from sendit import naming
from sendit.store import batches
from sendit.store.base import Store

pytestmark = [pytest.mark.stack, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _cli(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.stack_env()}
    return subprocess.run(
        [sys.executable, "-m", "sendit.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def _get(url: str) -> tuple[int, Any]:
    response = requests.get(url, headers={"Accept": "application/json"}, timeout=30)
    return response.status_code, response.json()


def test_a_folder_with_spaces_and_unicode_is_found_shown_and_sent_by_name(
    stack: Any, clients: Any, settings: Any, tmp_path: Path
) -> None:
    folder = f"Étude Ünïcødé 京都 {uuid.uuid4().hex[:6]}"
    spec = StudySpec(series=1, instances=2, rows=8, columns=8, study_index=uuid.uuid4().int % 10**8)
    write_study(tmp_path, spec, folder=folder)
    (tmp_path / folder / "notes.txt").write_text("not DICOM\n")
    assert _cli(stack, "upload", "--quiet", str(tmp_path / folder)).returncode == 0
    batch_id = naming.batch_id(settings.secret_key, settings.staging_bucket, folder)
    status_url = stack.function_url("status")

    def complete() -> dict[str, Any] | None:
        code, body = _get(f"{status_url}/batches?folder={quote(folder, safe='')}")
        if code != 200:
            return None
        return body if body["batches"][0]["status"] == "DONEPROCESSING" else None

    body = wait_for(complete, 90, what="the folder's batch complete")
    assert body["folder"] == folder and [b["id"] for b in body["batches"]] == [batch_id]
    assert body["batches"][0]["folder"] == folder

    shown = _cli(stack, "status", folder)
    assert shown.returncode == 0, shown.stderr
    assert f"batch {batch_id}  folder {folder}" in shown.stdout
    assert f"{folder}/series_1/IMG_0001.dcm  ANONYMIZED" in shown.stdout
    assert f"{folder}/notes.txt" in shown.stdout and "FAILED" in shown.stdout
    listing = _cli(stack, "status")
    assert folder[:19] in listing.stdout

    sent = _cli(stack, "send", folder)
    assert sent.returncode == 0 and f"queued: {batch_id}" in sent.stdout
    wait_for(
        lambda: (
            (batches.get_batch(Store.of(clients.firestore), batch=batch_id) or {}).get("status") == "SENT"
        ),
        90,
    )


def test_an_unknown_folder_is_a_404_that_names_nothing_and_is_never_logged(stack: Any) -> None:
    unknown = f"Nobody Zyxwort Ünknown {uuid.uuid4().hex[:6]}"
    code, body = _get(f"{stack.function_url('status')}/batches?folder={quote(unknown, safe='')}")
    assert code == 404 and body == {"error": "no batch for that folder", "status": 404}
    shown = _cli(stack, "status", unknown)
    assert shown.returncode == 1 and "no batch for" in shown.stdout
    sent = _cli(stack, "send", unknown)
    assert sent.returncode == 1 and "unknown:" in sent.stdout
    for name in ("status", "send"):
        log = stack.service(f"function {name}").log_path.read_bytes()
        assert unknown.encode() not in log and quote(unknown, safe="").encode() not in log


def test_hidden_names_leave_the_status_api_without_folder_or_object_names(
    stack: Any, clients: Any, settings: Any, tmp_path: Path
) -> None:
    folder = f"Hidden Ölfolder {uuid.uuid4().hex[:6]}"
    write_study(tmp_path, StudySpec(series=1, instances=1, rows=8, columns=8), folder=folder)
    assert _cli(stack, "upload", "--quiet", str(tmp_path / folder)).returncode == 0
    batch_id = naming.batch_id(settings.secret_key, settings.staging_bucket, folder)
    wait_for(
        lambda: (
            (batches.get_batch(Store.of(clients.firestore), batch=batch_id) or {}).get("status")
            == "DONEPROCESSING"
        ),
        90,
    )
    stack.restart("function status", env={"SENDIT_STATUS_NAMES": "hidden"})
    try:
        url = stack.function_url("status")
        pages = [
            requests.get(f"{url}/batches/{batch_id}", timeout=30).content,
            requests.get(f"{url}/batches", timeout=30).content,
            requests.get(f"{url}/batches?folder={quote(folder, safe='')}", timeout=30).content,
            requests.get(f"{url}/", headers={"Accept": "text/html"}, timeout=30).content,
            requests.get(f"{url}/batches/{batch_id}?format=html", timeout=30).content,
        ]
        assert batch_id.encode() in pages[2]  # found by folder all the same
        for page in pages:
            assert b"lfolder" not in page and b"IMG_0001" not in page
            assert b'"folder"' not in page and b'"object"' not in page
    finally:
        stack.restart("function status", env={"SENDIT_STATUS_NAMES": "shown"})
