"""The log-based metric filters of terraform/monitoring.tf, proven on real function log lines.

One module fixture drives the local stack through every event an alert or a dashboard tile is about: an
upload with one good DICOM file (ANONYMIZED) and one text file (FAILED), a duplicate notification of the
failed file, the send and delivery of that batch, a poison upload notification (its lease never frees:
retried, then dead-lettered) and a delivery that never gets its batch's lease (retried as BatchBusy, then
dead-lettered). It waits for the Firestore state of each, then for the one log line that describes it
(found by its file key, event id or batch id: a positive signal, never a count). Each line is wrapped as
the Cloud Run log entry Cloud Logging would make of it (logquery.cloud_run_entry), with the service name
Terraform gives the function, and each filter must match the events it is meant for and nothing ordinary.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from support.dicom import StudySpec, write_study
from support.log_metrics import function_entries, metric_filters
from support.logquery import compile_filter
from support.pipeline import batch_doc, batch_of, files_of, upload_tree, wait_batch, wait_for

from sendit import naming
from sendit.events import ObjectFinalized
from sendit.store import files
from sendit.store.base import Store, now
from sendit.store.vocabulary import BatchState, FileState

pytestmark = [pytest.mark.stack, pytest.mark.slow]

Entry = dict[str, Any]


@dataclasses.dataclass
class Lines:
    """The log entries of each event, as Cloud Logging would hold them."""

    anonymized: Entry  # anonymize: file_outcome ANONYMIZED
    failed: Entry  # anonymize: file_outcome FAILED (not DICOM)
    duplicate_of_failed: Entry  # anonymize: "duplicate: file already FAILED" (state FAILED, no outcome)
    delivered: Entry  # deliver: "deliver: batch delivered"
    busy_upload: Entry  # anonymize: "busy: another delivery holds the lease" (INFO)
    retry_exception: Entry  # anonymize: functions-framework "Exception on ..." for RetryableError
    upload_dead_lettered: Entry  # dead_letter: file_outcome FAILED "dead-lettered after 5 deliveries"
    busy_delivery_exception: Entry  # deliver: functions-framework "Exception on ..." for BatchBusy
    delivery_dead_lettered: Entry  # dead_letter: "deliver: message dead-lettered" (ERROR)

    def ordinary(self) -> dict[str, Entry]:
        return {"anonymized": self.anonymized, "delivered": self.delivered, "busy": self.busy_upload}


def _find(stack: Any, function: str, what: str, match: Callable[[Entry], bool], timeout: float = 30) -> Entry:
    """The first entry of ``function``'s log that ``match`` accepts, once it is there."""
    path = stack.service(f"function {function}").log_path

    def found() -> Entry | None:
        return next((e for e in function_entries(path, function) if match(e)), None)

    return wait_for(found, timeout, 0.25, f"{function} to log {what}")


def _payload(**fields: Any) -> Callable[[Entry], bool]:
    return lambda e: all(e["jsonPayload"].get(k) == v for k, v in fields.items())


def _notification(obj: ObjectFinalized) -> tuple[bytes, dict[str, str]]:
    resource = {"bucket": obj.bucket, "name": obj.name, "generation": obj.generation, "size": str(obj.size)}
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": obj.bucket,
        "objectId": obj.name,
        "objectGeneration": obj.generation,
        "payloadFormat": "JSON_API_V1",
    }
    return json.dumps(resource).encode(), attributes


def _send(stack: Any, batch: str) -> None:
    response = requests.post(stack.function_url("send"), json={"batches": [batch]}, timeout=30)
    assert response.status_code == 202 and response.json()["queued"] == [batch], response.text


def _upload(clients: Any, settings: Any, tmp_path: Path, folder: str, text_file: bool) -> str:
    write_study(tmp_path, StudySpec(instances=1), folder=folder)
    if text_file:
        (tmp_path / folder / "notes.txt").write_text("not an image\n")
    upload_tree(clients, settings.staging_bucket, tmp_path / folder, prefix=f"{folder}/")
    batch = batch_of(settings, folder)
    wait_batch(clients, batch, {BatchState.DONEPROCESSING}, 2 if text_file else 1, timeout=90)
    return batch


def _poison_upload(stack: Any, clients: Any, settings: Any, folder: str) -> tuple[str, str]:
    """A notification whose file lease is held for an hour: every delivery is 'busy' until dead-lettered."""
    obj = ObjectFinalized(settings.staging_bucket, f"{folder}/stuck.dcm", "1700000000000007", 0, None, "e")
    batch = batch_of(settings, folder)
    claim = files.claim_file(
        Store.of(clients.firestore), obj=obj, batch=batch, max_attempts=5, lease_seconds=3600
    )
    assert claim.kind == "claimed"
    data, attributes = _notification(obj)
    clients.publisher.publish(clients.topic_path(stack.topic("uploads")), data, **attributes).result(10)
    return batch, naming.file_key(obj.bucket, obj.name, obj.generation)


@pytest.fixture(scope="module")
def lines(stack: Any, clients: Any, tmp_path_factory: pytest.TempPathFactory) -> Lines:
    from sendit.config import Settings

    settings = Settings.from_env(stack.settings_env())
    tmp = tmp_path_factory.mktemp("log-metrics")
    tag = uuid.uuid4().hex[:8]
    # 1. a delivered batch with one ANONYMIZED and one FAILED file
    batch = _upload(clients, settings, tmp, f"LM{tag}ok", text_file=True)
    docs = {d["state"]: d for d in files_of(clients, batch)}
    assert set(docs) == {FileState.ANONYMIZED, FileState.FAILED}, docs
    good, bad = docs[FileState.ANONYMIZED], docs[FileState.FAILED]
    # 2. a batch whose delivery lease is held by a dead instance: the deliver message dead-letters
    stuck = _upload(clients, settings, tmp, f"LM{tag}stuck", text_file=False)
    lease = {"deliver_lease": {"owner": "a-dead-instance", "until": now() + timedelta(seconds=600)}}
    clients.firestore.collection(settings.batches_collection).document(stuck).update(lease)
    _send(stack, stuck)
    # 3. a poison upload notification (dead-lettered after 5 deliveries), meanwhile
    poison_batch, poison_key = _poison_upload(stack, clients, settings, f"LM{tag}poison")
    # 4. a duplicate notification of the failed file, and the delivery of the first batch
    topic = clients.topic_path(stack.topic("uploads"))
    failed_obj = ObjectFinalized(bad["bucket"], bad["object"], str(bad["generation"]), 0, None, "e")
    data, attributes = _notification(failed_obj)
    duplicate_id = clients.publisher.publish(topic, data, **attributes).result(10)
    _send(stack, batch)

    wait_for(lambda: batch_doc(clients, batch)["status"] == "SENT", 60, 0.5, "the batch SENT")
    wait_batch(clients, poison_batch, {BatchState.EMPTY}, 1, timeout=120)
    (dead,) = files_of(clients, poison_batch)
    assert dead["state"] == FileState.FAILED and dead["reason"] == "dead-lettered after 5 deliveries"

    def reset() -> bool:
        doc = batch_doc(clients, stuck)
        return doc["status"] == "DONEPROCESSING" and doc["has_error"] is True

    wait_for(reset, 120, 0.5, "the dead-lettered delivery to put its batch back")

    return Lines(
        anonymized=_find(
            stack, "anonymize", "the ANONYMIZED outcome", _payload(file_key=good["key"], event="file_outcome")
        ),
        failed=_find(
            stack, "anonymize", "the FAILED outcome", _payload(file_key=bad["key"], event="file_outcome")
        ),
        duplicate_of_failed=_find(
            stack, "anonymize", "the duplicate", _payload(event_id=duplicate_id, state="FAILED")
        ),
        delivered=_find(
            stack, "deliver", "the delivery", _payload(batch_id=batch, message="deliver: batch delivered")
        ),
        busy_upload=_find(stack, "anonymize", "a busy retry", _payload(file_key=poison_key)),
        retry_exception=_find(stack, "anonymize", "a retry exception", _payload(exception="RetryableError")),
        upload_dead_lettered=_find(
            stack,
            "dead_letter",
            "the dead-lettered upload",
            _payload(file_key=poison_key, event="file_outcome"),
        ),
        busy_delivery_exception=_find(stack, "deliver", "a BatchBusy retry", _payload(exception="BatchBusy")),
        delivery_dead_lettered=_find(
            stack,
            "dead_letter",
            "the dead-lettered delivery",
            _payload(batch_id=stuck, message="deliver: message dead-lettered"),
        ),
    )


def _matching(metric: str, entries: dict[str, Entry]) -> set[str]:
    predicate = compile_filter(metric_filters()[metric])
    return {name for name, entry in entries.items() if predicate(entry)}


def _all(lines: Lines) -> dict[str, Entry]:
    return dataclasses.asdict(lines)


def test_the_captured_lines_are_what_their_names_say(lines: Lines) -> None:
    assert lines.anonymized["severity"] == "INFO" and lines.anonymized["jsonPayload"]["state"] == "ANONYMIZED"
    assert lines.failed["severity"] == "WARNING" and lines.failed["jsonPayload"]["state"] == "FAILED"
    assert lines.duplicate_of_failed["jsonPayload"]["message"].startswith("duplicate")
    assert lines.upload_dead_lettered["resource"]["labels"]["service_name"] == "sendit-dead-letter"
    assert lines.delivery_dead_lettered["severity"] == "ERROR"
    assert lines.retry_exception["severity"] == lines.busy_delivery_exception["severity"] == "ERROR"
    assert lines.retry_exception["jsonPayload"]["message"].startswith("Exception on ")
    assert lines.delivered["jsonPayload"]["seconds"] >= 0 and lines.delivered["jsonPayload"]["files"] == 1


def test_failed_files_matches_each_failed_file_once_and_nothing_else(lines: Lines) -> None:
    # the not-DICOM file and the dead-lettered upload; not the duplicate notification of the failed file
    assert _matching("failed_files", _all(lines)) == {"failed", "upload_dead_lettered"}


def test_dead_letters_matches_dead_lettered_uploads_and_deliveries_only(lines: Lines) -> None:
    assert _matching("dead_letters", _all(lines)) == {"upload_dead_lettered", "delivery_dead_lettered"}


def test_function_errors_matches_errors_but_not_planned_retries(lines: Lines) -> None:
    assert _matching("function_errors", _all(lines)) == {"delivery_dead_lettered"}
    # An uncaught exception of any other type, logged by functions-framework the same way, counts.
    crash = json.loads(json.dumps(lines.busy_delivery_exception))
    crash["jsonPayload"]["exception"] = "VerifyError"
    assert _matching("function_errors", {"crash": crash}) == {"crash"}


def test_file_outcomes_counts_every_terminal_file_by_state(lines: Lines) -> None:
    assert _matching("file_outcomes", _all(lines)) == {"anonymized", "failed", "upload_dead_lettered"}


def test_latency_distributions_match_the_lines_that_carry_their_value(lines: Lines) -> None:
    assert _matching("delivery_seconds", _all(lines)) == {"delivered"}
    assert _matching("file_processing_ms", _all(lines)) == {"anonymized", "failed"}
    for metric, field in (("delivery_seconds", "seconds"), ("file_processing_ms", "total_ms")):
        assert f"jsonPayload.{field}>=0" in metric_filters()[metric]


@pytest.mark.parametrize("metric", ["failed_files", "dead_letters", "function_errors"])
def test_no_alert_filter_matches_an_ordinary_line(lines: Lines, metric: str) -> None:
    assert _matching(metric, lines.ordinary()) == set()
