"""Faults in the file step: crashes, held leases, give-up, vanished objects, transient errors, dead letters.

Most tests call the library directly on an object in a bucket without notifications, so the function
server does not race them. A fault is injected with monkeypatch only where the emulators cannot produce
it (a process dying between two calls; an API answering 503).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import Conflict, ServiceUnavailable
from support.dicom import StudySpec, write_study
from support.pipeline import batch_of, clean_objects, files_of, wait_batch
from support.polling import wait_for

from sendit import completion, naming
from sendit.app.context import Context
from sendit.errors import RetryableError
from sendit.events import DEAD_LETTER_COUNT, PUBSUB_PUBLISHED, ObjectFinalized
from sendit.stages import anonymize, dead_letter
from sendit.store import batches, files
from sendit.store.base import Store
from sendit.store.vocabulary import BatchState, FileState

pytestmark = pytest.mark.stack

DIRECT_BUCKET = "sendit-direct-test"  # no notifications: only the staging bucket notifies


class Crash(BaseException):
    """The instance dies (not an Exception: nothing in the handler may catch it)."""


@pytest.fixture(scope="module")
def ctx(stack: Any, clients: Any) -> Iterator[Context]:
    from sendit.config import Settings

    settings = Settings.from_env(stack.settings_env())
    with contextlib.suppress(Conflict):
        clients.storage.create_bucket(DIRECT_BUCKET)
    yield Context(settings=settings, clients=clients)


def _put(ctx: Context, tmp_path: Path, folder: str, name: str = "x.dcm", **spec: Any) -> ObjectFinalized:
    (path,) = write_study(tmp_path, StudySpec(instances=1, **spec), folder=folder)
    blob = ctx.clients.storage.bucket(DIRECT_BUCKET).blob(f"{folder}/{name}")
    blob.upload_from_filename(str(path))
    blob.reload()
    return ObjectFinalized(
        bucket=DIRECT_BUCKET,
        name=blob.name,
        generation=str(blob.generation),
        size=int(blob.size),
        md5=blob.md5_hash,
        event_id="test-event",
    )


def _batch(ctx: Context, folder: str) -> str:
    return naming.batch_id(ctx.settings.secret_key, DIRECT_BUCKET, folder)


def _settled(ctx: Context, batch: str, statuses: set[str]) -> dict[str, Any]:
    """Wait for the stack's sweep to settle a batch (stable age) and return its document."""

    def done() -> dict[str, Any] | None:
        doc = batches.get_batch(ctx.store, batch=batch)
        return doc if doc and doc.get("status") in statuses else None

    return wait_for(done, 60, what=f"batch in {sorted(statuses)}")


def _file(ctx: Context, obj: ObjectFinalized) -> dict[str, Any]:
    doc = files.get_file(ctx.store, key=naming.file_key(obj.bucket, obj.name, obj.generation))
    assert doc is not None
    return doc


def test_crash_between_clean_write_and_record_leaves_one_file_and_one_state(
    ctx: Context, batch_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj = _put(ctx, tmp_path, batch_name)
    batch = _batch(ctx, batch_name)

    def crash(*args: Any, **kwargs: Any) -> bool:
        raise Crash()

    monkeypatch.setattr(files, "record_terminal", crash)
    with pytest.raises(Crash):
        anonymize.process_object(ctx, obj, lease_seconds=0)
    monkeypatch.undo()
    (written,) = clean_objects(ctx.clients, ctx.settings.processing_bucket, batch)
    assert _file(ctx, obj)["state"] == FileState.RECEIVED

    result = anonymize.process_object(ctx, obj)  # the redelivery: lease expired, claimed again
    assert result.claim == "claimed" and result.state == FileState.ANONYMIZED
    (again,) = clean_objects(ctx.clients, ctx.settings.processing_bucket, batch)
    assert again.name == written.name and again.md5_hash == written.md5_hash
    doc = _file(ctx, obj)
    assert doc["state"] == FileState.ANONYMIZED and doc["attempts"] == 2
    assert doc["clean_uri"] == f"gs://{ctx.settings.processing_bucket}/{written.name}"
    done = _settled(ctx, batch, {BatchState.DONEPROCESSING})  # the sweep, once the batch is stable
    assert done["counts"]["total"] == 1 and done["counts"][FileState.ANONYMIZED] == 1

    assert anonymize.process_object(ctx, obj).claim == "duplicate"
    assert len(files_of(ctx.clients, batch)) == 1
    assert len(clean_objects(ctx.clients, ctx.settings.processing_bucket, batch)) == 1


def test_held_lease_is_retryable_and_expired_lease_is_reclaimed(
    ctx: Context, batch_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj = _put(ctx, tmp_path, batch_name)
    monkeypatch.setattr(files, "record_terminal", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        anonymize.process_object(ctx, obj)  # default lease: still held afterwards
    monkeypatch.undo()

    with pytest.raises(RetryableError, match="lease held") as info:
        anonymize.process_object(ctx, obj)
    assert batch_name not in str(info.value) and obj.name not in str(info.value)
    assert _file(ctx, obj)["attempts"] == 1

    later = datetime.now(UTC) + timedelta(seconds=ctx.settings.lease_seconds + 1)
    result = anonymize.process_object(ctx, obj, now=later)
    assert result.state == FileState.ANONYMIZED and _file(ctx, obj)["attempts"] == 2


def test_gives_up_after_max_attempts(
    ctx: Context, batch_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limited = Context(settings=dataclasses.replace(ctx.settings, max_attempts=2), clients=ctx.clients)
    limited._engine = ctx.engine
    obj = _put(ctx, tmp_path, batch_name)
    monkeypatch.setattr(files, "record_terminal", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    for _ in range(2):
        with pytest.raises(Crash):
            anonymize.process_object(limited, obj, lease_seconds=0)
    monkeypatch.undo()

    result = anonymize.process_object(limited, obj)
    assert result.claim == "gave_up" and result.state == FileState.FAILED
    doc = _file(ctx, obj)
    assert doc["state"] == FileState.FAILED and doc["reason"] == "gave up after 2 attempts"
    batch = _settled(ctx, _batch(ctx, batch_name), {BatchState.EMPTY})
    assert batch["has_error"] is True
    assert batch["errors"][0]["reason"] == "gave up after 2 attempts"


def test_vanished_object_fails_with_reason(ctx: Context, batch_name: str, tmp_path: Path) -> None:
    obj = _put(ctx, tmp_path, batch_name)
    ctx.clients.storage.bucket(DIRECT_BUCKET).blob(obj.name).delete()
    result = anonymize.process_object(ctx, obj)  # returns normally: the message is acked
    assert result.state == FileState.FAILED and result.reason == "object no longer exists"
    assert _file(ctx, obj)["reason"] == "object no longer exists"


def test_transient_error_is_retryable_without_phi_and_releases_the_claim(
    ctx: Context, batch_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj = _put(ctx, tmp_path, batch_name)

    def unavailable(*args: Any, **kwargs: Any) -> int:
        raise ServiceUnavailable(f"GET gs://{DIRECT_BUCKET}/{obj.name}: 503")  # names the object, as GCS does

    monkeypatch.setattr(anonymize.storage, "download", unavailable)
    with pytest.raises(RetryableError) as info:
        anonymize.process_object(ctx, obj)
    monkeypatch.undo()
    message = str(info.value)
    assert "ServiceUnavailable" in message and "de-identify" in message
    assert batch_name not in message and obj.name not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    doc = _file(ctx, obj)
    assert doc["state"] == FileState.RECEIVED and doc["lease_until"] <= datetime.now(UTC)

    result = anonymize.process_object(ctx, obj)  # the redelivery proceeds at once
    assert result.state == FileState.ANONYMIZED and _file(ctx, obj)["attempts"] == 2


def test_identity_provider_unreachable_is_retried_and_releases_the_claim(
    ctx: Context, batch_name: str, tmp_path: Path
) -> None:
    """IdentityError (the honest broker does not answer) is transient: retried, never a terminal state."""
    with socket.socket() as sock:  # a port nobody listens on: connection refused, for real
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    broker_down = Context(
        settings=dataclasses.replace(ctx.settings, identity_provider="http", identity_url=closed),
        clients=ctx.clients,
    )
    obj = _put(ctx, tmp_path, batch_name)
    with pytest.raises(RetryableError, match="transient error during de-identify: IdentityError") as info:
        anonymize.process_object(broker_down, obj)
    assert info.value.transient and batch_name not in str(info.value)
    doc = _file(ctx, obj)
    assert doc["state"] == FileState.RECEIVED and doc["lease_until"] <= datetime.now(UTC)

    result = anonymize.process_object(ctx, obj)  # the redelivery, once the broker answers again
    assert result.state == FileState.ANONYMIZED and _file(ctx, obj)["attempts"] == 2


def _event(data: bytes, attributes: dict[str, str]) -> dict[str, Any]:
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": "m-1",
        }
    }


def test_events_that_are_not_staging_uploads_are_acked_and_ignored(ctx: Context, batch_name: str) -> None:
    staging = ctx.settings.staging_bucket
    name = f"{batch_name}/a.dcm"
    base = {"bucketId": staging, "objectId": name, "objectGeneration": "7"}
    resource = json.dumps({"bucket": staging, "name": name, "generation": "7"}).encode()
    other = json.dumps({"bucket": "elsewhere", "name": name, "generation": "7"}).encode()
    placeholder = json.dumps({"bucket": staging, "name": f"{batch_name}/", "generation": "7"}).encode()
    cases = [
        (PUBSUB_PUBLISHED, _event(resource, {**base, "eventType": "OBJECT_DELETE"})),
        (PUBSUB_PUBLISHED, _event(other, {"eventType": "OBJECT_FINALIZE"})),
        (PUBSUB_PUBLISHED, _event(placeholder, {"eventType": "OBJECT_FINALIZE"})),
        (PUBSUB_PUBLISHED, _event(b"{not json", {"eventType": "OBJECT_FINALIZE"})),
        (PUBSUB_PUBLISHED, {"no": "message"}),
        ("google.cloud.audit.log.v1.written", {}),
    ]
    for event_type, data in cases:
        assert anonymize.handle_event(ctx, event_type, data, "e") is None
    assert (
        batches.get_batch(ctx.store, batch=naming.batch_id(ctx.settings.secret_key, staging, batch_name))
        is None
    )


def test_dead_letter_marks_file_failed_and_leaves_terminal_files_alone(
    ctx: Context, batch_name: str, tmp_path: Path
) -> None:
    done = _put(ctx, tmp_path, batch_name, "done.dcm")
    assert anonymize.process_object(ctx, done).state == FileState.ANONYMIZED
    lost = ObjectFinalized(DIRECT_BUCKET, f"{batch_name}/lost.dcm", "42", 10, None, "e")
    dead = dataclasses.replace(ctx.settings, staging_bucket=DIRECT_BUCKET)
    dctx = Context(settings=dead, clients=ctx.clients)
    for obj in (done, lost):
        attributes = {
            "eventType": "OBJECT_FINALIZE",
            "bucketId": obj.bucket,
            "objectId": obj.name,
            "objectGeneration": obj.generation,
            DEAD_LETTER_COUNT: "5",
        }
        resource = json.dumps({"bucket": obj.bucket, "name": obj.name, "generation": obj.generation})
        dead_letter.handle_event(dctx, PUBSUB_PUBLISHED, _event(resource.encode(), attributes), "d")
    assert _file(ctx, done)["state"] == FileState.ANONYMIZED
    failed = _file(ctx, lost)
    assert failed["state"] == FileState.FAILED and failed["reason"] == "dead-lettered after 5 deliveries"
    batch = _settled(ctx, _batch(ctx, batch_name), {BatchState.DONEPROCESSING})
    assert batch["counts"]["FAILED"] == 1 and batch["counts"]["total"] == 2
    assert batch["has_error"] is True


def test_poison_notification_is_dead_lettered_and_recorded(
    stack: Any, clients: Any, settings: Any, batch_name: str
) -> None:
    """Real subscriptions: a file whose lease never frees is retried 5 times, then dead-lettered."""
    name, generation = f"{batch_name}/stuck.dcm", "1700000000000001"
    obj = ObjectFinalized(settings.staging_bucket, name, generation, 0, None, "e")
    batch = batch_of(settings, batch_name)
    claim = files.claim_file(
        Store.of(clients.firestore), obj=obj, batch=batch, max_attempts=5, lease_seconds=3600
    )
    assert claim.kind == "claimed"
    resource = json.dumps({"bucket": obj.bucket, "name": name, "generation": generation, "size": "0"})
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": obj.bucket,
        "objectId": name,
        "objectGeneration": generation,
        "payloadFormat": "JSON_API_V1",
    }
    topic = clients.topic_path(stack.topic("uploads"))
    clients.publisher.publish(topic, resource.encode(), **attributes).result(timeout=10)
    doc = wait_batch(clients, batch, {BatchState.EMPTY}, 1, timeout=90)
    (failed,) = files_of(clients, batch)
    assert failed["state"] == FileState.FAILED and failed["reason"] == "dead-lettered after 5 deliveries"
    assert doc["has_error"] is True


def test_duplicate_after_crash_before_finalize_corrects_stale_counts(
    ctx: Context, batch_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A racing completion wrote DONEPROCESSING with the counts of the first file only (the second was
    claimed just after its pass), and the instance of the second died between its terminal write and its
    completion check: the redelivery finds the counts off the tally, reopens the batch, and the sweep
    settles it again with both files."""
    first = _put(ctx, tmp_path / "a", batch_name, "a.dcm", study_index=11)
    second = _put(ctx, tmp_path / "b", batch_name, "b.dcm", study_index=12)
    batch = _batch(ctx, batch_name)
    assert anonymize.process_object(ctx, first).state == FileState.ANONYMIZED

    def crash(*args: Any, **kwargs: Any) -> str:
        raise Crash()

    monkeypatch.setattr(completion, "after_terminal", crash)
    with pytest.raises(Crash):
        anonymize.process_object(ctx, second)
    monkeypatch.undo()
    assert _file(ctx, second)["state"] == FileState.ANONYMIZED
    # What the racing completion left behind: done, but counting the first file only.
    stale = {**batches.batch_counts(ctx.store, batch=batch), FileState.ANONYMIZED: 1, "total": 1}
    ctx.store.batch_ref(batch).update({"status": BatchState.DONEPROCESSING, "counts": stale})

    assert anonymize.process_object(ctx, second).claim == "duplicate"

    def healed() -> dict[str, Any] | None:
        doc = batches.get_batch(ctx.store, batch=batch) or {}
        counts = doc.get("counts") or {}
        done = doc.get("status") == BatchState.DONEPROCESSING and counts.get(FileState.ANONYMIZED) == 2
        return doc if done else None

    assert wait_for(healed, 60, what="the batch settled again with both files")["counts"]["total"] == 2
