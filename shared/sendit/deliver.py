"""One batch -> destination bucket + BigQuery (the `deliver` function; one Pub/Sub message per batch).

For the batch's ANONYMIZED files: copy each clean object from the processing bucket to

    Collection/<collection>/Entity/<patient pseudonym>/<study pseudonym>/<series>/<instance>.dcm

(layout ``instance``, the default) or pack one ``<study pseudonym>.tar.gz`` per study (layout ``tar``),
insert one BigQuery row per image, mark the files SENT, clean up per policy and mark the batch SENT with a
delivery record. Every step can be repeated: object names are deterministic (an object already there with
the right MD5 is not copied again), rows already in the table for the batch are not inserted again and
carry stable insert ids, and the delivery record is appended once per delivery id. A transient error
raises so Pub/Sub redelivers; after the last attempt the dead-letter handler puts the batch back to
DONEPROCESSING with the reason (``handle_dead_letter``).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import re
import tarfile
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from sendit import bigquery as bq
from sendit import delivery_state as ds
from sendit import events, logs

if TYPE_CHECKING:
    from sendit.runtime import Context

log = logs.get("sendit.deliver")

WORKERS = 8  # parallel object copies / deletions per delivery
BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
MESSAGE_KIND = "deliver"  # the ``kind`` attribute of deliver messages (lets the dead-letter handler route)

InsertRows = Callable[[Any, str, Sequence[Mapping[str, Any]], Sequence[str]], int]


class BatchBusy(RuntimeError):
    """Another invocation holds this batch's delivery lease: retry later (transient)."""


class BatchReopened(RuntimeError):
    """A late file reopened the batch after the send: retry until it is DONEPROCESSING again (transient)."""


class VerifyError(RuntimeError):
    """A destination object does not have the MD5 of what was written: retry (transient)."""


@dataclass
class Delivery:
    """What one invocation did (also the return value of ``deliver_batch``)."""

    batch_id: str
    delivery_id: str | None = None
    outcome: str = "delivered"  # delivered | nothing_pending | skipped:<reason>
    files: int = 0
    rows_inserted: int = 0
    rows_present: int = 0
    objects_written: int = 0
    objects_reused: int = 0
    removed: int = 0
    kept: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    status: str | None = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Item:
    """One file to deliver."""

    key: str
    ids: dict[str, str]
    clean_bucket: str
    clean_name: str
    clean_md5: str | None
    clean_size: int | None
    row: dict[str, Any]
    dest_name: str = ""
    uri: str = ""
    md5: str | None = None
    size: int | None = None


# ------------------------------------------------------------------------------------------ entry


def handle_event(ctx: Context, event_type: str, data: Any, event_id: str) -> None:
    """The CloudEvent entry: decode ``{"batch_id", "delivery_id"}`` and deliver that batch."""
    try:
        message = events.pubsub_message(event_type, data, event_id)
        payload = message.json()
    except events.EventError as exc:
        log.warning("deliver: event ignored", extra={"event_id": event_id, "why": str(exc)})
        return
    batch_id = payload.get("batch_id") if isinstance(payload, dict) else None
    if not isinstance(batch_id, str) or not BATCH_ID.match(batch_id):
        log.warning("deliver: message without a valid batch_id ignored", extra={"event_id": event_id})
        return
    delivery_id = payload.get("delivery_id") if isinstance(payload, dict) else None
    deliver_batch(
        ctx,
        batch_id,
        delivery_id if isinstance(delivery_id, str) else None,
        owner=message.message_id or event_id or None,
    )


def deliver_batch(
    ctx: Context,
    batch_id: str,
    delivery_id: str | None = None,
    *,
    owner: str | None = None,
    insert_rows: InsertRows | None = None,
) -> Delivery:
    """Deliver one SENDING batch (see the module doc). ``insert_rows`` replaces ``bigquery.insert_rows``."""
    settings, db = ctx.settings, ctx.clients.firestore
    owner = owner or uuid.uuid4().hex
    began = time.monotonic()
    claim = ds.claim_delivery(db, settings, batch_id, delivery_id, owner)
    result = Delivery(batch_id=batch_id, delivery_id=claim.delivery_id, status=claim.status)
    if not claim.granted:
        if claim.reason == "busy":
            raise BatchBusy("another delivery of this batch is running")
        if claim.reason == "reopened":
            raise BatchReopened("the batch is processing late files; delivery waits")
        result.outcome = f"skipped:{claim.reason}"
        log.info(
            "deliver: nothing to do",
            extra={"batch_id": batch_id, "why": claim.reason, "status": claim.status},
        )
        return result
    delivery_id = claim.delivery_id or uuid.uuid4().hex
    result.delivery_id = delivery_id
    try:
        _deliver(ctx, claim, batch_id, delivery_id, owner, result, insert_rows or bq.insert_rows)
    except BaseException:
        ds.release_delivery(db, settings, batch_id, owner)
        raise
    log.info(
        "deliver: batch delivered",
        extra={
            "batch_id": batch_id,
            "delivery_id": delivery_id,
            "files": result.files,
            "rows_inserted": result.rows_inserted,
            "objects_written": result.objects_written,
            "objects_reused": result.objects_reused,
            "removed": result.removed,
            "kept": result.kept,
            "errors": len(result.errors),
            "status": result.status,
            "seconds": round(time.monotonic() - began, 3),
        },
    )
    return result


def handle_dead_letter(ctx: Context, batch_id: str, attempts: int | None) -> bool:
    """A deliver message that exhausted its attempts: the batch gets ``has_error`` and a reason and goes
    back to DONEPROCESSING, so an operator can send it again. Returns whether the batch changed."""
    changed = ds.record_dead_letter(ctx.clients.firestore, ctx.settings, batch_id, attempts)
    log.error(
        "deliver: message dead-lettered",
        extra={"batch_id": batch_id, "attempts": attempts, "batch_reset": changed},
    )
    return changed


def dead_letter_batch_id(message: events.PubSubMessage) -> str | None:
    """The batch id if a dead-lettered message is a deliver message, else None (for the router)."""
    if message.attributes.get("kind") not in (None, MESSAGE_KIND):
        return None
    try:
        payload = message.json()
    except events.EventError:
        return None
    batch_id = payload.get("batch_id") if isinstance(payload, dict) else None
    if isinstance(batch_id, str) and BATCH_ID.match(batch_id) and set(payload) <= {"batch_id", "delivery_id"}:
        return batch_id
    return None


# ------------------------------------------------------------------------------------------ the work


def _deliver(
    ctx: Context,
    claim: ds.Claim,
    batch_id: str,
    delivery_id: str,
    owner: str,
    result: Delivery,
    insert_rows: InsertRows,
) -> None:
    settings, db = ctx.settings, ctx.clients.firestore
    sent_at = ds.now()
    docs = ds.pending_files(db, settings, batch_id)
    items = _items(ctx, batch_id, docs, result)
    if settings.delivery_layout == "tar":
        _write_archives(ctx, items, delivery_id, claim.first_delivery, result)
    else:
        _copy_instances(ctx, items, result)
    delivered = [item for item in items if item.uri]

    rows, row_ids = _rows(ctx, batch_id, delivered, sent_at, result)
    result.rows_present = len(rows)
    present = bq.existing_instance_uids(
        ctx.clients.bigquery, settings.bigquery_table, batch_id, [r["instance_uid"] for r in rows]
    )
    missing = [i for i, row in enumerate(rows) if row["instance_uid"] not in present]
    if missing:
        result.rows_inserted = insert_rows(
            ctx.clients.bigquery,
            settings.bigquery_table,
            [rows[i] for i in missing],
            [row_ids[i] for i in missing],
        )

    ds.mark_files_sent(
        db,
        settings,
        [ds.SentFile(item.key, item.uri, item.md5, item.size) for item in delivered],
        delivery_id,
        sent_at,
    )
    result.files = len(delivered)

    files = ds.delivered_files(db, settings, batch_id, delivery_id)
    if settings.cleanup == "after-send" and not result.errors:
        result.removed, result.kept = _cleanup(ctx, files)
    if not files and not docs:
        result.outcome = "nothing_pending"
    record = _record(claim, delivery_id, files, sent_at, settings.delivery_layout, result)
    result.record = record
    counts = ds.file_counts(db, settings, batch_id)
    result.status = ds.finish_delivery(
        db, settings, batch_id, delivery_id, owner, record, counts, result.errors
    )


def _items(ctx: Context, batch_id: str, docs: list[dict[str, Any]], result: Delivery) -> list[_Item]:
    """Pending file documents -> items; a file that cannot be delivered becomes FAILED with the reason."""
    settings = ctx.settings
    items: list[_Item] = []
    for doc in docs:
        key = str(doc["key"])
        ids = {k: str(v) for k, v in (doc.get("ids") or {}).items() if v}
        bucket, name = _split_uri(str(doc.get("clean_uri") or ""))
        reason = None
        if not all(ids.get(k) for k in ("patient_id", "study_uid", "series_uid", "instance_uid")):
            reason = "pseudonyms missing at delivery"
        elif not name:
            reason = "clean object unknown at delivery"
        if reason:
            _fail(ctx, key, reason, result)
            continue
        row = dict(doc.get("row") or {})
        row.setdefault("instance_uid", ids["instance_uid"])
        items.append(
            _Item(
                key=key,
                ids=ids,
                clean_bucket=bucket or settings.processing_bucket,
                clean_name=name,
                clean_md5=doc.get("clean_md5"),
                clean_size=_int(doc.get("clean_size")),
                row=row,
            )
        )
    return items


def _fail(ctx: Context, key: str, reason: str, result: Delivery) -> None:
    ds.mark_file_failed(ctx.clients.firestore, ctx.settings, key, reason)
    result.errors.append({"file": key, "reason": reason})


def _entity_prefix(collection: str, ids: Mapping[str, str]) -> str:
    return f"Collection/{_safe(collection)}/Entity/{_safe(ids['patient_id'])}"


def instance_object_name(collection: str, ids: Mapping[str, str]) -> str:
    """Destination name of one instance (layout ``instance``)."""
    return (
        f"{_entity_prefix(collection, ids)}/{_safe(ids['study_uid'])}/"
        f"{_safe(ids['series_uid'])}/{_safe(ids['instance_uid'])}.dcm"
    )


def archive_object_name(collection: str, ids: Mapping[str, str], suffix: str = "") -> str:
    """Destination name of one study archive (layout ``tar``); later deliveries add a suffix."""
    tail = f".{_safe(suffix)}" if suffix else ""
    return f"{_entity_prefix(collection, ids)}/{_safe(ids['study_uid'])}{tail}.tar.gz"


def _copy_instances(ctx: Context, items: list[_Item], result: Delivery) -> None:
    settings, storage = ctx.settings, ctx.clients.storage
    destination = storage.bucket(settings.destination_bucket)

    def copy(item: _Item) -> tuple[_Item, str]:
        name = instance_object_name(settings.collection, item.ids)
        existing = destination.get_blob(name)
        source_bucket = storage.bucket(item.clean_bucket)
        expected = item.clean_md5
        if existing is not None and expected and existing.md5_hash == expected:
            outcome = "reused"
            blob = existing
        else:
            source = source_bucket.get_blob(item.clean_name)
            if source is None:
                if existing is not None and not expected:
                    outcome, blob = "reused", existing
                else:
                    return item, "missing"
            else:
                expected = expected or source.md5_hash
                blob = source_bucket.copy_blob(source, destination, name)
                outcome = "written"
        if expected and blob.md5_hash != expected:
            raise VerifyError("destination object does not match the clean object")
        item.dest_name, item.md5, item.size = name, blob.md5_hash, _int(blob.size)
        item.uri = f"gs://{settings.destination_bucket}/{name}"
        return item, outcome

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        outcomes = list(pool.map(copy, items))
    for item, outcome in outcomes:
        if outcome == "written":
            result.objects_written += 1
        elif outcome == "reused":
            result.objects_reused += 1
        else:
            _fail(ctx, item.key, "clean object missing at delivery", result)


def _write_archives(
    ctx: Context, items: list[_Item], delivery_id: str, first_delivery: bool, result: Delivery
) -> None:
    """One deterministic ``.tar.gz`` per study (same members, same bytes, same MD5 on every retry)."""
    settings, storage = ctx.settings, ctx.clients.storage
    destination = storage.bucket(settings.destination_bucket)
    studies: dict[tuple[str, str], list[_Item]] = defaultdict(list)
    for item in items:
        studies[(item.ids["patient_id"], item.ids["study_uid"])].append(item)
    for members in studies.values():
        members.sort(key=lambda i: (i.ids["series_uid"], i.ids["instance_uid"]))
        suffix = "" if first_delivery else delivery_id[:12]
        name = archive_object_name(settings.collection, members[0].ids, suffix)
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
            packed, missing = _pack(storage, members, spool)
            for item in missing:
                _fail(ctx, item.key, "clean object missing at delivery", result)
            if not packed:
                continue
            spool.seek(0)
            digest = hashlib.md5(usedforsecurity=False)
            size = 0
            for chunk in iter(lambda: spool.read(1024 * 1024), b""):
                digest.update(chunk)
                size += len(chunk)
            md5 = base64.b64encode(digest.digest()).decode()
            existing = destination.get_blob(name)
            if existing is not None and existing.md5_hash == md5:
                result.objects_reused += 1
            else:
                blob = destination.blob(name)
                spool.seek(0)
                blob.upload_from_file(spool, size=size, content_type="application/gzip", checksum="md5")
                blob.reload()
                if blob.md5_hash != md5:
                    raise VerifyError("destination archive does not match what was written")
                result.objects_written += 1
        for item in packed:
            item.dest_name, item.md5, item.size = name, md5, size
            item.uri = f"gs://{settings.destination_bucket}/{name}"


def _pack(storage: Any, members: list[_Item], out: IO[bytes]) -> tuple[list[_Item], list[_Item]]:
    packed: list[_Item] = []
    missing: list[_Item] = []
    with (
        gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for item in members:
            blob = storage.bucket(item.clean_bucket).get_blob(item.clean_name)
            if blob is None:
                missing.append(item)
                continue
            with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as data:
                blob.download_to_file(data)
                info = tarfile.TarInfo(
                    f"{_safe(item.ids['series_uid'])}/{_safe(item.ids['instance_uid'])}.dcm"
                )
                info.size = data.tell()
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
                data.seek(0)
                tar.addfile(info, data)
            packed.append(item)
    return packed, missing


def _rows(
    ctx: Context, batch_id: str, delivered: list[_Item], sent_at: datetime, result: Delivery
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per distinct instance (two uploads of one image make one row)."""
    rows: list[dict[str, Any]] = []
    ids: list[str] = []
    seen: set[str] = set()
    for item in delivered:
        row = bq.delivery_row(
            item.row,
            batch_id=batch_id,
            collection=ctx.settings.collection,
            uri=item.uri,
            size_bytes=item.size,
            md5=item.md5,
            sent_at=sent_at,
        )
        if row["instance_uid"] in seen:
            continue
        seen.add(row["instance_uid"])
        rows.append(row)
        ids.append(bq.insert_id(batch_id, row["instance_uid"]))
    return rows, ids


def _cleanup(ctx: Context, files: list[dict[str, Any]]) -> tuple[int, int]:
    """Remove the processing and staging objects of delivered files whose destination object verifies.

    Returns (files cleaned, files kept). Failures are logged and keep the objects; they never fail the
    delivery, which already succeeded.
    """
    storage = ctx.clients.storage
    checked: dict[str, str | None] = {}

    def destination_md5(uri: str) -> str | None:
        if uri not in checked:
            bucket, name = _split_uri(uri)
            blob = storage.bucket(bucket).get_blob(name) if bucket and name else None
            checked[uri] = blob.md5_hash if blob is not None else None
        return checked[uri]

    # Verify first (sequentially per archive, cached), then delete in parallel.
    verified = []
    kept = 0
    for doc in files:
        uri, md5 = doc.get("sent_uri"), doc.get("sent_md5")
        if doc.get("state") == "SENT" and uri and md5 and destination_md5(str(uri)) == md5:
            verified.append(doc)
        else:
            kept += 1

    def remove(doc: dict[str, Any]) -> bool:
        from google.api_core.exceptions import GoogleAPICallError, NotFound

        try:
            bucket, name = _split_uri(str(doc.get("clean_uri") or ""))
            if bucket and name:
                with contextlib.suppress(NotFound):
                    storage.bucket(bucket).blob(name).delete()
            if doc.get("bucket") and doc.get("object"):
                generation = _int(doc.get("generation"))
                with contextlib.suppress(NotFound):
                    storage.bucket(str(doc["bucket"])).blob(str(doc["object"])).delete(
                        if_generation_match=generation
                    )
            return True
        except GoogleAPICallError as exc:
            log.warning(
                "deliver: cleanup kept a file's objects",
                extra={"file": doc.get("key"), "error": type(exc).__name__},
            )
            return False

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        removed = sum(pool.map(remove, verified))
    return removed, kept + len(verified) - removed


def _record(
    claim: ds.Claim,
    delivery_id: str,
    files: list[dict[str, Any]],
    at: datetime,
    layout: str,
    result: Delivery,
) -> dict[str, Any]:
    """The batch's ``deliveries`` entry, computed from the files this delivery marked SENT."""
    uris = {str(f.get("sent_uri")) for f in files if f.get("sent_uri")}
    instances = {str((f.get("ids") or {}).get("instance_uid")) for f in files}
    size_by_uri: dict[str, int] = {}
    for f in files:
        if f.get("sent_uri"):
            size_by_uri[str(f["sent_uri"])] = _int(f.get("sent_size")) or 0
    send_seconds = None
    if claim.requested_at is not None:
        send_seconds = round(max(0.0, (at - claim.requested_at).total_seconds()), 3)
    return {
        "delivery_id": delivery_id,
        "at": at,
        "files": len(files),
        "rows": len(instances),
        "objects": len(uris),
        "bytes": sum(size_by_uri.values()),
        "layout": layout,
        "objects_written": result.objects_written,
        "rows_inserted": result.rows_inserted,
        "removed": result.removed,
        "kept": result.kept,
        "errors": len(result.errors),
        "send_seconds": send_seconds,
    }


# ------------------------------------------------------------------------------------------ helpers


def _split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        return "", ""
    bucket, _, name = uri[5:].partition("/")
    return bucket, name


def _safe(value: str) -> str:
    return _SAFE.sub("_", value) or "_"


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
