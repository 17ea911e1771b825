"""The status API through the function server: batch list, paginated batch detail, HTML, errors, no PHI."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from support import sendkit as kit
from support.dicom import StudySpec

from sendit.stages import sweep

pytestmark = pytest.mark.stack
MS = timedelta(milliseconds=1)


@pytest.fixture
def seeded(settings: Any, clients: Any, tmp_path: Path, batch_name: str) -> kit.Seeded:
    ctx = kit.context(settings, clients)
    spec = StudySpec(modality="CT", series=1, instances=5, study_index=random.randrange(10**9))
    return kit.seed_batch(
        ctx,
        tmp_path,
        batch_name,
        [spec],
        extra_files=[("SKIPPED", "modality not allowed"), ("FAILED", "not DICOM")],
    )


def test_batches_list_shows_ids_states_counts_only(stack: Any, seeded: kit.Seeded) -> None:
    code, body = kit.get_json(f"{stack.function_url('status')}/batches")
    assert code == 200
    (batch,) = [b for b in body["batches"] if b["id"] == seeded.batch_id]
    assert batch["status"] == "DONEPROCESSING"
    assert batch["counts"] == {
        "RECEIVED": 0,
        "ANONYMIZED": 5,
        "SKIPPED": 1,
        "FAILED": 1,
        "SENT": 0,
        "total": 7,
    }
    assert batch["has_error"] is True and batch["errors"][0]["reason"] == "not DICOM"
    assert {"elapsed_seconds", "size_bytes", "start_time", "finish_time"} <= set(batch)
    assert "bucket" not in batch and batch["folder"] == seeded.folder  # the name the operator uploaded
    listing = requests.get(f"{stack.function_url('status')}/batches", timeout=30).json()
    text = json.dumps(kit.without_names(listing))
    assert seeded.folder not in text and not kit.planted_in(text) and "IMG_" not in text


def test_batch_detail_pages_through_files(stack: Any, seeded: kit.Seeded) -> None:
    url = f"{stack.function_url('status')}/batches/{seeded.batch_id}"
    names: list[str] = []
    token = None
    pages = 0
    while True:
        params: dict[str, Any] = {"page_size": 3}
        if token:
            params["page_token"] = token
        code, body = kit.get_json(url, params=params)
        assert code == 200 and body["id"] == seeded.batch_id and len(body["files"]) <= 3
        names += [f["name"] for f in body["files"]]
        token = body["next_page_token"]
        pages += 1
        if not token:
            break
    assert pages == 3 and len(names) == len(set(names)) == 7
    assert set(names) == {f["name_hash"] for f in seeded.files}  # hashed names, never object names
    code, body = kit.get_json(url, params={"state": "FAILED"})
    assert [(f["state"], f["reason"]) for f in body["files"]] == [("FAILED", "not DICOM")]
    code, body = kit.get_json(url, params={"state": "ANONYMIZED", "page_size": 1})
    (first,) = body["files"]
    assert first["patient_id"] and first["study_uid"].startswith("2.25.") and first["instance_uid"]
    assert first["object"].startswith(seeded.folder + "/")  # staging names for the operators who uploaded
    text = json.dumps(kit.without_names(requests.get(url, timeout=30).json()))
    assert seeded.folder not in text and not kit.planted_in(text) and "IMG_" not in text


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        ("POST", "/batches", 405, "use GET"),
        ("DELETE", "/batches/abc", 405, "use GET"),
        ("GET", "/batches/deadbeefdeadbeef", 404, "unknown batch"),
        ("GET", "/batches/a/b", 404, "not found"),
        ("GET", "/nothing-here", 404, "not found"),
        ("GET", "/batches/x?page_size=0", 400, "page_size"),
        ("GET", "/batches/x?page_size=many", 400, "page_size"),
        ("GET", "/batches/x?state=WHATEVER", 400, "state must be"),
        ("GET", "/batches/x?page_token=%2F..", 400, "page_token"),
    ],
)
def test_status_bad_requests(stack: Any, method: str, path: str, status: int, says: str) -> None:
    response = requests.request(method, stack.function_url("status") + path, timeout=30)
    assert response.status_code == status
    body = response.json()
    assert body["status"] == status and says in body["error"]


def test_root_serves_dashboard_to_browsers_and_json_to_clients(stack: Any, seeded: kit.Seeded) -> None:
    url = stack.function_url("status") + "/"
    page = requests.get(url, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert '<meta http-equiv="refresh"' in page.text and seeded.batch_id in page.text
    assert seeded.folder in page.text  # in its folder cell
    assert seeded.folder not in kit.without_name_cells(page.text) and not kit.planted_in(page.text)
    as_json = requests.get(url, headers={"Accept": "*/*"}, timeout=30)
    assert as_json.headers["Content-Type"].startswith("application/json")
    assert seeded.batch_id in {b["id"] for b in as_json.json()["batches"]}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_complete_batch_shows_when_its_clean_files_expire(
    stack: Any, settings: Any, clients: Any, seeded: kit.Seeded
) -> None:
    ctx = kit.context(settings, clients)
    docs = [f for f in kit.file_docs(ctx, seeded.batch_id) if f["state"] == "ANONYMIZED"]
    first_clean = min(f["finished_at"] for f in docs)
    retention = timedelta(days=settings.processing_retention_days)  # the Terraform default, 30 days
    code, body = kit.get_json(f"{stack.function_url('status')}/batches/{seeded.batch_id}")
    assert code == 200 and body["status"] == "DONEPROCESSING"
    assert abs(_time(body["expires_at"]) - (first_clean + retention)) < MS
    assert abs(_time(body["first_clean_at"]) - first_clean) < MS
    assert body["expiring_soon"] is False and body["expired"] is False
    code, listing = kit.get_json(f"{stack.function_url('status')}/batches")
    (row,) = [b for b in listing["batches"] if b["id"] == seeded.batch_id]
    assert (row["expires_at"], row["expiring_soon"]) == (body["expires_at"], False)
    assert seeded.batch_id not in sweep.expiring(ctx)  # the sweep's WARNING counts only batches near expiry


def test_a_batch_left_unsent_for_weeks_is_flagged(
    stack: Any, settings: Any, clients: Any, tmp_path: Path, batch_name: str
) -> None:
    ctx = kit.context(settings, clients)
    spec = StudySpec(modality="CT", series=1, instances=2, study_index=random.randrange(10**9))
    seeded = kit.seed_batch(ctx, tmp_path, batch_name, [spec])
    retention = settings.processing_retention_days
    old = kit.age_batch(ctx, seeded, days=retention - 5)  # 5 days left
    url = stack.function_url("status")
    code, body = kit.get_json(f"{url}/batches/{seeded.batch_id}")
    assert code == 200 and body["status"] == "DONEPROCESSING"
    assert abs(_time(body["expires_at"]) - (old + timedelta(days=retention))) < MS
    assert body["expiring_soon"] is True and body["expired"] is False
    page = requests.get(f"{url}/batches", headers={"Accept": "text/html"}, timeout=30).text
    assert f'<tr id="batch-{seeded.batch_id}" class="expiring">' in page
    assert "expiring within 7 days" in page
    assert seeded.batch_id in sweep.expiring(ctx)  # and the sweep's WARNING counts it
