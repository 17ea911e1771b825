"""The study table on the local stack: one row per delivered study and delivery, checked against the image
rows and the destination bucket; retries and re-sends add no row; the cohort query of docs/send.md."""

from __future__ import annotations

import dataclasses
import random
import re
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery
from support import phi
from support import sendkit as kit
from support.dicom import StudySpec

from sendit.delivery import rows as bq
from sendit.stages import deliver
from sendit.store import deliveries as ds

pytestmark = pytest.mark.stack

DOCS = Path(__file__).resolve().parents[2] / "docs" / "send.md"


@pytest.fixture
def ctx(settings: Any, clients: Any) -> Any:
    return kit.context(settings, clients)


def _studies() -> list[StudySpec]:
    base = random.randrange(10**6, 10**9)
    return [
        StudySpec(modality="CT", series=3, instances=2, study_index=base),
        StudySpec(
            modality="MR",
            series=1,
            instances=3,
            study_index=base + 1,
            patient_name="Otherperson^Anna",
            patient_id="MRN000333",
            accession="ACC000333",
        ),
    ]


def _send(ctx: Any, batch_id: str, **kwargs: Any) -> tuple[str, deliver.Delivery]:
    delivery_id = uuid.uuid4().hex
    assert ds.request_send(ctx.store, batch_id=batch_id, delivery_id=delivery_id).outcome == "queued"
    return delivery_id, deliver.deliver_batch(ctx, batch_id, delivery_id, **kwargs)


def study_rows(ctx: Any, batch_id: str) -> list[dict[str, Any]]:
    job = ctx.clients.bigquery.query(
        f"SELECT * FROM `{ctx.settings.study_table}` WHERE batch_id = @b ORDER BY series_count DESC",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter("b", "STRING", batch_id)]
        ),
        timeout=30,
    )
    found = [dict(row.items()) for row in job.result(timeout=30)]
    phi.remember("study-table rows", kit.rows_text(found))
    return found


def test_one_row_per_study_matches_image_rows_and_bucket(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    seeded = kit.seed_batch(ctx, tmp_path, batch_name, _studies())
    delivery_id, result = _send(ctx, seeded.batch_id)
    assert result.status == "SENT" and result.study_rows_inserted == 2

    rows = study_rows(ctx, seeded.batch_id)
    images = kit.bigquery_rows(ctx, seeded.batch_id)
    assert len(rows) == 2 and not kit.planted_in(kit.rows_text(rows))
    blobs = {f"gs://{ctx.settings.destination_bucket}/{b.name}": b for b in kit.destination_blobs(ctx)}
    for row in rows:
        mine = [r for r in images if r["study_uid"] == row["study_uid"]]
        assert row["delivery_id"] == delivery_id and row["collection"] == ctx.settings.collection
        assert row["patient_id"] == mine[0]["patient_id"] and row["accession"] == mine[0]["accession"]
        assert row["study_date"] == mine[0]["study_date"]
        assert row["modalities"] == sorted({r["modality"] for r in mine})
        assert row["images_delivered"] == len(mine)
        series = {r["series_uid"] for r in mine}
        assert row["series_count"] == len(series) == len(row["series"])
        for entry in row["series"]:
            assert entry["images"] == sum(1 for r in mine if r["series_uid"] == entry["series_uid"])
            assert entry["series_number"] == next(
                r["series_number"] for r in mine if r["series_uid"] == entry["series_uid"]
            )
        # where it went: the prefix holds exactly the study's images, and their sizes add up
        under = [b for uri, b in blobs.items() if uri.startswith(row["gcs_prefix"])]
        assert sorted(f"gs://{b.bucket.name}/{b.name}" for b in under) == sorted(r["uri"] for r in mine)
        assert row["bytes"] == sum(b.size for b in under) == sum(r["size_bytes"] for r in mine)
        assert row["https_url"].endswith(
            f"/{ctx.settings.destination_bucket}/{row['gcs_prefix'][5:].split('/', 1)[1]}"
        )
        assert row["deid_method"] == mine[0]["deid_method"]
        assert row["recipe_hash"] and row["recipe_hash"] in mine[0]["deid_method"]
        # the local stack delivers to its Orthanc too (SENDIT_DELIVERY_TARGETS=bucket,dicomweb)
        assert row["dicomweb_url"] == f"{ctx.settings.dicomweb_url}/studies/{row['study_uid']}"
        assert (row["images_skipped"], row["images_failed"]) == (0, 0)
    assert [r["series_count"] for r in rows] == [3, 1] and [r["modalities"] for r in rows] == [["CT"], ["MR"]]

    # The same message again, and a second send: no row more.
    assert deliver.deliver_batch(ctx, seeded.batch_id, delivery_id).outcome == "skipped:not_sending"
    again = ds.request_send(ctx.store, batch_id=seeded.batch_id, delivery_id=uuid.uuid4().hex)
    assert again.outcome == "already_sent"
    assert len(study_rows(ctx, seeded.batch_id)) == 2


def test_counts_by_reason_and_a_retry_after_the_insert(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    """A one-study batch: its filtered files count for the study by reason; a retry inserts nothing."""
    extra = [
        ("SKIPPED", "burned-in annotation"),
        ("SKIPPED", "burned-in annotation"),
        ("FAILED", "not DICOM"),
    ]
    seeded = kit.seed_batch(ctx, tmp_path, batch_name, _studies()[:1], extra_files=extra)
    delivery_id = uuid.uuid4().hex
    assert ds.request_send(ctx.store, batch_id=seeded.batch_id, delivery_id=delivery_id).outcome == "queued"
    died: list[str] = []

    def insert_then_die(client: Any, table: str, rows: Any, row_ids: Any) -> int:
        inserted = bq.insert_rows(client, table, rows, row_ids)
        if table == ctx.settings.study_table:
            died.append(table)
            raise TimeoutError("injected: died after the study insert")
        return inserted

    with pytest.raises(TimeoutError):
        deliver.deliver_batch(ctx, seeded.batch_id, delivery_id, insert_rows=insert_then_die)
    assert died and len(study_rows(ctx, seeded.batch_id)) == 1
    retried = deliver.deliver_batch(ctx, seeded.batch_id, delivery_id)
    assert retried.status == "SENT" and retried.study_rows_inserted == 0

    (row,) = study_rows(ctx, seeded.batch_id)
    assert (row["images_delivered"], row["images_skipped"], row["images_failed"]) == (6, 2, 1)
    assert row["skipped"] == [{"reason": "burned-in annotation", "images": 2}]
    assert row["failed"] == [{"reason": "not DICOM", "images": 1}]


def test_tar_layout_and_dicomweb_links(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    settings = dataclasses.replace(
        ctx.settings, delivery_layout="tar", cleanup="never", delivery_targets=("bucket", "dicomweb")
    )
    tar_ctx = kit.context(settings, ctx.clients)
    seeded = kit.seed_batch(tar_ctx, tmp_path, batch_name, _studies()[:1])
    _send(tar_ctx, seeded.batch_id)
    (row,) = study_rows(tar_ctx, seeded.batch_id)
    (image_uri,) = {r["uri"] for r in kit.bigquery_rows(tar_ctx, seeded.batch_id)}
    assert row["gcs_prefix"] == image_uri and image_uri.endswith(f"/{row['study_uid']}.tar.gz")
    blob = tar_ctx.clients.storage.bucket(settings.destination_bucket).get_blob(image_uri.split("/", 3)[3])
    assert row["bytes"] == blob.size
    assert row["https_url"] == f"https://storage.cloud.google.com/{image_uri[5:]}"
    assert row["dicomweb_url"] == f"{settings.dicomweb_url}/studies/{row['study_uid']}"


def cohort_query() -> str:
    """The query of docs/send.md, as the docs print it."""
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(r"<!-- cohort-query -->\s*```sql\n(.*?)```", text, re.S)
    assert found, "docs/send.md lost its cohort query"
    return found.group(1)


def test_the_cohort_query_of_the_docs(ctx: Any, tmp_path: Path, batch_name: str) -> None:
    seeded = kit.seed_batch(ctx, tmp_path, batch_name, _studies())
    _send(ctx, seeded.batch_id)
    rows = {r["modalities"][0]: r for r in study_rows(ctx, seeded.batch_id)}
    ct_date: date = rows["CT"]["study_date"]
    sql = cohort_query().replace("PROJECT.sendit.studies", ctx.settings.study_table)

    def run(modality: str, min_series: int, start: date, end: date) -> set[str]:
        params = [
            bigquery.ScalarQueryParameter("modality", "STRING", modality),
            bigquery.ScalarQueryParameter("min_series", "INT64", min_series),
            bigquery.ScalarQueryParameter("start_date", "DATE", start),
            bigquery.ScalarQueryParameter("end_date", "DATE", end),
        ]
        job = ctx.clients.bigquery.query(
            sql, job_config=bigquery.QueryJobConfig(query_parameters=params), timeout=30
        )
        return {r["study_uid"] for r in job.result(timeout=30) if r["batch_id"] == seeded.batch_id}

    day = timedelta(days=1)
    assert run("CT", 2, ct_date - day, ct_date + day) == {rows["CT"]["study_uid"]}
    assert run("CT", 3, ct_date - day, ct_date + day) == set()  # more than 3 series: none
    assert run("CT", 2, ct_date + day, ct_date + 2 * day) == set()  # outside the dates
    mr_date: date = rows["MR"]["study_date"]
    assert run("MR", 0, mr_date, mr_date) == {rows["MR"]["study_uid"]}
    assert run("MR", 1, mr_date, mr_date) == set()


def test_end_to_end_upload_send_and_resend(stack: Any, ctx: Any, tmp_path: Path, batch_name: str) -> None:
    """Real upload -> anonymize -> POST /send -> deliver over Pub/Sub: one study row, checked against the
    image rows, the file documents' reasons and the bucket; a re-send adds none."""
    import subprocess

    from support.dicom import write_study

    from sendit import naming

    env = stack.stack_env()
    status_url, send_url = env["SENDIT_STATUS_URL"], env["SENDIT_SEND_URL"]
    base = random.randrange(10**6, 10**9)
    folder = tmp_path / batch_name
    write_study(folder, StudySpec(modality="CT", series=2, instances=2, study_index=base), folder="ct")
    write_study(folder, StudySpec(instances=1, study_index=base + 1, burned_in=True), folder="burned")
    (folder / "notes.txt").write_text("not a DICOM file\n")
    phi.uploaded(f"{batch_name}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*") if p.is_file())
    batch_id = naming.batch_id(ctx.settings.secret_key, ctx.settings.staging_bucket, batch_name)
    subprocess.run([env["SENDIT_UPLOAD_CMD"], str(folder)], check=True, timeout=120)

    def all_done() -> bool:
        code, body = kit.get_json(f"{status_url}/batches/{batch_id}", params={"page_size": 1})
        return code == 200 and body["status"] == "DONEPROCESSING" and body["counts"].get("total") == 6

    kit.wait_for(all_done, 120, 0.1, "all six files received and terminal")
    code, body = kit.post(send_url, {"batches": [batch_id]})
    assert code == 202 and body["queued"] == [batch_id], body
    kit.wait_for(lambda: kit.batch_status(status_url, batch_id) == "SENT", 120, 0.1, "batch SENT")

    (row,) = study_rows(ctx, batch_id)
    images = kit.bigquery_rows(ctx, batch_id)
    docs = kit.file_docs(ctx, batch_id)
    reasons = {d["state"]: d["reason"] for d in docs if d["state"] in ("SKIPPED", "FAILED")}
    assert sorted(d["state"] for d in docs) == ["FAILED", "SENT", "SENT", "SENT", "SENT", "SKIPPED"]
    assert (row["images_delivered"], row["images_skipped"], row["images_failed"]) == (4, 1, 1)
    assert row["skipped"] == [{"reason": reasons["SKIPPED"], "images": 1}]
    assert row["failed"] == [{"reason": reasons["FAILED"], "images": 1}]
    assert row["study_uid"] == images[0]["study_uid"] and len(images) == 4
    assert row["series_count"] == 2 and sorted(s["images"] for s in row["series"]) == [2, 2]
    assert {s["series_uid"] for s in row["series"]} == {r["series_uid"] for r in images}
    blobs = list(
        ctx.clients.storage.list_blobs(
            ctx.settings.destination_bucket, prefix=row["gcs_prefix"][5:].split("/", 1)[1]
        )
    )
    assert sorted(f"gs://{b.bucket.name}/{b.name}" for b in blobs) == sorted(r["uri"] for r in images)
    assert row["bytes"] == sum(b.size for b in blobs)
    delivery = kit.batch_doc(ctx, batch_id)["deliveries"][0]
    assert row["delivery_id"] == delivery["delivery_id"] and delivery["studies"] == 1
    assert delivery["unattributed"] == {}

    code, again = kit.post(send_url, {"batches": [batch_id]})
    # queued == [] is the positive signal: no delivery message was published, so the table can be read now
    assert code == 200 and again["already_sent"] == [batch_id] and again["queued"] == [], again
    assert len(study_rows(ctx, batch_id)) == 1


def test_descriptions_are_carried_when_clean_descriptors_keeps_them(
    ctx: Any, tmp_path: Path, batch_name: str
) -> None:
    kept = kit.context(dataclasses.replace(ctx.settings, profile_options=("clean_descriptors",)), ctx.clients)
    seeded = kit.seed_batch(kept, tmp_path, batch_name, _studies()[:1])
    _send(kept, seeded.batch_id)
    (row,) = study_rows(kept, seeded.batch_id)
    assert row["study_description"] and row["study_description"].startswith("CT CHEST")
    assert not kit.planted_in(row["study_description"])  # the planted name inside it is cleaned away
    assert {s["description"] for s in row["series"]} == {"AXIAL 1.25"}

    # without the option (the default) both are removed, as the image rows' headers show
    plain = kit.seed_batch(ctx, tmp_path, batch_name + "p", _studies()[:1])
    _send(ctx, plain.batch_id)
    (row,) = study_rows(ctx, plain.batch_id)
    assert row["study_description"] is None and {s["description"] for s in row["series"]} == {None}
