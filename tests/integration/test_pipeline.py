"""The event pipeline on the local stack: upload -> notification -> anonymize function -> Firestore state."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from support.dicom import StudySpec, write_study
from support.pipeline import batch_of, clean_objects, files_of, upload_tree, wait_batch, wait_for

from sendit import naming
from sendit.store import batches, files
from sendit.store.base import Store
from sendit.store.vocabulary import BatchState, FileState

pytestmark = pytest.mark.stack


def test_three_series_folder_via_gsutil_ends_doneprocessing(
    stack: Any, clients: Any, settings: Any, batch_name: str, tmp_path: Path
) -> None:
    paths = write_study(tmp_path, StudySpec(series=3, instances=4), folder=batch_name)
    subprocess.run([stack.stack_env()["SENDIT_UPLOAD_CMD"], str(tmp_path / batch_name)], check=True)
    batch = batch_of(settings, batch_name)
    doc = wait_batch(clients, batch, {BatchState.DONEPROCESSING}, len(paths), timeout=90)

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
    assert len(files) == 12 and {f["state"] for f in files} == {FileState.ANONYMIZED}
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


def _mixed_folder(root: Path) -> dict[str, tuple[str, str | None]]:
    """One file per terminal outcome; returns relative name -> (state, reason)."""
    root.mkdir(parents=True)
    write_study(root, StudySpec(instances=1), folder="ct")
    write_study(root, StudySpec(instances=1, burned_in=True, study_index=2), folder="burned")
    write_study(root, StudySpec(instances=1, modality="US", study_index=3), folder="us")
    (root / "notes.txt").write_text("Patient Zyxwort^Quillane MRN7734981: see attached\n")
    whole = (root / "ct" / "series_1" / "IMG_0001.dcm").read_bytes()
    (root / "truncated.dcm").write_bytes(whole[: len(whole) // 2])
    (root / "empty.dcm").write_bytes(b"")
    return {
        "ct/series_1/IMG_0001.dcm": (FileState.ANONYMIZED, None),
        "burned/series_1/IMG_0001.dcm": (FileState.SKIPPED, "burned-in annotation (BurnedInAnnotation=YES)"),
        "us/series_1/IMG_0001.dcm": (FileState.SKIPPED, "modality US not allowed"),
        "notes.txt": (FileState.FAILED, "not DICOM"),
        "truncated.dcm": (FileState.FAILED, "truncated DICOM"),
        "empty.dcm": (FileState.FAILED, "empty file"),
    }


def test_mixed_folder_each_file_terminal_with_reason(
    clients: Any, settings: Any, batch_name: str, tmp_path: Path
) -> None:
    expected = _mixed_folder(tmp_path / batch_name)
    names = upload_tree(clients, settings.staging_bucket, tmp_path / batch_name, prefix=f"{batch_name}/")
    assert len(names) == len(expected)
    batch = batch_of(settings, batch_name)
    doc = wait_batch(clients, batch, {BatchState.DONEPROCESSING}, len(expected))

    files = files_of(clients, batch)
    got = {f["object"][len(batch_name) + 1 :]: (f["state"], f.get("reason")) for f in files}
    assert got == expected
    assert doc["counts"] == {
        "RECEIVED": 0,
        "ANONYMIZED": 1,
        "SKIPPED": 2,
        "FAILED": 3,
        "SENT": 0,
        "total": 6,
    }
    assert doc["has_error"] is True
    by_key = {f["key"]: f for f in files}
    assert sorted(e["reason"] for e in doc["errors"]) == ["empty file", "not DICOM", "truncated DICOM"]
    assert all(by_key[e["file"]]["state"] == FileState.FAILED for e in doc["errors"])
    # only the anonymized file reached the processing bucket
    assert len(clean_objects(clients, settings.processing_bucket, batch)) == 1
    assert batches.batch_counts(Store.of(clients.firestore), batch=batch) == doc["counts"]


def test_only_filtered_files_make_an_empty_batch(
    clients: Any, settings: Any, batch_name: str, tmp_path: Path
) -> None:
    write_study(tmp_path, StudySpec(instances=2, modality="US"), folder=batch_name)
    upload_tree(clients, settings.staging_bucket, tmp_path / batch_name, prefix=f"{batch_name}/")
    batch = batch_of(settings, batch_name)
    doc = wait_batch(clients, batch, {BatchState.EMPTY}, 2)
    assert doc["counts"]["SKIPPED"] == 2 and doc["has_error"] is False
    assert clean_objects(clients, settings.processing_bucket, batch) == []


def _notification(blob: Any) -> tuple[bytes, dict[str, str]]:
    """The OBJECT_FINALIZE notification GCS sends for blob (JSON_API_V1 payload and attributes)."""
    resource = {
        "kind": "storage#object",
        "name": blob.name,
        "bucket": blob.bucket.name,
        "generation": str(blob.generation),
        "size": str(blob.size),
        "md5Hash": blob.md5_hash,
        "contentType": blob.content_type,
    }
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": blob.bucket.name,
        "objectId": blob.name,
        "objectGeneration": str(blob.generation),
        "payloadFormat": "JSON_API_V1",
    }
    return json.dumps(resource).encode(), attributes


def test_same_notification_three_times_gives_one_clean_file_and_one_state(
    stack: Any, clients: Any, settings: Any, batch_name: str, tmp_path: Path
) -> None:
    (path,) = write_study(tmp_path, StudySpec(instances=1), folder=batch_name)
    blob = clients.storage.bucket(settings.staging_bucket).blob(f"{batch_name}/one.dcm")
    blob.upload_from_filename(str(path))  # the real notification: delivery 1
    blob.reload()
    data, attributes = _notification(blob)
    topic = clients.topic_path(stack.topic("uploads"))
    for _ in range(3):  # deliveries 2..4, while the first may still be in flight
        clients.publisher.publish(topic, data, **attributes).result(timeout=10)

    batch = batch_of(settings, batch_name)
    wait_batch(clients, batch, {BatchState.DONEPROCESSING}, 1)
    key = naming.file_key(blob.bucket.name, blob.name, blob.generation)
    log_path = stack.service("function anonymize").log_path

    def duplicates() -> int:
        lines = [json.loads(x) for x in log_path.read_text().splitlines() if key in x and x.startswith("{")]
        return sum(1 for entry in lines if entry.get("message", "").startswith("duplicate"))

    wait_for(lambda: duplicates() >= 3, 30, what="three duplicate deliveries acked")
    (doc,) = files_of(clients, batch)
    assert doc["key"] == key and doc["state"] == FileState.ANONYMIZED and doc["attempts"] == 1
    assert len(clean_objects(clients, settings.processing_bucket, batch)) == 1


def test_file_after_send_reopens_batch_and_is_reported_late(
    clients: Any, settings: Any, batch_name: str, tmp_path: Path
) -> None:
    paths = write_study(tmp_path, StudySpec(instances=2), folder=batch_name)
    bucket = clients.storage.bucket(settings.staging_bucket)
    bucket.blob(f"{batch_name}/a.dcm").upload_from_filename(str(paths[0]))
    batch = batch_of(settings, batch_name)
    wait_batch(clients, batch, {BatchState.DONEPROCESSING}, 1)
    # what a delivery leaves behind: files SENT, batch SENT
    db = clients.firestore
    (first,) = files_of(clients, batch)
    db.collection(settings.files_collection).document(first["key"]).update({"state": FileState.SENT})
    db.collection(settings.batches_collection).document(batch).update({"status": BatchState.SENT})

    bucket.blob(f"{batch_name}/b.dcm").upload_from_filename(str(paths[1]))
    doc = wait_batch(clients, batch, {BatchState.DONEPROCESSING}, 2)
    assert doc["counts"]["SENT"] == 1 and doc["counts"]["ANONYMIZED"] == 1
    assert doc["late_files"] == 1 and doc.get("reopened_at") is not None
    late = [f for f in files_of(clients, batch) if f["state"] == FileState.ANONYMIZED]
    assert len(late) == 1 and late[0]["late"] is True
    assert [
        f["key"] for f in files.files_of_batch(Store.of(db), batch=batch, state=FileState.ANONYMIZED)
    ] == [late[0]["key"]]
