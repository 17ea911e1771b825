"""The `deliver` function: one batch -> its targets + BigQuery (one Pub/Sub message per batch).

For the batch's ANONYMIZED files, per ``SENDIT_DELIVERY_TARGETS``: with ``dicomweb``, store each clean
instance on the DICOMweb server with STOW-RS (``delivery.dicomweb_target``: QIDO-RS first, so what the
server holds is not sent again); with ``bucket``, copy each clean object from the processing bucket to

    Collection/<collection>/Entity/<patient pseudonym>/<study pseudonym>/<series>/<instance>.dcm

(layout ``instance``, the default) or pack one ``<study pseudonym>.tar.gz`` per study (layout ``tar``).
Then insert one BigQuery row per image, mark the files SENT, clean up per policy and mark the batch SENT
with a delivery record saying where it went. Every step can be repeated: object names are deterministic
(an object already there with the right MD5 is not copied again), an instance the server holds is not
stored again, rows already in the table for the batch are not inserted again and carry stable insert ids,
and the delivery record is appended once per delivery id. A file that cannot be delivered (pseudonyms or
clean object missing, a row that cannot be built, an instance the DICOMweb server refuses) is FAILED with
the reason and the rest of the batch goes on. A transient error raises so Pub/Sub redelivers
(``DicomwebUnavailable`` as a ``RetryableError``, its cause logged at WARNING); after the last attempt
``stages.dead_letter`` puts the batch back to DONEPROCESSING with the reason.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sendit import events, naming
from sendit.delivery import cleanup, dicomweb_target, objects, rows, studies
from sendit.delivery.objects import Item, Written, to_int
from sendit.dicomweb import DicomwebUnavailable
from sendit.errors import BatchBusy, BatchReopened, EventError, RetryableError, RowError
from sendit.store import batches, deliveries, files
from sendit.store.deliveries import DeliveryClaim, SentFile
from sendit.store.vocabulary import FileState

if TYPE_CHECKING:
    from sendit.app.context import Context

log = logging.getLogger("sendit.deliver")

BUCKET, DICOMWEB = "bucket", "dicomweb"  # the delivery targets (config.DELIVERY_TARGETS)

InsertRows = Callable[[Any, str, Sequence[Mapping[str, Any]], Sequence[str]], int]
_IDS = ("patient_id", "study_uid", "series_uid", "instance_uid")


@dataclass
class Delivery:
    """What one invocation did (also the return value of ``deliver_batch``)."""

    batch_id: str
    delivery_id: str | None = None
    outcome: str = "delivered"  # delivered | nothing_pending | skipped:<reason>
    files: int = 0
    rows_inserted: int = 0
    rows_present: int = 0
    study_rows_inserted: int = 0
    unattributed: dict[str, int] = field(default_factory=dict)
    objects_written: int = 0
    objects_reused: int = 0
    dicomweb_stored: int = 0
    dicomweb_present: int = 0
    dicomweb_failed: int = 0
    dicomweb_requests: int = 0
    removed: int = 0
    kept: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    status: str | None = None
    record: dict[str, Any] = field(default_factory=dict)


def handle_event(ctx: Context, event_type: str, data: Any, event_id: str) -> None:
    """The CloudEvent entry: decode ``{"batch_id", "delivery_id"}`` and deliver that batch."""
    try:
        request = events.deliver_request(event_type, data, event_id)
    except EventError as exc:
        log.warning("deliver: event ignored", extra={"event_id": event_id, "why": str(exc)})
        return
    deliver_batch(ctx, request.batch_id, request.delivery_id, owner=request.message_id or None)


def deliver_batch(
    ctx: Context,
    batch_id: str,
    delivery_id: str | None = None,
    *,
    owner: str | None = None,
    insert_rows: InsertRows | None = None,
    clock: Callable[[], datetime] = deliveries.now,
) -> Delivery:
    """Deliver one SENDING batch (see the module doc). ``insert_rows`` replaces ``rows.insert_rows``;
    ``clock`` gives the delivery's time (``sent_at``, the record's ``at``)."""
    owner = owner or uuid.uuid4().hex
    began = time.monotonic()
    claim = deliveries.claim_delivery(ctx.store, batch_id=batch_id, delivery_id=delivery_id, owner=owner)
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
    result.delivery_id = claim.delivery_id or uuid.uuid4().hex
    try:
        _deliver(ctx, claim, result, owner, insert_rows or rows.insert_rows, clock)
    except BaseException as exc:
        deliveries.release_delivery(ctx.store, batch_id=batch_id, owner=owner)
        if isinstance(exc, DicomwebUnavailable):
            raise _unavailable(result, exc) from None
        raise
    log.info(
        "deliver: batch delivered",
        extra={
            "batch_id": batch_id,
            "delivery_id": result.delivery_id,
            "files": result.files,
            "rows_inserted": result.rows_inserted,
            "study_rows_inserted": result.study_rows_inserted,
            "objects_written": result.objects_written,
            "objects_reused": result.objects_reused,
            "dicomweb_stored": result.dicomweb_stored,
            "dicomweb_present": result.dicomweb_present,
            "dicomweb_failed": result.dicomweb_failed,
            "dicomweb_requests": result.dicomweb_requests,
            "removed": result.removed,
            "kept": result.kept,
            "errors": len(result.errors),
            "status": result.status,
            "seconds": round(time.monotonic() - began, 3),
        },
    )
    return result


def _unavailable(result: Delivery, exc: DicomwebUnavailable) -> RetryableError:
    """The DICOMweb server down or overloaded after the client's retries: transient, the cause logged at
    WARNING, and a ``RetryableError`` for Pub/Sub to redeliver (a planned retry, not a function error)."""
    log.warning(
        "deliver: DICOMweb server unavailable, the message will be redelivered",
        extra={"batch_id": result.batch_id, "delivery_id": result.delivery_id, "error": str(exc)},
    )
    name = type(exc).__name__
    return RetryableError(f"transient error during dicomweb: {name}", step="dicomweb", cause_type=name)


def _deliver(
    ctx: Context,
    claim: DeliveryClaim,
    result: Delivery,
    owner: str,
    insert_rows: InsertRows,
    clock: Callable[[], datetime],
) -> None:
    settings, store = ctx.settings, ctx.store
    batch_id, delivery_id = result.batch_id, str(result.delivery_id)
    sent_at = clock()
    docs = files.files_of_batch(store, batch=batch_id, state=FileState.ANONYMIZED)
    items = _items(ctx, batch_id, docs, result)
    if DICOMWEB in settings.delivery_targets:
        items = _store_dicomweb(ctx, items, result)  # first: a refused instance goes nowhere else
    if BUCKET in settings.delivery_targets:
        _write_objects(ctx, items, claim, delivery_id, result)
    else:
        dicomweb_target.locate(items, str(settings.dicomweb_url))
    delivered = [item for item in items if item.uri]
    _insert_rows(ctx, batch_id, delivered, sent_at, result, insert_rows)
    deliveries.mark_files_sent(
        store,
        sent=[SentFile(i.key, i.uri, i.md5, i.size, i.dicomweb) for i in delivered],
        delivery_id=delivery_id,
        at=sent_at,
    )
    result.files = len(delivered)
    every = files.files_of_batch(store, batch=batch_id)
    failed = _failed_by(every, delivery_id, result)
    _insert_study_rows(ctx, batch_id, delivery_id, every, result, insert_rows)
    sent = deliveries.delivered_files(store, batch_id=batch_id, delivery_id=delivery_id)
    if settings.cleanup == "after-send" and not result.errors:
        result.removed, result.kept = _cleanup(ctx, sent)
    if not sent and not docs:
        result.outcome = "nothing_pending"
    result.record = _record(claim, delivery_id, sent, sent_at, settings.delivery_layout, result)
    result.record.update(_where(ctx, sent, failed))
    result.status = deliveries.finish_delivery(
        store,
        batch_id=batch_id,
        delivery_id=delivery_id,
        owner=owner,
        record=result.record,
        counts=batches.batch_counts(store, batch=batch_id),
        errors=result.errors,
    )


def _items(ctx: Context, batch_id: str, docs: list[dict[str, Any]], result: Delivery) -> list[Item]:
    """Pending file documents -> items; a file that cannot be delivered becomes FAILED with the reason."""
    items: list[Item] = []
    for doc in docs:
        key = str(doc["key"])
        ids = {k: str(v) for k, v in (doc.get("ids") or {}).items() if v}
        bucket, name = naming.split_gs_uri(str(doc.get("clean_uri") or ""))
        row = dict(doc.get("row") or {})
        row.setdefault("instance_uid", ids.get("instance_uid"))
        reason = None
        if not all(ids.get(k) for k in _IDS):
            reason = "pseudonyms missing at delivery"
        elif not name:
            reason = "clean object unknown at delivery"
        else:
            try:
                rows.check_row(row, batch_id=batch_id, collection=ctx.settings.collection)
            except RowError as exc:  # the message names the column, never a value
                reason = f"row cannot be built: {exc}"
        if reason:
            _fail(ctx, key, reason, result)
            continue
        items.append(
            Item(
                key=key,
                ids=ids,
                clean_bucket=bucket or ctx.settings.processing_bucket,
                clean_name=name,
                clean_md5=doc.get("clean_md5"),
                clean_size=to_int(doc.get("clean_size")),
                row=row,
            )
        )
    return items


def _fail(ctx: Context, key: str, reason: str, result: Delivery) -> None:
    """One file FAILED at delivery: its document, the batch's errors, and one log line (no PHI: the file
    key, pseudonymous ids only through the key, and a reason that never quotes a value)."""
    files.mark_file_failed(ctx.store, key=key, reason=reason, delivery_id=result.delivery_id)
    result.errors.append({"file": key, "reason": reason})
    log.warning(
        "file FAILED",
        extra={
            "event": "delivery_failure",
            "file_key": key,
            "batch_id": result.batch_id,
            "delivery_id": result.delivery_id,
            "state": FileState.FAILED,
            "reason": reason,
        },
    )


def _failed_by(every: list[dict[str, Any]], delivery_id: str, result: Delivery) -> list[dict[str, Any]]:
    """The files this delivery marked FAILED, also by an earlier attempt of it that raised before its
    record was written: they join ``result.errors`` so the batch's errors and cleanup see them."""
    failed = [d for d in every if d.get("failed_delivery_id") == delivery_id]
    known = {e["file"] for e in result.errors}
    for doc in failed:
        if doc["key"] not in known and doc.get("state") == FileState.FAILED:
            result.errors.append({"file": str(doc["key"]), "reason": str(doc.get("reason") or "")})
    return failed


def _store_dicomweb(ctx: Context, items: list[Item], result: Delivery) -> list[Item]:
    """STOW-RS of every item (delivery/dicomweb_target.py); returns the items the server holds now."""
    stored = dicomweb_target.store_items(ctx.dicomweb, ctx.clients.storage, items)
    for item in stored.missing:
        _fail(ctx, item.key, "clean object missing at delivery", result)
    for item, reason in stored.failed:
        _fail(ctx, item.key, reason, result)
    result.dicomweb_stored += stored.count("stored")
    result.dicomweb_present += stored.count("already_present")
    result.dicomweb_failed += len(stored.failed)
    result.dicomweb_requests += stored.requests
    return [item for item in items if item.key in stored.outcomes]


def _cleanup(ctx: Context, sent: list[dict[str, Any]]) -> tuple[int, int]:
    """Remove the delivered files' processing and staging objects that verify at their destination: the
    bucket object, or (DICOMweb as the only target) the instance on the server."""
    held: set[str] = set()
    if BUCKET not in ctx.settings.delivery_targets:
        held = dicomweb_target.held(ctx.dicomweb, sent)
    return cleanup.cleanup(ctx.clients.storage, sent, held)


def _where(ctx: Context, sent: list[dict[str, Any]], failed: list[dict[str, Any]]) -> dict[str, Any]:
    """The record's targets: ``targets``, ``collection`` and, with DICOMweb, ``dicomweb`` (counts, URLs)."""
    settings = ctx.settings
    where: dict[str, Any] = {"targets": list(settings.delivery_targets), "collection": settings.collection}
    if DICOMWEB in settings.delivery_targets:
        where[DICOMWEB] = dicomweb_target.record(str(settings.dicomweb_url), sent, failed)
    return where


def _write_objects(
    ctx: Context, items: list[Item], claim: DeliveryClaim, delivery_id: str, result: Delivery
) -> None:
    settings, storage = ctx.settings, ctx.clients.storage
    written: Written
    if settings.delivery_layout == "tar":
        suffix = "" if claim.first_delivery else delivery_id[:12]
        written = objects.write_archives(
            storage,
            destination=settings.destination_bucket,
            collection=settings.collection,
            items=items,
            suffix=suffix,
        )
    else:
        written = objects.copy_instances(
            storage, destination=settings.destination_bucket, collection=settings.collection, items=items
        )
    result.objects_written += written.written
    result.objects_reused += written.reused
    for item in written.missing:
        _fail(ctx, item.key, "clean object missing at delivery", result)


def _insert_rows(
    ctx: Context,
    batch_id: str,
    delivered: list[Item],
    sent_at: datetime,
    result: Delivery,
    insert_rows: InsertRows,
) -> None:
    """One row per distinct instance (two uploads of one image make one row), only those not there yet."""
    settings, bigquery = ctx.settings, ctx.clients.bigquery
    by_instance: dict[str, dict[str, Any]] = {}
    for item in delivered:
        row = rows.delivery_row(
            item.row,
            batch_id=batch_id,
            collection=settings.collection,
            uri=item.uri,
            size_bytes=item.size,
            md5=item.md5,
            sent_at=sent_at,
        )
        by_instance.setdefault(row["instance_uid"], row)
    result.rows_present = len(by_instance)
    present = rows.existing_instance_uids(bigquery, settings.bigquery_table, batch_id, list(by_instance))
    missing = [row for uid, row in by_instance.items() if uid not in present]
    if missing:
        result.rows_inserted = insert_rows(
            bigquery,
            settings.bigquery_table,
            missing,
            [naming.insert_id(batch_id, row["instance_uid"]) for row in missing],
        )


def _insert_study_rows(
    ctx: Context,
    batch_id: str,
    delivery_id: str,
    every: list[dict[str, Any]],
    result: Delivery,
    insert_rows: InsertRows,
) -> None:
    """One study-table row per study of this delivery (delivery/studies.py), only those not there yet."""
    settings = ctx.settings
    targets = settings.delivery_targets
    where = studies.Where(
        settings.destination_bucket if BUCKET in targets else None,
        settings.collection,
        settings.delivery_layout,
        settings.dicomweb_url if DICOMWEB in targets else None,
    )
    built, result.unattributed = studies.study_rows(
        every, batch_id=batch_id, delivery_id=delivery_id, where=where
    )
    present = studies.existing_studies(ctx.clients.bigquery, settings.study_table, delivery_id)
    missing = [row for row in built if row["study_uid"] not in present]
    if missing:
        result.study_rows_inserted = insert_rows(
            ctx.clients.bigquery,
            settings.study_table,
            missing,
            [naming.study_insert_id(delivery_id, row["study_uid"]) for row in missing],
        )


def _record(
    claim: DeliveryClaim,
    delivery_id: str,
    sent: list[dict[str, Any]],
    at: datetime,
    layout: str,
    result: Delivery,
) -> dict[str, Any]:
    """The batch's ``deliveries`` entry, computed from the files this delivery marked SENT (``objects``:
    bucket objects; ``bytes``: what was delivered, also to a DICOMweb server alone)."""
    instances = {str((f.get("ids") or {}).get("instance_uid")) for f in sent}
    size_by_uri = {str(f["sent_uri"]): to_int(f.get("sent_size")) or 0 for f in sent if f.get("sent_uri")}
    bucket_objects = [uri for uri in size_by_uri if uri.startswith("gs://")]
    send_seconds = None
    if claim.requested_at is not None:
        send_seconds = round(max(0.0, (at - claim.requested_at).total_seconds()), 3)
    return {
        "delivery_id": delivery_id,
        "at": at,
        "files": len(sent),
        "rows": len(instances),
        "objects": len(bucket_objects),
        "bytes": sum(size_by_uri.values()),
        "layout": layout,
        "objects_written": result.objects_written,
        "rows_inserted": result.rows_inserted,
        "removed": result.removed,
        "kept": result.kept,
        "errors": len(result.errors),
        "send_seconds": send_seconds,
        "studies": len({str((f.get("ids") or {}).get("study_uid")) for f in sent}),
        "unattributed": dict(result.unattributed),
    }
