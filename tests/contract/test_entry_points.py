"""The six entry points as the platform calls them: recorded CloudEvents and HTTP requests, through
functions-framework, on emulator state (``Platform`` in conftest.py).

A CloudEvent function answers 2xx to ack (done, or permanently not for us) and 5xx to have Pub/Sub
redeliver; the HTTP functions answer JSON (or the dashboard) with the status the API documents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import sendkit as kit
from support.contract import Platform
from support.pipeline import batch_doc, files_of
from support.polling import wait_for

from sendit import naming
from sendit.store import deliveries
from sendit.store.base import Store
from sendit.store.vocabulary import BatchState, FileState

pytestmark = pytest.mark.stack


def _anonymize(platform: Platform, uploaded: list[Any]) -> None:
    for up in uploaded:
        response = platform.event(
            "anonymize", "object_finalize", **up.values(platform.bucket, platform.project)
        )
        assert response.status_code == 200, response.get_data(as_text=True)


def _batch(platform: Platform, folder: str) -> str:
    return naming.batch_id(platform.settings.secret_key, platform.bucket, folder)


def _complete(platform: Platform, batch: str) -> dict[str, Any]:
    """Wait until the batch is complete: no manifest here, so the stack's sweep settles it once stable."""
    settled = {BatchState.DONEPROCESSING, BatchState.EMPTY}

    def done() -> dict[str, Any] | None:
        doc = batch_doc(platform.clients, batch)
        return doc if doc.get("status") in settled else None

    return wait_for(done, 60, what="the batch complete")


def test_anonymize_takes_a_recorded_finalize_event_to_a_terminal_state(
    platform: Platform, tmp_path: Path, batch_name: str
) -> None:
    uploaded = platform.upload(tmp_path, batch_name, instances=2)
    _anonymize(platform, uploaded)
    batch = _batch(platform, batch_name)
    docs = files_of(platform.clients, batch)
    assert sorted(d["key"] for d in docs) == sorted(
        naming.file_key(platform.bucket, up.name, up.generation) for up in uploaded
    )
    assert {d["state"] for d in docs} == {FileState.ANONYMIZED} and {d["attempts"] for d in docs} == {1}
    doc = _complete(platform, batch)
    assert doc["status"] == BatchState.DONEPROCESSING and doc["counts"]["total"] == 2
    assert doc["completed_by"] == "stable"
    # The same event again (at-least-once delivery): acked, nothing changes.
    _anonymize(platform, uploaded[:1])
    assert {d["attempts"] for d in files_of(platform.clients, batch)} == {1}


def test_anonymize_acks_events_that_are_not_uploads_and_writes_nothing(
    platform: Platform, tmp_path: Path, batch_name: str
) -> None:
    (up,) = platform.upload(tmp_path, batch_name)
    values = up.values(platform.bucket, platform.project)
    # A push envelope without ce- headers, converted by functions-framework (OBJECT_DELETE: not ours).
    assert platform.event("anonymize", "object_delete", **values).status_code == 200
    # A CloudEvent of a type anonymize does not handle, and one whose message is not base64 JSON.
    headers = {**platform_headers(), "ce-type": "com.example.unknown"}
    assert platform.call("anonymize", "POST", "/", headers, b"{}").status_code == 200
    garbage = json.dumps({"message": {"data": "%%%not base64%%%", "messageId": "1"}}).encode()
    assert platform.call("anonymize", "POST", "/", platform_headers(), garbage).status_code == 200
    assert files_of(platform.clients, _batch(platform, batch_name)) == []


def platform_headers() -> dict[str, str]:
    return {
        "ce-id": "contract-1",
        "ce-source": "//pubsub.googleapis.com/projects/p/topics/t",
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "Content-Type": "application/json",
    }


def test_send_publishes_what_deliver_consumes_and_status_shows_it(
    platform: Platform, tmp_path: Path, batch_name: str
) -> None:
    uploaded = platform.upload(tmp_path, batch_name, instances=2)
    _anonymize(platform, uploaded)
    batch = _batch(platform, batch_name)
    _complete(platform, batch)

    response = platform.http("send", "send", batch_id=batch)
    assert response.status_code == 202 and response.is_json
    assert response.get_json()["queued"] == [batch]
    assert batch_doc(platform.clients, batch)["status"] == BatchState.SENDING

    (message,) = platform.pull_deliver_messages(1)  # what send published, delivered as Eventarc would
    assert message.attributes["kind"] == "deliver" and message.attributes["batch_id"] == batch
    assert platform.message_event("deliver", message).status_code == 200
    doc = batch_doc(platform.clients, batch)
    assert doc["status"] == BatchState.SENT and doc["counts"][FileState.SENT] == 2
    assert {d["state"] for d in files_of(platform.clients, batch)} == {FileState.SENT}
    # The same message again: acked, no second delivery record.
    assert platform.message_event("deliver", message).status_code == 200
    assert len(batch_doc(platform.clients, batch)["deliveries"]) == 1

    response = platform.http("status", "status_batch", batch_id=batch)
    assert response.status_code == 200 and response.is_json
    body = response.get_json()
    assert body["id"] == batch and body["status"] == BatchState.SENT and len(body["files"]) == 2
    # The folder and object names show to operators in their own fields only (SENDIT_STATUS_NAMES=shown).
    assert body["folder"] == batch_name and {f["object"].split("/")[0] for f in body["files"]} == {batch_name}
    assert batch_name not in json.dumps(kit.without_names(body))
    page = platform.http("status", "status_dashboard")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert f'id="batch-{batch}"' in page.get_data(as_text=True)
    missing = platform.http("status", "status_batch", batch_id="no-such-batch")
    assert missing.status_code == 404 and missing.get_json() == {"error": "unknown batch", "status": 404}


def test_deliver_answers_500_while_another_delivery_holds_the_batch(
    platform: Platform, tmp_path: Path, batch_name: str
) -> None:
    """A retryable condition is a 5xx (Pub/Sub redelivers); nothing is lost meanwhile."""
    _anonymize(platform, platform.upload(tmp_path, batch_name))
    batch = _batch(platform, batch_name)
    _complete(platform, batch)
    assert platform.http("send", "send", batch_id=batch).status_code == 202
    (message,) = platform.pull_deliver_messages(1)
    store = Store.of(platform.clients.firestore, platform.settings)
    held = deliveries.claim_delivery(store, batch_id=batch, delivery_id=None, owner="another-instance")
    assert held.granted
    assert platform.message_event("deliver", message).status_code == 500
    assert batch_doc(platform.clients, batch)["status"] == BatchState.SENDING
    deliveries.release_delivery(store, batch_id=batch, owner="another-instance")
    assert platform.message_event("deliver", message).status_code == 200  # the redelivery
    assert batch_doc(platform.clients, batch)["status"] == BatchState.SENT


def test_dead_letters_of_an_upload_and_of_a_delivery_are_recorded(
    platform: Platform, tmp_path: Path, batch_name: str
) -> None:
    (up,) = platform.upload(tmp_path, batch_name)
    batch = _batch(platform, batch_name)
    values = up.values(platform.bucket, platform.project)
    assert platform.event("dead_letter", "dead_letter_upload", **values).status_code == 200
    (doc,) = files_of(platform.clients, batch)
    assert doc["state"] == FileState.FAILED and doc["reason"] == "dead-lettered after 5 deliveries"
    batch_state = _complete(platform, batch)
    assert batch_state["status"] == BatchState.EMPTY and batch_state["has_error"] is True

    other = f"{batch_name}D"
    _anonymize(platform, platform.upload(tmp_path / "d", other))
    sending = _batch(platform, other)
    _complete(platform, sending)
    assert platform.http("send", "send", batch_id=sending).status_code == 202
    response = platform.event("dead_letter", "dead_letter_delivery", batch_id=sending, delivery_id="d-1")
    assert response.status_code == 200
    reset = batch_doc(platform.clients, sending)
    assert reset["status"] == BatchState.DONEPROCESSING and reset["has_error"] is True
    assert reset["last_delivery_error"] == "delivery failed after 5 attempts; the batch can be sent again"


def test_a_sweep_tick_settles_a_stable_batch_and_acks(
    platform: Platform, tmp_path: Path, batch_name: str
) -> None:
    """The scheduler's tick, pushed to `sweep`: 2xx always (the next tick is the retry), and a batch quiet
    for the stable age ends settled (by these ticks or the stack's own, which run the same code)."""
    _anonymize(platform, platform.upload(tmp_path, batch_name))
    batch = _batch(platform, batch_name)

    def settled_by_a_tick() -> dict[str, Any] | None:
        assert platform.event("sweep", "sweep_tick").status_code == 200
        doc = batch_doc(platform.clients, batch)
        return doc if doc.get("status") == BatchState.DONEPROCESSING else None

    doc = wait_for(settled_by_a_tick, 60, 0.5, what="a tick to settle the batch")
    assert doc["completed_by"] == "stable" and doc["counts"]["total"] == 1
