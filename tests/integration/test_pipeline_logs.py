"""Logs carry no PHI: no planted identifier, no original object or folder name. The function logs are
scanned whole, so run after the other pipeline tests (file order) they cover the traffic of all of them."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import Conflict
from support.dicom import PLANTED, StudySpec, write_study
from support.pipeline import batch_of, upload_tree, wait_batch
from support.polling import wait_for

from sendit import logs
from sendit.app.context import Context
from sendit.events import ObjectFinalized
from sendit.stages import anonymize
from sendit.store.vocabulary import BatchState, FileState

pytestmark = pytest.mark.stack

FOLDER = re.compile(r"T[0-9a-f]{10}")  # the batch_name fixture's folder names
NAMES = ("IMG_0", "IMG_ACC", "series_1/", "notes.txt", "truncated.dcm", "stuck.dcm", "lost.dcm")


def _leaks(text: str) -> list[str]:
    found = [key for key, value in PLANTED.items() if value in text]
    found += [name for name in NAMES if name in text]
    found += FOLDER.findall(text)[:3]
    return found


@pytest.mark.parametrize("function", ["anonymize", "dead_letter"])
def test_function_logs_hold_no_phi(
    stack: Any, clients: Any, settings: Any, batch_name: str, tmp_path: Path, function: str
) -> None:
    # Traffic of our own (names and headers full of planted identifiers) on top of the earlier tests'.
    root = tmp_path / batch_name
    write_study(tmp_path, StudySpec(instances=2), folder=batch_name)
    (root / f"IMG_{PLANTED['accession']}.txt").write_text(PLANTED["patient_name"])
    upload_tree(clients, settings.staging_bucket, root, prefix=f"{batch_name}/")
    batch = batch_of(settings, batch_name)
    wait_batch(clients, batch, {BatchState.DONEPROCESSING}, 3)
    log_path = stack.service(f"function {function}").log_path

    def entries() -> list[dict[str, Any]]:
        text = log_path.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line still being written is read next time
        lines = [line for line in complete.splitlines() if line.strip()]
        return [json.loads(line) for line in lines]  # every line is one JSON object

    if function == "anonymize":
        # The batch turns DONEPROCESSING before the last outcome line is written out: wait for this batch's
        # three outcome lines (a positive signal) before reading the log for the scan.
        def outcomes_of_batch() -> list[dict[str, Any]]:
            found = [e for e in entries() if e.get("event") == "file_outcome" and e.get("batch_id") == batch]
            return found if len(found) >= 3 else []

        outcomes = wait_for(outcomes_of_batch, 30, what="the batch's file_outcome lines")
        assert {"ANONYMIZED", "FAILED"} <= {e["state"] for e in outcomes}
        for entry in outcomes:
            assert {"file_key", "name_hash", "generation", "batch_id", "state", "reason"} <= set(entry)
            if entry["state"] == "ANONYMIZED":
                assert entry["ids"]["patient_id"] and entry["engine_ms"] >= 0 and entry["total_ms"] > 0
    assert all("severity" in entry for entry in entries())
    assert _leaks(log_path.read_text()) == []


def test_in_process_logs_hold_no_phi(
    stack: Any, clients: Any, batch_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sendit.config import Settings

    settings = Settings.from_env(stack.settings_env())
    ctx = Context(settings=settings, clients=clients)
    bucket = "sendit-direct-test"
    with contextlib.suppress(Conflict):
        clients.storage.create_bucket(bucket)
    objs = []
    for spec in (StudySpec(instances=1), StudySpec(instances=1, modality="US", study_index=2)):
        folder = f"{batch_name}-{spec.modality}"
        (path,) = write_study(tmp_path, spec, folder=folder)
        blob = clients.storage.bucket(bucket).blob(f"{folder}/IMG_{PLANTED['accession']}.dcm")
        blob.upload_from_filename(str(path))
        objs.append(ObjectFinalized(bucket, blob.name, str(blob.generation), path.stat().st_size, None, "e"))
    formatter = logs.JsonFormatter()
    # Production levels (sendit.logs.setup): INFO, third-party loggers quieter. At DEBUG the Google client
    # libraries log whole request payloads (object names included): never run them at DEBUG with PHI.
    with caplog.at_level(logging.INFO), caplog.at_level(logging.DEBUG, logger="sendit"):
        results = [anonymize.process_object(ctx, obj) for obj in objs]
        results.append(anonymize.process_object(ctx, objs[0]))  # duplicate
    assert [r.state for r in results] == [FileState.ANONYMIZED, FileState.SKIPPED, FileState.ANONYMIZED]
    text = "\n".join(formatter.format(record) for record in caplog.records)
    assert "file_outcome" in text and "duplicate" in text
    assert _leaks(text) == [] and batch_name not in text
