"""The `dead_letter` function: a message that exhausted its deliveries is recorded, then acked.

- a staging notification: its file is marked FAILED ("dead-lettered after N deliveries") unless it is
  terminal already, and its batch's completion is evaluated, so the upload still ends in a visible
  terminal state; a dead-lettered manifest leaves ``manifest_error`` on its batch (stable age applies);
- a deliver message: the batch goes back from SENDING to DONEPROCESSING with ``has_error`` and a reason,
  so an operator can send it again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sendit import completion, events, naming, seal
from sendit.errors import EventError, RetryableError
from sendit.events import ObjectFinalized
from sendit.store import batches, deliveries, files
from sendit.store.vocabulary import FileState

if TYPE_CHECKING:
    from sendit.app.context import Context

log = logging.getLogger(__name__)


def handle_event(ctx: Context, event_type: str, data: Any, event_id: str) -> None:
    """Record a dead-lettered message (see the module doc). Returns normally to ack."""
    try:
        letter = events.dead_letter(event_type, data, event_id)
    except EventError as exc:
        log.error("dead letter not understood, acked: %s", exc, extra={"event_id": event_id})
        return
    if letter.kind == "unknown":
        log.warning("dead letter of an unknown kind, acked", extra={"event_id": event_id})
        return
    try:
        if letter.upload is not None:
            dead_upload(ctx, letter.upload, letter.count)
        elif letter.delivery is not None:
            dead_delivery(ctx, letter.delivery.batch_id, letter.count)
        else:
            log.info("dead-lettered notification ignored", extra={"event_id": event_id})
    except RetryableError:
        raise
    except Exception as exc:
        error = RetryableError.during("dead letter", exc)
        log.log(
            logging.WARNING if error.transient else logging.ERROR,
            "dead letter not recorded: will be retried",
            extra={"event_id": event_id, "error": error.cause_type},
        )
        raise RetryableError(f"dead letter not recorded: {error.cause_type}") from None


def dead_upload(ctx: Context, obj: ObjectFinalized, count: int | None) -> bool:
    """Mark the file of a dead-lettered notification FAILED; returns whether its state was written."""
    if obj.bucket != ctx.settings.staging_bucket or obj.name.endswith("/"):
        log.info("dead-lettered notification ignored", extra={"event_id": obj.event_id})
        return False
    folder = naming.batch_folder(obj.name)
    batch = naming.batch_id(ctx.settings.secret_key, obj.bucket, folder)
    reason = f"dead-lettered after {count} deliveries" if count else "dead-lettered"
    if seal.is_seal(obj.name):  # not a file of the batch
        seal.record_error(ctx, batch, obj, folder, f"manifest {reason}")
        log.warning("manifest dead-lettered", extra={"event_id": obj.event_id, "batch_id": batch})
        return False
    where = {
        "event_id": obj.event_id,
        "file_key": naming.file_key(obj.bucket, obj.name, obj.generation),
        "name_hash": naming.name_hash(obj.name),
        "generation": obj.generation,
        "batch_id": batch,
    }
    if not files.fail_file(ctx.store, obj=obj, batch=batch, reason=reason, shards=ctx.settings.tally_shards):
        completion.evaluate(ctx, batch)
        log.info("dead letter for a file already terminal, acked", extra=where)
        return False
    batches.open_batch(ctx.store, batch=batch, bucket=obj.bucket, folder=folder)
    status = completion.evaluate(ctx, batch)
    log.warning(
        "file FAILED",
        extra={
            **where,
            "event": "file_outcome",
            "state": FileState.FAILED,
            "reason": reason,
            "batch_status": status,
        },
    )
    return True


def dead_delivery(ctx: Context, batch_id: str, attempts: int | None) -> bool:
    """A deliver message that exhausted its attempts: the batch gets ``has_error`` and a reason and goes
    back to DONEPROCESSING, so an operator can send it again. Returns whether the batch changed."""
    changed = deliveries.record_dead_letter(ctx.store, batch_id=batch_id, attempts=attempts)
    log.error(
        "deliver: message dead-lettered",
        extra={"batch_id": batch_id, "attempts": attempts, "batch_reset": changed},
    )
    return changed
