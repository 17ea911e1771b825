"""The event pipeline on the local stack: upload -> notification -> anonymize function -> Firestore state."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicom_factory import StudySpec, write_study
from pipeline_helpers import batch_of, clean_objects, files_of, wait_batch

from sendit import state

pytestmark = pytest.mark.stack


def test_three_series_folder_via_gsutil_ends_doneprocessing(
    stack: Any, clients: Any, settings: Any, batch_name: str, tmp_path: Path
) -> None:
    paths = write_study(tmp_path, StudySpec(series=3, instances=4), folder=batch_name)
    subprocess.run([stack.stack_env()["SENDIT_UPLOAD_CMD"], str(tmp_path / batch_name)], check=True)
    batch = batch_of(settings, batch_name)
    doc = wait_batch(clients, batch, {state.DONEPROCESSING}, len(paths), timeout=90)

    assert doc["counts"] == {
        "RECEIVED": 0,
        "ANONYMIZED": 12,
        "SKIPPED": 0,
        "FAILED": 0,
        "SENT": 0,
        "total": 12,
    }
    assert doc["has_error"] is False and doc["errors"] == []
    assert doc["study_uids"] == 1 and doc["multiple_studies"] is False
    assert sum(doc["study_dates"].values()) == 12 and len(doc["study_dates"]) == 1
    assert doc["folder"] == batch_name and doc["size_bytes"] == sum(p.stat().st_size for p in paths)
    assert doc["elapsed_seconds"] >= 0

    files = files_of(clients, batch)
    assert len(files) == 12 and {f["state"] for f in files} == {state.ANONYMIZED}
    # consistent pseudonyms across files processed by concurrent deliveries
    assert len({f["ids"]["patient_id"] for f in files}) == 1
    assert len({f["ids"]["study_uid"] for f in files}) == 1
    assert len({f["ids"]["series_uid"] for f in files}) == 3
    assert len({f["ids"]["instance_uid"] for f in files}) == 12
    assert all(f["attempts"] == 1 and f["lease_until"] for f in files)

    blobs = {b.name: b for b in clean_objects(clients, settings.processing_bucket, batch)}
    assert len(blobs) == 12
    for f in files:
        name = f"{batch}/{f['ids']['study_uid']}/{f['ids']['series_uid']}/{f['ids']['instance_uid']}.dcm"
        assert f["clean_uri"] == f"gs://{settings.processing_bucket}/{name}"
        assert blobs[name].md5_hash == f["clean_md5"] and blobs[name].size == f["clean_size"]
    # the clean files agree with each other: one study, three series, references remapped
    sample = next(iter(blobs.values()))
    ds = pydicom.dcmread(__import__("io").BytesIO(sample.download_as_bytes()))
    assert ds.StudyInstanceUID == files[0]["ids"]["study_uid"]
    assert ds.PatientIdentityRemoved == "YES"
    # nothing was written back into the staging bucket
    staged = list(clients.storage.list_blobs(settings.staging_bucket, prefix=f"{batch_name}/"))
    assert len(staged) == 12
