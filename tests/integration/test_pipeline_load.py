"""A batch of many small files uploaded by 8 concurrent writers completes without contention errors."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from typing import Any

import pytest
from support.dicom import StudySpec, make_instance
from support.pipeline import batch_of, files_of, wait_batch

from sendit.clients import Clients
from sendit.store.vocabulary import BatchState, FileState

pytestmark = [pytest.mark.stack, pytest.mark.slow]

FILES = 300
WRITERS = 8


def _dicom(spec: StudySpec, index: int) -> bytes:
    out = BytesIO()
    make_instance(spec, 1 + index % 3, index).save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_many_files_with_concurrent_writers(stack: Any, clients: Any, settings: Any, batch_name: str) -> None:
    spec = StudySpec(rows=8, columns=8, series=3)
    payloads = [(f"{batch_name}/s{i % 3}/IMG_{i:05d}.dcm", _dicom(spec, i)) for i in range(FILES)]
    local = threading.local()

    def put(item: tuple[str, bytes]) -> None:
        if not hasattr(local, "bucket"):
            local.bucket = Clients(stack.project).storage.bucket(settings.staging_bucket)
        local.bucket.blob(item[0]).upload_from_string(item[1], content_type="application/dicom")

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(put, payloads))

    batch = batch_of(settings, batch_name)
    doc = wait_batch(clients, batch, {BatchState.DONEPROCESSING}, FILES, timeout=150)
    assert doc["counts"]["ANONYMIZED"] == FILES and doc["has_error"] is False
    assert doc["study_uids"] == 1
    files = files_of(clients, batch)
    assert len(files) == FILES
    # No contention, transient or unexpected error: any of them would have released the claim and
    # redelivered, so every file was claimed exactly once. Asserted on state, not on the function log,
    # which may not have been written out yet when the batch turns DONEPROCESSING.
    assert {f["attempts"] for f in files} == {1}
    assert {f["state"] for f in files} == {FileState.ANONYMIZED} and not [f for f in files if f.get("reason")]
    assert len({f["ids"]["instance_uid"] for f in files}) == FILES
