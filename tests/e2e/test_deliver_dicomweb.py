"""deliver to the DICOMweb target on the local stack: the stack's real Orthanc (DICOMweb plugin) beside the
destination bucket, as `make up` runs it (SENDIT_DELIVERY_TARGETS=bucket,dicomweb).

The module fixture uploads one folder with the real upload CLI (`sendit upload`, sealed by its manifest),
sends it over HTTP and waits until the deliver function (Pub/Sub push) has delivered it; the first tests
read what Orthanc holds (QIDO-RS, WADO-RS), then a resend and a redelivery of the same batch must store
nothing twice. The fault tests work on seeded batches (support.sendkit): Orthanc stopped during a
delivery, an instance Orthanc refuses, and a delivery to the DICOMweb server alone.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread
from support import phi
from support import sendkit as kit
from support.dicom import PLANTED, StudySpec, write_study
from support.log_metrics import function_names, metric_filters
from support.logquery import cloud_run_entry, compile_filter

from sendit import dicomweb as dw
from sendit import events, naming
from sendit.app.context import Context
from sendit.clients import Clients
from sendit.config import Settings
from sendit.errors import RetryableError
from sendit.local.emulators import http_ok
from sendit.logs import JsonFormatter
from sendit.stages import deliver
from sendit.store import deliveries as ds

pytestmark = pytest.mark.stack

CT_SERIES, CT_IMAGES, MR_IMAGES = 2, 3, 2
DICOM_FILES = CT_SERIES * CT_IMAGES + MR_IMAGES
MR_PATIENT = {"patient_name": "Webperson^Dagny", "patient_id": "MRN6612093", "accession": "ACC6612093"}


@dataclasses.dataclass
class Delivered:
    """The batch the module fixture uploaded, sent and saw delivered."""

    ctx: Context
    env: dict[str, str]
    folder: Path
    batch_id: str
    sent: list[dict[str, Any]]  # its SENT file documents

    @property
    def studies(self) -> dict[str, set[str]]:
        """study pseudonym -> its SOP Instance UIDs (pseudonyms), from the file documents."""
        out: dict[str, set[str]] = {}
        for doc in self.sent:
            out.setdefault(doc["ids"]["study_uid"], set()).add(doc["ids"]["instance_uid"])
        return out


def _client(stack: Any) -> dw.DicomwebClient:
    return dw.DicomwebClient(stack.settings_env()["SENDIT_DICOMWEB_URL"])


def _orthanc_instances(stack: Any) -> int:
    """Orthanc's own count of stored instances (its REST API, not DICOMweb)."""
    with urllib.request.urlopen(f"{stack.orthanc_url}/statistics", timeout=10) as response:
        return int(json.load(response)["CountInstances"])


def _status(env: dict[str, str], batch_id: str) -> dict[str, Any]:
    code, body = kit.get_json(f"{env['SENDIT_STATUS_URL']}/batches/{batch_id}", params={"page_size": 1000})
    assert code == 200, code
    phi.remember("status API (dicomweb e2e)", json.dumps(kit.without_names(body)))
    return dict(body)


def _sent_with(ctx: Context, batch_id: str, delivery_id: str) -> dict[str, Any] | None:
    """The batch once SENT with the record of ``delivery_id``."""
    batch = kit.batch_doc(ctx, batch_id)
    records = [d for d in batch.get("deliveries") or [] if d.get("delivery_id") == delivery_id]
    return batch if batch.get("status") == "SENT" and records else None


def _record(batch: dict[str, Any], delivery_id: str | None = None) -> dict[str, Any]:
    records = batch["deliveries"]
    return next(d for d in records if d["delivery_id"] == delivery_id) if delivery_id else records[-1]


@pytest.fixture(scope="module")
def delivered(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Delivered:
    env = stack.stack_env()
    assert env["SENDIT_DELIVERY_TARGETS"] == "bucket,dicomweb"  # the local stack's default
    ctx = kit.context(Settings.from_env(stack.settings_env()), Clients(stack.project))
    name = f"W{uuid.uuid4().hex[:10]}"
    folder = tmp_path_factory.mktemp("dicomweb") / name
    base = random.randrange(10**6, 10**9)
    ct = StudySpec(modality="CT", series=CT_SERIES, instances=CT_IMAGES, study_index=base)
    write_study(folder, ct, folder="ct")
    mr = StudySpec(modality="MR", instances=MR_IMAGES, study_index=base + 1, **MR_PATIENT)
    write_study(folder, mr, folder="mr")
    (folder / "notes.txt").write_text("not a DICOM file\n")
    phi.uploaded(f"{name}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*") if p.is_file())
    batch_id = naming.batch_id(ctx.settings.secret_key, ctx.settings.staging_bucket, name)
    upload = [sys.executable, "-m", "sendit.cli", "upload", "--quiet", str(folder)]
    subprocess.run(upload, check=True, timeout=120, env={**os.environ, **env}, capture_output=True)

    def complete() -> bool:
        batch = kit.batch_doc(ctx, batch_id)
        return batch.get("status") == "DONEPROCESSING" and batch["counts"]["total"] == DICOM_FILES + 1

    kit.wait_for(complete, 120, 0.2, "the upload complete (sealed by its manifest)")
    code, body = kit.post(env["SENDIT_SEND_URL"], {"batches": [batch_id]})
    assert code == 202 and body["queued"] == [batch_id], body
    kit.wait_for(lambda: kit.batch_doc(ctx, batch_id).get("status") == "SENT", 120, 0.2, "batch SENT")
    sent = [f for f in kit.file_docs(ctx, batch_id) if f["state"] == "SENT"]
    return Delivered(ctx, env, folder, batch_id, sent)


def test_every_delivered_instance_is_on_orthanc_byte_for_byte(stack: Any, delivered: Delivered) -> None:
    ctx, client = delivered.ctx, _client(stack)
    assert len(delivered.sent) == DICOM_FILES and len(delivered.studies) == 2
    for study_uid, instance_uids in delivered.studies.items():
        (found,) = client.search_studies(StudyInstanceUID=study_uid)  # QIDO-RS by study
        assert found[dw.TAG_STUDY_INSTANCE_UID]["Value"] == [study_uid]
        assert client.instance_uids(study_uid) == instance_uids
        assert len(client.search_instances(study_uid)) == len(instance_uids)

    rows = {r["instance_uid"]: r for r in kit.bigquery_rows(ctx, delivered.batch_id)}
    assert set(rows) == {f["ids"]["instance_uid"] for f in delivered.sent}
    doc = delivered.sent[0]
    ids = doc["ids"]
    data = client.retrieve_instance(ids["study_uid"], ids["series_uid"], ids["instance_uid"])  # WADO-RS
    bucket, name = naming.split_gs_uri(doc["sent_uri"])
    assert data == ctx.clients.storage.bucket(bucket).blob(name).download_as_bytes()  # the bucket copy
    ds_ = dcmread(io.BytesIO(data))
    row = rows[ids["instance_uid"]]
    uids = (ds_.StudyInstanceUID, ds_.SeriesInstanceUID, ds_.SOPInstanceUID)
    assert uids == (ids["study_uid"], ids["series_uid"], ids["instance_uid"])
    assert uids == (row["study_uid"], row["series_uid"], row["instance_uid"])
    assert ds_.PatientID == row["patient_id"] == ids["patient_id"]
    assert row["uri"] == doc["sent_uri"] and all(uid.startswith("2.25.") for uid in uids)

    # Where the delivery went, as the status API says it.
    batch = _status(delivered.env, delivered.batch_id)
    assert batch["counts"]["SENT"] == DICOM_FILES and batch["counts"]["FAILED"] == 1  # notes.txt
    (record,) = batch["deliveries"]
    assert record["targets"] == ["bucket", "dicomweb"]
    assert record["objects"] == record["objects_written"] == DICOM_FILES
    root = ctx.settings.dicomweb_url
    assert record["dicomweb"] == {
        "url": root,
        "stored": DICOM_FILES,
        "already_present": 0,
        "failed": 0,
        "studies": 2,
        "study_urls": sorted(naming.dicomweb_study_url(str(root), s) for s in delivered.studies),
    }
    assert {f["dicomweb"] for f in batch["files"] if f["state"] == "SENT"} == {"stored"}
    for url in record["dicomweb"]["study_urls"]:  # each URL answers QIDO-RS with its instances
        response = requests.get(f"{url}/instances", headers={"Accept": "application/dicom+json"}, timeout=10)
        assert response.status_code == 200 and len(response.json()) in {CT_SERIES * CT_IMAGES, MR_IMAGES}


def test_nothing_orthanc_stores_carries_a_planted_identifier(stack: Any, delivered: Delivered) -> None:
    client = _client(stack)
    needles = phi.needles([b"Webperson", b"Dagny", *(v.encode() for v in MR_PATIENT.values())])
    assert {v.encode() for v in PLANTED.values()} <= set(needles)  # the CT patient's planted identifiers
    scanned = 0
    for study_uid in delivered.studies:
        metadata = json.dumps(client.search_instances(study_uid, includefield="all")).encode()
        assert phi.leaks(metadata, needles) == [], "QIDO-RS metadata"
        for found in client.search_instances(study_uid):
            series_uid = found[dw.TAG_SERIES_INSTANCE_UID]["Value"][0]
            sop_uid = found[dw.TAG_SOP_INSTANCE_UID]["Value"][0]
            data = client.retrieve_instance(study_uid, series_uid, sop_uid)
            assert phi.leaks(data, needles) == [], f"instance {sop_uid}"
            scanned += 1
    assert scanned == DICOM_FILES


def test_a_resend_and_a_redelivery_store_nothing_twice(stack: Any, delivered: Delivered) -> None:
    ctx, env, batch_id, client = delivered.ctx, delivered.env, delivered.batch_id, _client(stack)
    counts = {s: len(client.search_instances(s)) for s in delivered.studies}
    orthanc_before = _orthanc_instances(stack)

    # A resend: the same folder uploaded again (gsutil: new generations, so new files of the batch with
    # the same pseudonyms), then `send --force`.
    subprocess.run([env["SENDIT_UPLOAD_CMD"], str(delivered.folder)], check=True, timeout=120)

    def reprocessed() -> bool:
        batch = kit.batch_doc(ctx, batch_id)
        return batch.get("status") == "DONEPROCESSING" and batch["counts"]["ANONYMIZED"] == DICOM_FILES

    kit.wait_for(reprocessed, 120, 0.2, "the re-uploaded files processed")
    code, body = kit.post(env["SENDIT_SEND_URL"], {"batches": [batch_id], "force": True})
    assert code == 202 and body["queued"] == [batch_id], body
    again = kit.batch_doc(ctx, batch_id)["delivery_id"]
    batch = kit.wait_for(lambda: _sent_with(ctx, batch_id, again), 120, 0.2, "the resend delivered")
    record = _record(batch, again)
    assert record["files"] == DICOM_FILES and record["dicomweb"]["stored"] == 0
    assert record["dicomweb"]["already_present"] == DICOM_FILES and record["dicomweb"]["failed"] == 0
    assert {s: len(client.search_instances(s)) for s in delivered.studies} == counts
    assert _orthanc_instances(stack) == orthanc_before

    # A redelivery of that deliver message after a crash between STOW-RS and marking the files: the files
    # back to ANONYMIZED, the batch SENDING without the record, and the same message published again.
    resent = [f for f in kit.file_docs(ctx, batch_id) if f.get("delivery_id") == again]
    assert len(resent) == DICOM_FILES
    files_col = ctx.clients.firestore.collection(ctx.settings.files_collection)
    for doc in resent:
        files_col.document(doc["key"]).update({"state": "ANONYMIZED", "delivery_id": None, "dicomweb": None})
    batch_ref = ctx.store.batch_ref(batch_id)
    kept = [d for d in kit.batch_doc(ctx, batch_id)["deliveries"] if d["delivery_id"] != again]
    batch_ref.update({"status": "SENDING", "delivery_id": again, "deliveries": kept})
    data, attributes = events.deliver_message(batch_id, again)
    topic = ctx.clients.topic_path(ctx.settings.deliver_topic)
    ctx.clients.publisher.publish(topic, data, **attributes).result(timeout=30)
    batch = kit.wait_for(lambda: _sent_with(ctx, batch_id, again), 120, 0.2, "the redelivery delivered")
    record = _record(batch, again)
    assert (record["files"], record["dicomweb"]["stored"]) == (DICOM_FILES, 0)
    assert record["dicomweb"]["already_present"] == DICOM_FILES
    assert {s: len(client.search_instances(s)) for s in delivered.studies} == counts
    assert _orthanc_instances(stack) == orthanc_before
    rows = kit.bigquery_rows(ctx, batch_id)  # one row per distinct instance, whatever was re-sent
    assert sorted(r["instance_uid"] for r in rows) == sorted(f["ids"]["instance_uid"] for f in delivered.sent)
    assert sorted(f["state"] for f in kit.file_docs(ctx, batch_id)).count("SENT") == 2 * DICOM_FILES


# ------------------------------------------------------------------------------- faults on seeded batches
@pytest.fixture
def ctx(settings: Any, clients: Any) -> Context:
    return kit.context(settings, clients)


def _studies(series: int = 2, instances: int = 3) -> list[StudySpec]:
    return [StudySpec(series=series, instances=instances, study_index=random.randrange(10**6, 10**9))]


def _queue(ctx: Context, batch_id: str) -> str:
    delivery_id = uuid.uuid4().hex
    assert ds.request_send(ctx.store, batch_id=batch_id, delivery_id=delivery_id).outcome == "queued"
    return delivery_id


@pytest.fixture
def orthanc(stack: Any) -> Iterator[Any]:
    """The stack's Orthanc, running again after the test whatever the test did to it."""
    service = stack.service("orthanc")
    try:
        yield service
    finally:
        if not http_ok(f"{stack.orthanc_url}/system"):
            service.stop()
            service.start()
            service.wait_ready(time.monotonic() + 60)


def test_orthanc_stopped_mid_delivery_the_delivery_retries_and_completes(
    stack: Any, ctx: Context, orthanc: Any, tmp_path: Path, batch_name: str
) -> None:
    """Through the deliver function: Orthanc goes away while the delivery runs, comes back 3 s later, and
    the client's retries carry the delivery through; every file arrives once."""
    seeded = kit.seed_batch(ctx, tmp_path, batch_name, _studies())
    study_uid = seeded.anonymized[0]["ids"]["study_uid"]
    orthanc.stop()
    try:
        code, body = kit.post(stack.function_url("send"), {"batches": [seeded.batch_id]})
        assert code == 202 and body["queued"] == [seeded.batch_id], body
        # The positive signal that the delivery is under way while Orthanc is down: it holds the lease.
        kit.wait_for(lambda: kit.batch_doc(ctx, seeded.batch_id).get("deliver_lease"), 30, 0.1, "the lease")
        assert kit.batch_doc(ctx, seeded.batch_id)["status"] == "SENDING"
        time.sleep(3)  # the outage itself, not a wait for a result
        assert kit.batch_doc(ctx, seeded.batch_id)["status"] == "SENDING"  # it cannot finish without Orthanc
    finally:
        orthanc.start()
        orthanc.wait_ready(time.monotonic() + 60)
    kit.wait_for(lambda: kit.batch_doc(ctx, seeded.batch_id)["status"] == "SENT", 90, 0.2, "SENT")
    docs = kit.file_docs(ctx, seeded.batch_id)
    assert sorted(f["state"] for f in docs) == ["SENT"] * 6
    assert _client(stack).instance_uids(study_uid) == {f["ids"]["instance_uid"] for f in docs}
    record = _record(kit.batch_doc(ctx, seeded.batch_id))
    assert (record["dicomweb"]["stored"], record["dicomweb"]["failed"], record["files"]) == (6, 0, 6)


def test_server_unavailable_after_retries_raises_and_the_redelivery_completes(
    stack: Any, ctx: Context, orthanc: Any, tmp_path: Path, batch_name: str
) -> None:
    """Orthanc gone for longer than the client's retries (shortened here): the delivery raises a
    RetryableError (Pub/Sub redelivers), marks nothing and releases its lease; the next attempt stores the
    rest and finds what the first stored (QIDO-RS): no file lost, none stored twice."""
    seeded = kit.seed_batch(ctx, tmp_path, batch_name, _studies(series=3, instances=2))
    delivery_id = _queue(ctx, seeded.batch_id)
    url = str(ctx.settings.dicomweb_url)
    session = dw.build_session(url, retry=dw.retry_policy(retries=2, backoff=0.05))
    posts: list[int] = []

    def stop_after_first_series(response: requests.Response, *args: object, **kwargs: object) -> None:
        if response.request.method == "POST":
            posts.append(response.status_code)
            if len(posts) == 1:
                orthanc.stop()

    session.hooks["response"].append(stop_after_first_series)
    short = Context(settings=ctx.settings, clients=ctx.clients, _dicomweb=dw.DicomwebClient(url, session))
    with pytest.raises(RetryableError) as caught:
        deliver.deliver_batch(short, seeded.batch_id, delivery_id)
    assert caught.value.cause_type == "DicomwebUnavailable" and posts == [200]
    batch = kit.batch_doc(ctx, seeded.batch_id)
    assert batch["status"] == "SENDING" and "deliver_lease" not in batch and not batch.get("deliveries")
    assert sorted(f["state"] for f in kit.file_docs(ctx, seeded.batch_id)) == ["ANONYMIZED"] * 6
    assert kit.destination_blobs(ctx, {seeded.anonymized[0]["ids"]["study_uid"]}) == []

    orthanc.start()
    orthanc.wait_ready(time.monotonic() + 60)
    result = deliver.deliver_batch(short, seeded.batch_id, delivery_id)  # the redelivery
    assert result.status == "SENT" and result.files == 6 and result.errors == []
    assert (result.dicomweb_present, result.dicomweb_stored) == (2, 4)  # the first series was there
    study_uid = seeded.anonymized[0]["ids"]["study_uid"]
    assert _client(stack).instance_uids(study_uid) == {f["ids"]["instance_uid"] for f in seeded.anonymized}
    assert len(_client(stack).search_instances(study_uid)) == 6


def test_an_instance_orthanc_refuses_fails_alone_with_its_reason(
    stack: Any, ctx: Context, tmp_path: Path, batch_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A clean object whose pixel data is cut short: its header reads (so it is sent), Orthanc cannot
    parse it and refuses it (400). That file is FAILED with the reason; the others arrive everywhere. Its
    one log line carries the file key and the reason, and counts as a failed file (monitoring.tf)."""
    seeded = kit.seed_batch(ctx, tmp_path, batch_name, _studies(series=2, instances=2))
    bad, *good = seeded.anonymized
    bucket, name = naming.split_gs_uri(bad["clean_uri"])
    blob = ctx.clients.storage.bucket(bucket).blob(name)
    blob.upload_from_string(blob.download_as_bytes()[:-1024], content_type="application/dicom")
    delivery_id = _queue(ctx, seeded.batch_id)

    with caplog.at_level(logging.INFO, logger="sendit.deliver"):
        result = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id)

    reason = "dicomweb-http-400"
    (line,) = [
        json.loads(JsonFormatter().format(r)) for r in caplog.records if r.getMessage() == "file FAILED"
    ]
    assert {k: line[k] for k in ("event", "file_key", "batch_id", "state", "reason")} == {
        "event": "delivery_failure",
        "file_key": bad["key"],
        "batch_id": seeded.batch_id,
        "state": "FAILED",
        "reason": reason,
    }
    assert line["severity"] == "WARNING" and not kit.planted_in(json.dumps(line))
    entry = cloud_run_entry(line, function_names()["deliver"])
    matching = {m for m, f in metric_filters().items() if compile_filter(f)(entry)}
    assert matching == {"failed_files"}  # a failed file; not a second terminal outcome, not an error
    assert result.status == "SENT" and result.errors == [{"file": bad["key"], "reason": reason}]
    assert (result.files, result.dicomweb_stored, result.dicomweb_failed) == (3, 3, 1)
    states = {f["key"]: (f["state"], f.get("reason")) for f in kit.file_docs(ctx, seeded.batch_id)}
    assert states == {bad["key"]: ("FAILED", reason)} | {f["key"]: ("SENT", None) for f in good}
    study_uid = bad["ids"]["study_uid"]
    assert _client(stack).instance_uids(study_uid) == {f["ids"]["instance_uid"] for f in good}
    blobs = {b.name.rsplit("/", 1)[-1] for b in kit.destination_blobs(ctx, {study_uid})}
    assert blobs == {f"{f['ids']['instance_uid']}.dcm" for f in good}  # the refused one went nowhere
    assert sorted(r["instance_uid"] for r in kit.bigquery_rows(ctx, seeded.batch_id)) == sorted(
        f["ids"]["instance_uid"] for f in good
    )
    batch = kit.batch_doc(ctx, seeded.batch_id)
    assert batch["has_error"] is True and {"file": bad["key"], "reason": reason} in batch["errors"]
    assert (batch["counts"]["FAILED"], batch["counts"]["SENT"], batch["counts"]["ANONYMIZED"]) == (1, 3, 0)
    record = _record(batch)
    assert (record["dicomweb"]["stored"], record["dicomweb"]["failed"], record["errors"]) == (3, 1, 1)
    assert record["removed"] == 0  # something failed: nothing is cleaned up
    failed_doc = next(f for f in kit.file_docs(ctx, seeded.batch_id) if f["key"] == bad["key"])
    assert failed_doc["failed_delivery_id"] == delivery_id


def test_dicomweb_as_the_only_target(stack: Any, ctx: Context, tmp_path: Path, batch_name: str) -> None:
    """SENDIT_DELIVERY_TARGETS=dicomweb: nothing in the bucket; rows and files point at the instances on
    the server, and cleanup removes the clean objects once QIDO-RS shows the server holds them."""
    only = kit.context(dataclasses.replace(ctx.settings, delivery_targets=("dicomweb",)), ctx.clients)
    seeded = kit.seed_batch(only, tmp_path, batch_name, _studies(series=1, instances=3))
    study_uid = seeded.anonymized[0]["ids"]["study_uid"]

    result = deliver.deliver_batch(only, seeded.batch_id, _queue(only, seeded.batch_id))

    assert result.status == "SENT" and (result.files, result.dicomweb_stored, result.removed) == (3, 3, 3)
    assert kit.destination_blobs(only, {study_uid}) == []
    root = str(only.settings.dicomweb_url)
    docs = kit.file_docs(only, seeded.batch_id)
    assert {f["sent_uri"] for f in docs} == {naming.dicomweb_instance_url(root, f["ids"]) for f in docs}
    assert {r["uri"] for r in kit.bigquery_rows(only, seeded.batch_id)} == {f["sent_uri"] for f in docs}
    client = _client(stack)
    for doc in docs:
        ids = doc["ids"]
        data = client.retrieve_instance(ids["study_uid"], ids["series_uid"], ids["instance_uid"])
        assert len(data) == doc["sent_size"]
    processing = only.clients.storage.bucket(only.settings.processing_bucket)
    assert all(processing.get_blob(naming.split_gs_uri(f["clean_uri"])[1]) is None for f in docs)
    record = _record(kit.batch_doc(only, seeded.batch_id))
    assert record["targets"] == ["dicomweb"] and record["objects"] == 0 and record["bytes"] > 0
    assert record["dicomweb"]["study_urls"] == [naming.dicomweb_study_url(root, study_uid)]
    job = only.clients.bigquery.query(
        f"SELECT gcs_prefix, https_url, dicomweb_url FROM `{only.settings.study_table}` "
        f"WHERE batch_id = '{seeded.batch_id}'"
    )
    (row,) = [dict(r.items()) for r in job.result(timeout=30)]
    assert row == {
        "gcs_prefix": "",
        "https_url": None,
        "dicomweb_url": naming.dicomweb_study_url(root, study_uid),
    }


def test_a_dicomweb_url_that_refuses_the_request_is_not_a_file_failure(
    ctx: Context, tmp_path: Path, batch_name: str
) -> None:
    """A wrong service root (Orthanc answers 404 to QIDO-RS there): a configuration problem, raised for
    the whole delivery (Pub/Sub retries, then the dead letter puts the batch back); no file is FAILED."""
    seeded = kit.seed_batch(ctx, tmp_path, batch_name, _studies(series=1, instances=1))
    delivery_id = _queue(ctx, seeded.batch_id)
    wrong = f"{str(ctx.settings.dicomweb_url).rsplit('/', 1)[0]}/not-dicom-web"
    broken = Context(settings=ctx.settings, clients=ctx.clients, _dicomweb=dw.DicomwebClient(wrong))
    with pytest.raises(dw.DicomwebRequestError):
        deliver.deliver_batch(broken, seeded.batch_id, delivery_id)
    assert [f["state"] for f in kit.file_docs(ctx, seeded.batch_id)] == ["ANONYMIZED"]
    assert "deliver_lease" not in kit.batch_doc(ctx, seeded.batch_id)
    result = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id)  # fixed: the next attempt delivers
    assert result.status == "SENT" and result.files == 1
