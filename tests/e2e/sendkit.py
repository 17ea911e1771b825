"""Helpers for the send/deliver/status tests: seed real emulator state, read what arrived, poll.

``seed_batch`` de-identifies synthetic studies with the real engine, writes the clean files to the
processing bucket and the batch/file documents of docs/state.md to Firestore, as the anonymize function
leaves them at DONEPROCESSING. The tests then exercise send, deliver and status against that state.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import requests
from dicom_factory import PLANTED, StudySpec, write_study
from google.cloud import bigquery
from polling import wait_for as wait_for  # re-exported: the e2e tests call kit.wait_for

from sendit.deid.identity import keyed_digest
from sendit.runtime import Context

T = TypeVar("T")


@dataclass
class Seeded:
    batch_id: str
    folder: str
    files: list[dict[str, Any]] = field(default_factory=list)  # file docs with "key"

    @property
    def anonymized(self) -> list[dict[str, Any]]:
        return [f for f in self.files if f["state"] == "ANONYMIZED"]


def context(settings: Any, clients: Any) -> Context:
    return Context(settings=settings, clients=clients)


def seed_batch(
    ctx: Context,
    root: Path,
    folder: str,
    studies: list[StudySpec],
    status: str = "DONEPROCESSING",
    extra_files: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> Seeded:
    """De-identify ``studies`` and leave them as the pipeline does. ``extra_files``: (state, reason)."""
    settings, clients = ctx.settings, ctx.clients
    batch_id = keyed_digest(settings.secret_key, f"{settings.staging_bucket}/{folder}", 16)
    seeded = Seeded(batch_id, folder)
    db = clients.firestore
    processing = clients.storage.bucket(settings.processing_bucket)
    now = datetime.now(UTC)
    size_total = 0
    for index, spec in enumerate(studies):
        for path in write_study(root / folder, spec, folder=f"study_{index}_{uuid.uuid4().hex[:6]}"):
            rel = path.relative_to(root).as_posix()
            generation = str(int(time.time() * 1e6))
            key = hashlib.sha256(f"{settings.staging_bucket}/{rel}#{generation}".encode()).hexdigest()[:32]
            out = io.BytesIO()
            outcome = ctx.engine.process(path, out)
            raw = path.read_bytes()
            doc: dict[str, Any] = {
                "batch_id": batch_id,
                "bucket": settings.staging_bucket,
                "object": rel,
                "generation": generation,
                "size": len(raw),
                "md5": base64.b64encode(hashlib.md5(raw).digest()).decode(),
                "name_hash": hashlib.sha256(rel.encode()).hexdigest()[:12],
                "state": outcome.state,
                "reason": outcome.reason,
                "attempts": 1,
                "created_at": now,
                "updated_at": now,
            }
            size_total += len(raw)
            if outcome.state == "ANONYMIZED":
                assert outcome.ids is not None
                ids = outcome.ids
                name = f"{batch_id}/{ids.study_uid}/{ids.series_uid}/{ids.instance_uid}.dcm"
                blob = processing.blob(name)
                blob.upload_from_string(out.getvalue(), content_type="application/dicom")
                blob.reload()
                doc.update(
                    ids={
                        "patient_id": ids.patient_id,
                        "study_uid": ids.study_uid,
                        "series_uid": ids.series_uid,
                        "instance_uid": ids.instance_uid,
                        "accession": ids.accession,
                    },
                    study_date=outcome.study_date,
                    clean_uri=f"gs://{settings.processing_bucket}/{name}",
                    clean_size=blob.size,
                    clean_md5=blob.md5_hash,
                    row=dict(outcome.row),
                )
            db.collection(settings.files_collection).document(key).set(doc)
            seeded.files.append(dict(doc, key=key))
    for index, (state, reason) in enumerate(extra_files):
        key = uuid.uuid4().hex
        doc = {
            "batch_id": batch_id,
            "bucket": settings.staging_bucket,
            "object": f"{folder}/extra_{index}.bin",
            "generation": "1",
            "size": 10,
            "name_hash": uuid.uuid4().hex[:12],
            "state": state,
            "reason": reason,
            "created_at": now,
            "updated_at": now,
        }
        db.collection(settings.files_collection).document(key).set(doc)
        seeded.files.append(dict(doc, key=key))
    counts = {s: sum(1 for f in seeded.files if f["state"] == s) for s in ("RECEIVED", "ANONYMIZED")}
    counts |= {s: sum(1 for f in seeded.files if f["state"] == s) for s in ("SKIPPED", "FAILED", "SENT")}
    counts["total"] = len(seeded.files)
    failed = [f for f in seeded.files if f["state"] == "FAILED"]
    db.collection(settings.batches_collection).document(batch_id).set(
        {
            "id": batch_id,
            "status": status,
            "bucket": settings.staging_bucket,
            "folder": folder,
            "created_at": now,
            "updated_at": now,
            "start_time": now,
            "finish_time": now,
            "elapsed_seconds": 1.5,
            "counts": counts,
            "size_bytes": size_total,
            "study_uids": len({f["ids"]["study_uid"] for f in seeded.anonymized}),
            "has_error": bool(failed),
            "errors": [{"file": f["key"], "reason": f["reason"]} for f in failed],
        },
        merge=True,
    )
    _seed_tally(ctx, batch_id, seeded.files, now.timestamp())
    return seeded


def _seed_tally(ctx: Context, batch_id: str, files: list[dict[str, Any]], at: float) -> None:
    """The batch's tally shards as the pipeline leaves them for these files (sendit.store.tally)."""
    from sendit.store import tally

    shards: dict[int, dict[str, Any]] = {}
    for f in files:
        shard = shards.setdefault(
            tally.shard_of(f["key"], ctx.settings.tally_shards), {"received": 0, "terminal": 0}
        )
        shard["received"] += 1
        shard["terminal"] += 0 if f["state"] == "RECEIVED" else 1
    ref = ctx.clients.firestore.collection(ctx.settings.batches_collection).document(batch_id)
    for index, fields in shards.items():
        ref.collection(tally.TALLY).document(str(index)).set({**fields, "last_arrival": at})


def without_names(view: Any) -> Any:
    """A status API answer without its ``folder`` and ``object`` fields: the only places where staging
    names may appear (and only with SENDIT_STATUS_NAMES=shown)."""
    if isinstance(view, dict):
        return {k: without_names(v) for k, v in view.items() if k not in {"folder", "object"}}
    if isinstance(view, list):
        return [without_names(v) for v in view]
    return view


def without_name_cells(page: str) -> str:
    """A dashboard page without its folder and object cells (the names' only place in the HTML)."""
    import re

    return re.sub(r'<td class="(?:folder|object)">.*?</td>|<dt>folder</dt><dd>.*?</dd>', "", page)


def batch_doc(ctx: Context, batch_id: str) -> dict[str, Any]:
    snap = ctx.clients.firestore.collection(ctx.settings.batches_collection).document(batch_id).get()
    return snap.to_dict() or {}


def file_docs(ctx: Context, batch_id: str) -> list[dict[str, Any]]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    col = ctx.clients.firestore.collection(ctx.settings.files_collection)
    query = col.where(filter=FieldFilter("batch_id", "==", batch_id))
    return [dict(s.to_dict() or {}, key=s.id) for s in query.stream()]


def destination_blobs(ctx: Context, study_uids: set[str] | None = None) -> list[Any]:
    """Destination objects (optionally only those of some study pseudonyms, in either layout)."""
    prefix = f"Collection/{ctx.settings.collection}/Entity/"
    blobs = list(ctx.clients.storage.list_blobs(ctx.settings.destination_bucket, prefix=prefix))
    if study_uids is None:
        return blobs
    return [b for b in blobs if b.name.split("/")[4].split(".tar")[0] in study_uids]


def bigquery_rows(ctx: Context, batch_id: str) -> list[dict[str, Any]]:
    job = ctx.clients.bigquery.query(
        f"SELECT * FROM `{ctx.settings.bigquery_table}` WHERE batch_id = @b",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter("b", "STRING", batch_id)]
        ),
        timeout=30,
    )
    return [dict(row.items()) for row in job.result(timeout=30)]


def planted_in(data: bytes | str) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    return [key for key, value in PLANTED.items() if value.encode() in raw]


def rows_text(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, default=str)


def get_json(url: str, **kwargs: Any) -> tuple[int, Any]:
    response = requests.get(url, headers={"Accept": "application/json"}, timeout=30, **kwargs)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


def post(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    if raw is not None:
        response = requests.post(url, data=raw, headers={"Content-Type": "application/json"}, timeout=30)
    else:
        response = requests.post(url, json=body, timeout=30)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


def batch_status(status_url: str, batch_id: str) -> str | None:
    code, body = get_json(f"{status_url}/batches/{batch_id}", params={"page_size": 1})
    return body.get("status") if code == 200 else None
