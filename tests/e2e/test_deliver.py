"""deliver on real emulator state: layout, rows, verification, idempotency, faults, cleanup, dead letters."""

from __future__ import annotations

import dataclasses
import gzip
import io
import random
import tarfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from support import sendkit as kit
from support.dicom import StudySpec

from sendit.delivery import rows as bq
from sendit.errors import BatchBusy, BatchReopened
from sendit.stages import dead_letter, deliver
from sendit.store import deliveries as ds

pytestmark = pytest.mark.stack


def two_studies() -> list[StudySpec]:
    """A CT study of the planted patient and an MR study of another; fresh study UIDs per call."""
    base = random.randrange(10**6, 10**9)
    return [
        StudySpec(modality="CT", series=2, instances=2, study_index=base),
        StudySpec(
            modality="MR",
            series=1,
            instances=2,
            study_index=base + 1,
            patient_name="Otherperson^Anna",
            patient_id="MRN000222",
            accession="ACC000222",
        ),
    ]


@pytest.fixture
def ctx(settings: Any, clients: Any) -> Any:
    return kit.context(settings, clients)


def _queue(ctx: Any, batch_id: str) -> str:
    delivery_id = uuid.uuid4().hex
    decision = ds.request_send(ctx.store, batch_id=batch_id, delivery_id=delivery_id)
    assert decision.outcome == "queued"
    return delivery_id


def _seed(ctx: Any, tmp_path: Path, batch_name: str, **kwargs: Any) -> kit.Seeded:
    return kit.seed_batch(ctx, tmp_path, batch_name, kwargs.pop("studies", None) or two_studies(), **kwargs)


def test_deliver_instance_layout(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    seeded = _seed(ctx, tmp_path, batch_name, extra_files=[("SKIPPED", "burned-in annotation")])
    anonymized = seeded.anonymized
    assert len(anonymized) == 6
    delivery_id = _queue(ctx, seeded.batch_id)

    result = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id)

    assert result.outcome == "delivered" and result.status == "SENT"
    assert (result.files, result.rows_inserted, result.objects_written) == (6, 6, 6)
    studies_sent = {f["ids"]["study_uid"] for f in anonymized}
    blobs = kit.destination_blobs(ctx, studies_sent)
    by_instance = {f["ids"]["instance_uid"]: f for f in anonymized}
    assert len(blobs) == 6
    for blob in blobs:
        parts = blob.name.split("/")
        assert parts[:3] == ["Collection", ctx.settings.collection, "Entity"] and len(parts) == 7
        doc = by_instance[parts[6].removesuffix(".dcm")]
        ids = doc["ids"]
        assert parts[3:6] == [ids["patient_id"], ids["study_uid"], ids["series_uid"]]
        assert blob.md5_hash == doc["clean_md5"]
        assert not kit.planted_in(blob.download_as_bytes())

    rows = kit.bigquery_rows(ctx, seeded.batch_id)
    assert sorted(r["instance_uid"] for r in rows) == sorted(by_instance)
    names = {b.name for b in blobs}
    for row in rows:
        bucket, _, name = row["uri"].removeprefix("gs://").partition("/")
        assert bucket == ctx.settings.destination_bucket and name in names
        assert row["md5"] == by_instance[row["instance_uid"]]["clean_md5"]
        assert row["size_bytes"] == by_instance[row["instance_uid"]]["clean_size"]
        assert row["collection"] == ctx.settings.collection and row["sent_at"] is not None
        assert isinstance(row["header"], dict) and row["header"]
    assert not kit.planted_in(kit.rows_text(rows))

    files = {f["key"]: f for f in kit.file_docs(ctx, seeded.batch_id)}
    assert sorted(f["state"] for f in files.values()) == ["SENT"] * 6 + ["SKIPPED"]
    batch = kit.batch_doc(ctx, seeded.batch_id)
    assert batch["status"] == "SENT" and "deliver_lease" not in batch
    assert batch["counts"] == {
        "RECEIVED": 0,
        "ANONYMIZED": 0,
        "SKIPPED": 1,
        "FAILED": 0,
        "SENT": 6,
        "total": 7,
    }
    (record,) = batch["deliveries"]
    assert (record["files"], record["rows"], record["objects"]) == (6, 6, 6)
    assert record["bytes"] == sum(f["clean_size"] for f in anonymized) and record["send_seconds"] >= 0
    # default cleanup: processing objects gone once the destination verified
    processing = ctx.clients.storage.bucket(ctx.settings.processing_bucket)
    assert record["removed"] == 6
    assert all(processing.get_blob(f["clean_uri"].split("/", 3)[3]) is None for f in anonymized)


def test_a_row_that_cannot_be_built_fails_that_file_not_the_delivery(
    ctx: Any, tmp_path: Path, batch_name: str
) -> None:
    """RowError is permanent for its image: that file is FAILED with the reason, the others are delivered."""
    seeded = _seed(ctx, tmp_path, batch_name)
    bad, *good = seeded.anonymized
    files_col = ctx.clients.firestore.collection(ctx.settings.files_collection)
    files_col.document(bad["key"]).update({"row.instance_uid": None})  # a REQUIRED column left empty
    delivery_id = _queue(ctx, seeded.batch_id)

    result = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id)  # returns: nothing to retry

    reason = "row cannot be built: required column instance_uid is empty"
    assert result.status == "SENT" and result.errors == [{"file": bad["key"], "reason": reason}]
    assert (result.files, result.rows_inserted, result.objects_written) == (len(good), len(good), len(good))
    states = {f["key"]: (f["state"], f.get("reason")) for f in kit.file_docs(ctx, seeded.batch_id)}
    assert states == {bad["key"]: ("FAILED", reason)} | {f["key"]: ("SENT", None) for f in good}
    rows = kit.bigquery_rows(ctx, seeded.batch_id)
    assert sorted(r["instance_uid"] for r in rows) == sorted(f["ids"]["instance_uid"] for f in good)
    destination = {b.name.rsplit("/", 1)[-1] for b in kit.destination_blobs(ctx, {bad["ids"]["study_uid"]})}
    assert f"{bad['ids']['instance_uid']}.dcm" not in destination
    batch = kit.batch_doc(ctx, seeded.batch_id)
    assert batch["has_error"] is True and {"file": bad["key"], "reason": reason} in batch["errors"]
    assert batch["counts"]["FAILED"] == 1 and batch["counts"]["SENT"] == len(good)


def test_send_twice_and_retry_after_bigquery_failure_add_no_duplicates(
    ctx: Any, tmp_path: Path, batch_name: str
) -> None:
    seeded = _seed(ctx, tmp_path, batch_name)
    delivery_id = _queue(ctx, seeded.batch_id)
    calls: list[int] = []

    def failing_once(client: Any, table: str, rows: Any, row_ids: Any) -> int:
        calls.append(len(rows))
        if len(calls) == 1:
            raise ConnectionError("injected: BigQuery unreachable after the bucket write")
        return bq.insert_rows(client, table, rows, row_ids)

    with pytest.raises(ConnectionError):
        deliver.deliver_batch(ctx, seeded.batch_id, delivery_id, insert_rows=failing_once)
    studies_sent = {f["ids"]["study_uid"] for f in seeded.anonymized}
    assert len(kit.destination_blobs(ctx, studies_sent)) == 6  # the objects were written
    assert kit.bigquery_rows(ctx, seeded.batch_id) == []
    batch = kit.batch_doc(ctx, seeded.batch_id)
    assert batch["status"] == "SENDING" and "deliver_lease" not in batch  # released for the retry

    retried = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id, insert_rows=failing_once)
    assert retried.status == "SENT"
    assert (retried.objects_written, retried.objects_reused, retried.rows_inserted) == (0, 6, 6)

    # The same message again, and a second send: nothing new.
    again = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id)
    assert again.outcome == "skipped:not_sending"
    decision = ds.request_send(ctx.store, batch_id=seeded.batch_id, delivery_id=uuid.uuid4().hex)
    assert decision.outcome == "already_sent"

    rows = kit.bigquery_rows(ctx, seeded.batch_id)
    assert len(rows) == 6 and len({r["instance_uid"] for r in rows}) == 6
    assert len(kit.destination_blobs(ctx, studies_sent)) == 6
    assert len(kit.batch_doc(ctx, seeded.batch_id)["deliveries"]) == 1


def test_retry_after_rows_landed_but_files_not_marked(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    """The insert succeeded and then the function died: the retry finds the rows and inserts none."""
    seeded = _seed(ctx, tmp_path, batch_name, studies=two_studies()[:1])
    delivery_id = _queue(ctx, seeded.batch_id)

    def insert_then_die(client: Any, table: str, rows: Any, row_ids: Any) -> int:
        bq.insert_rows(client, table, rows, row_ids)
        raise TimeoutError("injected: died after the insert")

    with pytest.raises(TimeoutError):
        deliver.deliver_batch(ctx, seeded.batch_id, delivery_id, insert_rows=insert_then_die)
    assert len(kit.bigquery_rows(ctx, seeded.batch_id)) == 4
    retried = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id)
    assert retried.status == "SENT" and retried.rows_inserted == 0
    assert len(kit.bigquery_rows(ctx, seeded.batch_id)) == 4


def test_tar_layout_one_deterministic_archive_per_study(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    tar_ctx = kit.context(
        dataclasses.replace(ctx.settings, delivery_layout="tar", cleanup="never"), ctx.clients
    )
    seeded = _seed(tar_ctx, tmp_path, batch_name)
    delivery_id = _queue(tar_ctx, seeded.batch_id)

    result = deliver.deliver_batch(tar_ctx, seeded.batch_id, delivery_id)

    assert result.status == "SENT" and result.objects_written == 2 and result.removed == 0
    studies_sent = {f["ids"]["study_uid"] for f in seeded.anonymized}
    blobs = kit.destination_blobs(tar_ctx, studies_sent)
    assert len(blobs) == 2
    studies = {f["ids"]["study_uid"]: f["ids"] for f in seeded.anonymized}
    rows = kit.bigquery_rows(tar_ctx, seeded.batch_id)
    assert len(rows) == 6
    for blob in blobs:
        parts = blob.name.split("/")
        assert len(parts) == 5 and parts[4].endswith(".tar.gz")
        ids = studies[parts[4].removesuffix(".tar.gz")]
        assert parts[3] == ids["patient_id"]
        data = blob.download_as_bytes()
        assert not kit.planted_in(gzip.decompress(data))
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getnames()
        expected = sorted(
            f"{f['ids']['series_uid']}/{f['ids']['instance_uid']}.dcm"
            for f in seeded.anonymized
            if f["ids"]["study_uid"] == ids["study_uid"]
        )
        assert sorted(members) == expected
        uri = f"gs://{tar_ctx.settings.destination_bucket}/{blob.name}"
        assert sorted(r["uri"] for r in rows if r["study_uid"] == ids["study_uid"]) == [uri] * len(expected)
        assert {r["md5"] for r in rows if r["uri"] == uri} == {blob.md5_hash}
    # cleanup=never keeps the processing objects
    processing = tar_ctx.clients.storage.bucket(tar_ctx.settings.processing_bucket)
    assert all(processing.get_blob(f["clean_uri"].split("/", 3)[3]) for f in seeded.anonymized)

    # A re-run of the same delivery rebuilds byte-identical archives (same MD5): reused, not rewritten.
    # (put the batch and its files back as a redelivered message would find them after a crash)
    tar_ctx.clients.firestore.collection(tar_ctx.settings.batches_collection).document(
        seeded.batch_id
    ).update({"status": "SENDING"})
    for f in seeded.anonymized:
        tar_ctx.clients.firestore.collection(tar_ctx.settings.files_collection).document(f["key"]).update(
            {"state": "ANONYMIZED"}
        )
    rerun = deliver.deliver_batch(tar_ctx, seeded.batch_id, delivery_id)
    assert (rerun.objects_written, rerun.objects_reused, rerun.rows_inserted) == (0, 2, 0)
    assert len(kit.destination_blobs(tar_ctx, studies_sent)) == 2
    assert len(kit.bigquery_rows(tar_ctx, seeded.batch_id)) == 6


def test_missing_clean_object_fails_that_file_and_keeps_everything(
    ctx: Any, tmp_path: Path, batch_name: str
) -> None:
    seeded = _seed(ctx, tmp_path, batch_name, studies=two_studies()[:1])
    lost = seeded.anonymized[0]
    ctx.clients.storage.bucket(ctx.settings.processing_bucket).blob(
        lost["clean_uri"].split("/", 3)[3]
    ).delete()
    delivery_id = _queue(ctx, seeded.batch_id)

    result = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id)

    assert result.status == "SENT" and result.files == 3 and result.removed == 0
    assert result.errors == [{"file": lost["key"], "reason": "clean object missing at delivery"}]
    states = {f["key"]: (f["state"], f.get("reason")) for f in kit.file_docs(ctx, seeded.batch_id)}
    assert states[lost["key"]] == ("FAILED", "clean object missing at delivery")
    batch = kit.batch_doc(ctx, seeded.batch_id)
    assert batch["has_error"] is True and batch["counts"]["FAILED"] == 1 and batch["counts"]["SENT"] == 3
    processing = ctx.clients.storage.bucket(ctx.settings.processing_bucket)
    kept = [f for f in seeded.anonymized if f is not lost]
    assert all(processing.get_blob(f["clean_uri"].split("/", 3)[3]) for f in kept)  # error: keep everything


def test_concurrent_delivery_waits_for_the_lease(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    seeded = _seed(ctx, tmp_path, batch_name, studies=two_studies()[:1])
    delivery_id = _queue(ctx, seeded.batch_id)
    claim = ds.claim_delivery(ctx.store, batch_id=seeded.batch_id, delivery_id=delivery_id, owner="other")
    assert claim.granted
    with pytest.raises(BatchBusy):
        deliver.deliver_batch(ctx, seeded.batch_id, delivery_id, owner="me")
    ds.release_delivery(ctx.store, batch_id=seeded.batch_id, owner="other")
    assert deliver.deliver_batch(ctx, seeded.batch_id, delivery_id, owner="me").status == "SENT"


def test_dead_letter_puts_the_batch_back_with_a_reason(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    seeded = _seed(ctx, tmp_path, batch_name, studies=two_studies()[:1])
    _queue(ctx, seeded.batch_id)

    assert dead_letter.dead_delivery(ctx, seeded.batch_id, 5) is True

    batch = kit.batch_doc(ctx, seeded.batch_id)
    assert batch["status"] == "DONEPROCESSING" and batch["has_error"] is True
    assert batch["errors"][-1] == {
        "file": "",
        "reason": "delivery failed after 5 attempts; the batch can be sent again",
    }
    assert dead_letter.dead_delivery(ctx, seeded.batch_id, 5) is False  # not SENDING any more: no change
    # ... and it can be sent again.
    delivery_id = _queue(ctx, seeded.batch_id)
    assert deliver.deliver_batch(ctx, seeded.batch_id, delivery_id).status == "SENT"


def test_late_file_goes_out_in_a_follow_up_delivery(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    seeded = _seed(ctx, tmp_path, batch_name, studies=two_studies()[:1])
    first = _queue(ctx, seeded.batch_id)
    deliver.deliver_batch(ctx, seeded.batch_id, first)
    late = kit.seed_batch(ctx, tmp_path / "late", batch_name, [two_studies()[1]])  # same folder: same batch
    assert late.batch_id == seeded.batch_id

    second = _queue(ctx, seeded.batch_id)
    result = deliver.deliver_batch(ctx, seeded.batch_id, second)

    assert result.files == 2 and result.rows_inserted == 2
    batch = kit.batch_doc(ctx, seeded.batch_id)
    assert [d["files"] for d in batch["deliveries"]] == [4, 2]
    assert len(kit.bigquery_rows(ctx, seeded.batch_id)) == 6


def test_stuck_delivery_is_dead_lettered_through_pubsub(
    stack: Any, ctx: Any, tmp_path: Path, batch_name: str
) -> None:
    """A lease nobody releases makes every delivery attempt fail; after the subscription's last attempt the
    message reaches the dead-letter function, which puts the batch back with a reason (no mocks)."""
    seeded = _seed(ctx, tmp_path, batch_name, studies=two_studies()[:1])
    ref = ctx.clients.firestore.collection(ctx.settings.batches_collection).document(seeded.batch_id)
    ref.update({"deliver_lease": {"owner": "a-dead-instance", "until": ds.now() + timedelta(seconds=600)}})

    code, body = kit.post(stack.function_url("send"), {"batches": [seeded.batch_id]})
    assert code == 202 and body["queued"] == [seeded.batch_id]

    def reset() -> dict[str, Any] | None:
        batch = kit.batch_doc(ctx, seeded.batch_id)
        return batch if batch["status"] == "DONEPROCESSING" else None

    batch = kit.wait_for(reset, 90, 0.5, "the dead-letter handler to reset the batch")
    assert batch["has_error"] is True and "deliver_lease" not in batch
    assert batch["errors"][-1]["reason"].startswith("delivery failed after 5 attempts")
    assert kit.bigquery_rows(ctx, seeded.batch_id) == []
    # the operator sends it again, and now it goes through
    code, _ = kit.post(stack.function_url("send"), {"batches": [seeded.batch_id]})
    assert code == 202
    kit.wait_for(lambda: kit.batch_doc(ctx, seeded.batch_id)["status"] == "SENT", 60, what="SENT")
    assert len(kit.bigquery_rows(ctx, seeded.batch_id)) == 4


def test_batch_reopened_after_send_waits_then_delivers(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    """A late file reopens the batch between the send and the deliver message: the message waits
    (raises, Pub/Sub retries) while the batch processes and resumes once it is DONEPROCESSING again."""
    seeded = _seed(ctx, tmp_path, batch_name, studies=two_studies()[:1])
    delivery_id = _queue(ctx, seeded.batch_id)
    ref = ctx.clients.firestore.collection(ctx.settings.batches_collection).document(seeded.batch_id)
    ref.update({"status": "PROCESSING"})  # what the pipeline does when a late file arrives

    with pytest.raises(BatchReopened):
        deliver.deliver_batch(ctx, seeded.batch_id, delivery_id)
    assert "deliver_lease" not in kit.batch_doc(ctx, seeded.batch_id)

    ref.update({"status": "DONEPROCESSING"})
    result = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id)
    assert result.status == "SENT" and result.files == 4
    # an older message (another delivery id) is acked without work
    stale = deliver.deliver_batch(ctx, seeded.batch_id, "an-older-delivery")
    assert stale.outcome == "skipped:stale"
