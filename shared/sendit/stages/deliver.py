"""The `deliver` function: one batch -> destination bucket + BigQuery (one Pub/Sub message per batch).

For the batch's ANONYMIZED files: copy each clean object from the processing bucket to

    Collection/<collection>/Entity/<patient pseudonym>/<study pseudonym>/<series>/<instance>.dcm

(layout ``instance``, the default) or pack one ``<study pseudonym>.tar.gz`` per study (layout ``tar``),
insert one BigQuery row per image, mark the files SENT, clean up per policy and mark the batch SENT with a
delivery record. Every step can be repeated: object names are deterministic (an object already there with
the right MD5 is not copied again), rows already in the table for the batch are not inserted again and
carry stable insert ids, and the delivery record is appended once per delivery id. A file that cannot be
delivered (pseudonyms or clean object missing, a row that cannot be built) is FAILED with the reason and
the rest of the batch goes on. A transient error raises so Pub/Sub redelivers; after the last attempt
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
from sendit.delivery import cleanup, objects, rows
from sendit.delivery.objects import Item, Written, to_int
from sendit.errors import BatchBusy, BatchReopened, EventError, RowError
from sendit.store import batches, deliveries, files
from sendit.store.deliveries import DeliveryClaim, SentFile
from sendit.store.vocabulary import FileState

if TYPE_CHECKING:
    from sendit.app.context import Context

log = logging.getLogger("sendit.deliver")

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
    objects_written: int = 0
    objects_reused: int = 0
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
) -> Delivery:
    """Deliver one SENDING batch (see the module doc). ``insert_rows`` replaces ``rows.insert_rows``."""
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
        _deliver(ctx, claim, result, owner, insert_rows or rows.insert_rows)
    except BaseException:
        deliveries.release_delivery(ctx.store, batch_id=batch_id, owner=owner)
        raise
    log.info(
        "deliver: batch delivered",
        extra={
            "batch_id": batch_id,
            "delivery_id": result.delivery_id,
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


def _deliver(
    ctx: Context, claim: DeliveryClaim, result: Delivery, owner: str, insert_rows: InsertRows
) -> None:
    settings, store = ctx.settings, ctx.store
    batch_id, delivery_id = result.batch_id, str(result.delivery_id)
    sent_at = deliveries.now()
    docs = files.files_of_batch(store, batch=batch_id, state=FileState.ANONYMIZED)
    items = _items(ctx, batch_id, docs, result)
    _write_objects(ctx, items, claim, delivery_id, result)
    delivered = [item for item in items if item.uri]
    _insert_rows(ctx, batch_id, delivered, sent_at, result, insert_rows)
    deliveries.mark_files_sent(
        store,
        sent=[SentFile(item.key, item.uri, item.md5, item.size) for item in delivered],
        delivery_id=delivery_id,
        at=sent_at,
    )
    result.files = len(delivered)
    sent = deliveries.delivered_files(store, batch_id=batch_id, delivery_id=delivery_id)
    if settings.cleanup == "after-send" and not result.errors:
        result.removed, result.kept = cleanup.cleanup(ctx.clients.storage, sent)
    if not sent and not docs:
        result.outcome = "nothing_pending"
    result.record = _record(claim, delivery_id, sent, sent_at, settings.delivery_layout, result)
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
    files.mark_file_failed(ctx.store, key=key, reason=reason)
    result.errors.append({"file": key, "reason": reason})


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


def _record(
    claim: DeliveryClaim,
    delivery_id: str,
    sent: list[dict[str, Any]],
    at: datetime,
    layout: str,
    result: Delivery,
) -> dict[str, Any]:
    """The batch's ``deliveries`` entry, computed from the files this delivery marked SENT."""
    instances = {str((f.get("ids") or {}).get("instance_uid")) for f in sent}
    size_by_uri = {str(f["sent_uri"]): to_int(f.get("sent_size")) or 0 for f in sent if f.get("sent_uri")}
    send_seconds = None
    if claim.requested_at is not None:
        send_seconds = round(max(0.0, (at - claim.requested_at).total_seconds()), 3)
    return {
        "delivery_id": delivery_id,
        "at": at,
        "files": len(sent),
        "rows": len(instances),
        "objects": len(size_by_uri),
        "bytes": sum(size_by_uri.values()),
        "layout": layout,
        "objects_written": result.objects_written,
        "rows_inserted": result.rows_inserted,
        "removed": result.removed,
        "kept": result.kept,
        "errors": len(result.errors),
        "send_seconds": send_seconds,
    }
