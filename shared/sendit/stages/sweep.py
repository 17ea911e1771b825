"""The `sweep` function: every tick of the scheduler (Cloud Scheduler -> the sweep topic in the cloud, the
local stack's scheduler process locally), look at every open batch once.

One query on the batches collection (status QUEUE or PROCESSING; never a query on files), then per batch
its tally (one read of at most S shard documents) and, when that allows completion, ``completion.evaluate``
(preconditioned on the batch snapshot the query returned). A sealed batch whose manifest is older than
``SENDIT_MANIFEST_TIMEOUT_SECONDS`` first gets a FAILED document for every listed object never received.
The sweep is the only trigger of the stable-age rule.

Idempotent and safe to run concurrently (every write is preconditioned or create-if-absent). Errors are
logged and the tick is acked: the next tick is the retry (a redelivered tick would only pile up).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sendit import completion, events
from sendit.store import tally

if TYPE_CHECKING:
    from sendit.app.context import Context

log = logging.getLogger(__name__)
MAX_BATCHES = 1000  # open batches looked at per tick


@dataclass
class SweepResult:
    open_batches: int = 0
    completed: dict[str, str] = field(default_factory=dict)  # batch id -> status written
    never_received: int = 0
    errors: int = 0


def handle_event(ctx: Context, event_type: str, data: Any, event_id: str) -> SweepResult:
    """The entry: the message's content does not matter (a tick); other event types are acked."""
    began = time.monotonic()
    result = SweepResult()
    if event_type != events.PUBSUB_PUBLISHED:
        log.info("ignored: not a Pub/Sub tick", extra={"event_id": event_id})
        return result
    try:
        result = sweep(ctx)
    except Exception as exc:  # the next tick retries
        result.errors += 1
        log.error("sweep failed", extra={"event_id": event_id, "error": type(exc).__name__})
    log.info(
        "sweep",
        extra={
            "event": "sweep",
            "event_id": event_id,
            "open_batches": result.open_batches,
            "completed": len(result.completed),
            "never_received": result.never_received,
            "errors": result.errors,
            "sweep_ms": round((time.monotonic() - began) * 1000, 1),
        },
    )
    return result


def open_batches(ctx: Context) -> list[Any]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    store = ctx.store
    query = store.db.collection(store.batches).where(
        filter=FieldFilter("status", "in", sorted(completion.OPEN))
    )
    return list(query.limit(MAX_BATCHES).stream())


def sweep(ctx: Context) -> SweepResult:
    result = SweepResult()
    snaps = open_batches(ctx)
    result.open_batches = len(snaps)
    for snap in snaps:
        try:
            status = sweep_batch(ctx, snap, result)
        except Exception as exc:  # one batch's trouble never stops the others
            result.errors += 1
            log.warning(
                "sweep: batch not evaluated", extra={"batch_id": snap.id, "error": type(exc).__name__}
            )
            continue
        if status:
            result.completed[snap.id] = status
    return result


def sweep_batch(ctx: Context, snap: Any, result: SweepResult) -> str | None:
    batch, data = snap.id, snap.to_dict() or {}
    counts = tally.read(ctx.store, batch=batch)
    if _manifest_overdue(ctx, data):
        created = completion.fail_never_received(ctx, batch, data)
        if created:
            result.never_received += created
            snap, counts = None, tally.read(ctx.store, batch=batch)  # judged on fresh state
    return completion.evaluate(ctx, batch, snapshot=snap, counts=counts)


def _manifest_overdue(ctx: Context, data: dict[str, Any]) -> bool:
    at = data.get("manifest_at")
    if not isinstance(data.get("manifest"), dict) or not isinstance(at, datetime):
        return False
    return time.time() - at.timestamp() >= ctx.settings.manifest_timeout_seconds
