"""Completion on the local stack with the real CLIs (issue #11): a batch is DONEPROCESSING only when its
upload is complete - sealed by its manifest, or stable for the stable age - and `sendit send` without
names never delivers an incomplete batch.

The notifications of a `sendit upload` are held (``completion_kit.held_uploads``) and replayed in the
order each test chooses, so "delayed and out of order" is a fact of the test, not a hope.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.completion import (
    batch,
    batch_tally,
    cli,
    file_doc,
    held_uploads,
    publish,
    wait_status,
    wait_terminal,
)
from support.dicom import StudySpec, write_study
from support.polling import wait_for

from sendit import completion, naming
from sendit.manifest import MANIFEST_NAME
from sendit.store.vocabulary import BatchState, FileState

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def _study(root: Path, folder: str, instances: int) -> list[Path]:
    spec = StudySpec(series=1, instances=instances, rows=8, columns=8, study_index=uuid.uuid4().int % 10**8)
    return write_study(root, spec, folder=folder)


def _status_api(stack: Any, batch_id: str) -> dict[str, Any]:
    import requests

    response = requests.get(f"{stack.function_url('status')}/batches/{batch_id}", timeout=30)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _upload_held(stack: Any, root: Path, folder: str, files: int) -> tuple[Any, list[Any]]:
    """`sendit upload` with the notifications held: (the manifest's, the files' in upload order)."""
    with held_uploads(stack) as held:
        cli(stack, "upload", "--quiet", str(root / folder))
        notes = held.collect(folder + "/", files + 1)
    seals = [n for n in notes if n.name == f"{folder}/{MANIFEST_NAME}"]
    assert len(seals) == 1
    return seals[0], [n for n in notes if n is not seals[0]]


def test_sealed_upload_out_of_order_completes_after_its_last_listed_file_and_send_waits(
    stack: Any, clients: Any, settings: Any, tmp_path: Path, batch_name: str
) -> None:
    bucket = settings.staging_bucket
    _study(tmp_path, batch_name, 4)
    seal, files = _upload_held(stack, tmp_path, batch_name, 4)
    batch_id = naming.batch_id(settings.secret_key, bucket, batch_name)

    publish(stack, seal)  # the manifest first, then the files last-first
    recorded = wait_for(lambda: batch(clients, batch_id).get("manifest"), 60, what="the manifest recorded")
    assert recorded["count"] == 4
    view = _status_api(stack, batch_id)
    assert view["status"] != BatchState.DONEPROCESSING
    assert view["completion"]["mode"] == "manifest" and view["completion"]["waiting_for"] == "4 listed files"

    order = sorted(files, key=lambda n: n.name, reverse=True)
    for index, note in enumerate(order[:-1]):
        publish(stack, note)
        wait_terminal(clients, bucket, note)
        doc = batch(clients, batch_id)
        assert doc["status"] != BatchState.DONEPROCESSING, f"complete after {index + 1} of 4 listed files"
        if index == 1:  # half the folder is in: a send without names must not take it
            sent = cli(stack, "send", "--json")
            assert batch_id not in json.loads(sent.stdout).get("queued", [])
            named = cli(stack, "send", batch_name, check=False)
            assert f"not ready: {batch_id} (PROCESSING, waiting for 2 listed files)" in named.stdout
            assert batch(clients, batch_id)["status"] == BatchState.PROCESSING
    waiting = _status_api(stack, batch_id)["completion"]
    assert waiting["waiting_for"] == "1 listed files" and waiting["received"] == 3

    publish(stack, order[-1])
    last = wait_terminal(clients, bucket, order[-1])
    done = wait_status(clients, batch_id, {BatchState.DONEPROCESSING})
    assert done["counts"]["total"] == 4 and done["counts"]["ANONYMIZED"] == 4
    assert done["completed_by"] == "manifest" and done["unlisted_files"] == 0
    assert done["finish_time"] >= last["finished_at"]
    assert "completion" not in _status_api(stack, batch_id)
    assert batch_tally(clients, batch_id).received == 4 == batch_tally(clients, batch_id).terminal


def test_listed_files_deleted_before_their_notifications_end_failed_with_the_reason(
    stack: Any, clients: Any, settings: Any, tmp_path: Path, batch_name: str
) -> None:
    bucket = settings.staging_bucket
    _study(tmp_path, batch_name, 4)
    seal, files = _upload_held(stack, tmp_path, batch_name, 4)
    batch_id = naming.batch_id(settings.secret_key, bucket, batch_name)
    files.sort(key=lambda n: n.name)
    never, gone, kept = files[0], files[1], files[2:]
    staging = clients.storage.bucket(bucket)
    for note in (never, gone):
        staging.blob(note.name).delete()

    # The manifest, then the files still there, and one deleted file's notification; the other deleted
    # file's notification never comes.
    publish(stack, seal, *kept, gone)
    for note in (*kept, gone):
        wait_terminal(clients, bucket, note)
    assert file_doc(clients, bucket, gone)["reason"] == "object no longer exists"
    done = wait_status(
        clients, batch_id, {BatchState.DONEPROCESSING}, timeout=settings.manifest_timeout_seconds + 90
    )
    missing = file_doc(clients, bucket, never)
    assert missing is not None and missing["state"] == FileState.FAILED
    assert missing["reason"] == completion.NEVER_RECEIVED
    assert done["counts"] == {
        "RECEIVED": 0,
        "ANONYMIZED": 2,
        "SKIPPED": 0,
        "FAILED": 2,
        "SENT": 0,
        "total": 4,
    }
    assert (
        done["finish_time"].timestamp() >= done["manifest_at"].timestamp() + settings.manifest_timeout_seconds
    )
    assert {e["reason"] for e in done["errors"]} == {completion.NEVER_RECEIVED, "object no longer exists"}


def test_received_but_unlisted_object_is_processed_and_reported(
    stack: Any, clients: Any, settings: Any, tmp_path: Path, batch_name: str
) -> None:
    bucket = settings.staging_bucket
    _study(tmp_path, batch_name, 2)
    cli(stack, "upload", "--quiet", str(tmp_path / batch_name))
    batch_id = naming.batch_id(settings.secret_key, bucket, batch_name)
    first = wait_status(clients, batch_id, {BatchState.DONEPROCESSING})
    assert first["completed_by"] == "manifest" and first["unlisted_files"] == 0
    extra = tmp_path / "extra" / batch_name / "later"
    extra.mkdir(parents=True)
    shutil.copy(next((tmp_path / batch_name).rglob("*.dcm")), extra / "copy.dcm")
    upload = stack.stack_env()["SENDIT_UPLOAD_CMD"]  # plain gsutil: no new manifest
    import subprocess

    subprocess.run([upload, str(tmp_path / "extra" / batch_name)], check=True, timeout=120)

    def reported() -> dict[str, Any] | None:
        doc = batch(clients, batch_id)
        return (
            doc if doc.get("status") == BatchState.DONEPROCESSING and doc.get("unlisted_files") == 1 else None
        )

    doc = wait_for(reported, 90, what="the unlisted file reported")
    assert doc["counts"]["total"] == 3 and doc["counts"]["ANONYMIZED"] == 3


def test_plain_gsutil_folder_completes_after_the_stable_age_and_a_file_during_the_wait_resets_it(
    stack: Any, clients: Any, settings: Any, tmp_path: Path, batch_name: str
) -> None:
    import subprocess

    stable = 20  # this test's sweep: long enough that the second upload surely lands within the wait
    bucket = settings.staging_bucket
    upload = stack.stack_env()["SENDIT_UPLOAD_CMD"]
    batch_id = naming.batch_id(settings.secret_key, bucket, batch_name)
    _study(tmp_path / "one", batch_name, 2)
    later = tmp_path / "two" / batch_name / "series_9"
    later.mkdir(parents=True)
    shutil.copy(next((tmp_path / "one" / batch_name).rglob("*.dcm")), later / "late.dcm")
    stack.restart("function sweep", env={"SENDIT_STABLE_AGE_SECONDS": str(stable)})
    try:
        subprocess.run([upload, str(tmp_path / "one" / batch_name)], check=True, timeout=120)
        wait_for(lambda: batch_tally(clients, batch_id).terminal == 2, 60, what="two files terminal")
        first = batch_tally(clients, batch_id).last_arrival
        doc = batch(clients, batch_id)
        assert doc["status"] == BatchState.PROCESSING
        view = _status_api(stack, batch_id)["completion"]
        assert view["mode"] == "stable" and view["waiting_for"].startswith("stable in ")

        subprocess.run([upload, str(tmp_path / "two" / batch_name)], check=True, timeout=120)
        wait_for(lambda: batch_tally(clients, batch_id).terminal == 3, 60, what="the third file terminal")
        second = batch_tally(clients, batch_id).last_arrival
        assert first is not None and second is not None and second > first
        assert "finish_time" not in batch(clients, batch_id)  # never completed before the third file
        done = wait_status(clients, batch_id, {BatchState.DONEPROCESSING}, timeout=stable + 60)
    finally:
        stack.restart("function sweep", env={"SENDIT_STABLE_AGE_SECONDS": settings_env_stable(stack)})
    assert done["counts"]["total"] == 3 and done["completed_by"] == "stable"
    assert done["finish_time"].timestamp() >= second + stable


def settings_env_stable(stack: Any) -> str:
    return str(stack.settings_env()["SENDIT_STABLE_AGE_SECONDS"])
