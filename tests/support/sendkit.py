"""Helpers for the send/deliver/status tests: seed real emulator state, read what arrived, poll.

``seed_batch`` de-identifies synthetic studies with the real engine, writes the clean files to the
processing bucket and the batch/file documents to Firestore through ``sendit.store`` and ``sendit.naming``,
as the anonymize function leaves them at DONEPROCESSING. The tests then exercise send, deliver and status
against that state.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import requests
from google.cloud import bigquery

from sendit import completion, naming
from sendit.app.context import Context
from sendit.events import ObjectFinalized
from sendit.store import batches, files
from sendit.store.vocabulary import BatchState, FileState
from support.dicom import PLANTED, StudySpec, write_study
from support.polling import wait_for as wait_for  # re-exported for the tests that import it from here

T = TypeVar("T")


@dataclass
class Seeded:
    batch_id: str
    folder: str
    files: list[dict[str, Any]] = field(default_factory=list)  # file docs with "key"

    @property
    def anonymized(self) -> list[dict[str, Any]]:
        return [f for f in self.files if f["state"] == FileState.ANONYMIZED]


def context(settings: Any, clients: Any) -> Context:
    return Context(settings=settings, clients=clients)


def seed_batch(
    ctx: Context,
    root: Path,
    folder: str,
    studies: list[StudySpec],
    status: str = BatchState.DONEPROCESSING,
    extra_files: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> Seeded:
    """De-identify ``studies`` and leave them as the pipeline does. ``extra_files``: (state, reason).

    The documents are written by the store functions the anonymize function uses (claim, record the
    terminal state - each counted in the batch's tally -, open the batch) and the completion settles it
    (``completion.evaluate(force=True)``: the seeded upload is complete by construction), so they follow
    docs/state.md. A ``status`` other than what settling gives (DONEPROCESSING, EMPTY) is set afterwards.
    An extra file in state RECEIVED is claimed only: it stays in flight.
    """
    settings = ctx.settings
    batch_id = naming.batch_id(settings.secret_key, settings.staging_bucket, folder)
    seeded = Seeded(batch_id, folder)
    for index, spec in enumerate(studies):
        for path in write_study(root / folder, spec, folder=f"study_{index}_{uuid.uuid4().hex[:6]}"):
            raw = path.read_bytes()
            obj = _notification(ctx, path.relative_to(root).as_posix(), raw)
            out = io.BytesIO()
            fields = files.outcome_fields(ctx.engine.process(path, out))
            fields["size"] = len(raw)
            if fields["state"] == FileState.ANONYMIZED:
                fields.update(_clean_file(ctx, batch_id, fields["ids"], out.getvalue()))
            seeded.files.append(_record(ctx, obj, batch_id, fields))
    for index, (state, reason) in enumerate(extra_files):
        obj = _notification(ctx, f"{folder}/extra_{index}.bin", b"0123456789")
        seeded.files.append(_record(ctx, obj, batch_id, {"state": state, "reason": reason}))
    batches.open_batch(ctx.store, batch=batch_id, bucket=settings.staging_bucket, folder=folder)
    finalized = completion.evaluate(ctx, batch_id, force=True)
    if finalized != status:
        ctx.store.batch_ref(batch_id).update({"status": status})
    return seeded


def age_batch(ctx: Context, seeded: Seeded, days: float) -> datetime:
    """Make a settled batch look as if its first clean file was recorded ``days`` ago: that file's
    ``finished_at`` is moved back, the batch is reopened and settled again (``completion.evaluate``, which
    derives ``first_clean_at`` from the file documents). Returns the new first clean time."""
    old = datetime.now(UTC) - timedelta(days=days)
    key = seeded.anonymized[0]["key"]
    ctx.store.file_ref(key).update({"finished_at": old})
    snap = ctx.store.batch_ref(seeded.batch_id).get()
    assert batches.reopen_batch(ctx.store, batch=seeded.batch_id, snap=snap)
    completion.evaluate(ctx, seeded.batch_id, force=True)  # or the sweep settles it first: the same fields

    def settled_again() -> bool:
        doc = batch_doc(ctx, seeded.batch_id)
        at = doc.get("first_clean_at")
        return doc.get("status") == BatchState.DONEPROCESSING and at is not None and abs(at - old) < _MS

    wait_for(settled_again, 30, what="the aged batch settled again")
    return old


_MS = timedelta(milliseconds=1)


def _notification(ctx: Context, name: str, raw: bytes) -> ObjectFinalized:
    """The notification of an upload of ``raw`` as ``name`` (generations are microsecond timestamps)."""
    return ObjectFinalized(
        bucket=ctx.settings.staging_bucket,
        name=name,
        generation=str(time.time_ns() // 1000),
        size=len(raw),
        md5=base64.b64encode(hashlib.md5(raw).digest()).decode(),
        event_id=f"seed-{uuid.uuid4().hex[:8]}",
    )


def _clean_file(ctx: Context, batch_id: str, ids: dict[str, Any], data: bytes) -> dict[str, Any]:
    name = naming.clean_object_name(batch_id, ids["study_uid"], ids["series_uid"], ids["instance_uid"])
    blob = ctx.clients.storage.bucket(ctx.settings.processing_bucket).blob(name)
    blob.upload_from_string(data, content_type="application/dicom")
    blob.reload()
    uri = naming.gs_uri(ctx.settings.processing_bucket, name)
    return {"clean_uri": uri, "clean_size": blob.size, "clean_md5": blob.md5_hash}


def _record(ctx: Context, obj: ObjectFinalized, batch_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    claim = files.claim_file(ctx.store, obj=obj, batch=batch_id, max_attempts=5, lease_seconds=60)
    assert claim.kind == "claimed", claim
    if fields["state"] != FileState.RECEIVED:
        assert files.record_terminal(
            ctx.store, key=claim.key, fields=fields, update_time=claim.update_time, batch=batch_id
        )
    doc = files.get_file(ctx.store, key=claim.key)
    assert doc is not None
    return doc


def batch_doc(ctx: Context, batch_id: str) -> dict[str, Any]:
    return batches.get_batch(ctx.store, batch=batch_id) or {}


def file_docs(ctx: Context, batch_id: str) -> list[dict[str, Any]]:
    return files.files_of_batch(ctx.store, batch=batch_id)


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
