"""The `sweep` function: every tick of the scheduler (Cloud Scheduler -> the sweep topic in the cloud, the
local stack's scheduler process locally), look at every open batch once.

One query on the batches collection (status QUEUE or PROCESSING; never a query on files), then per batch
its tally (one read of at most S shard documents) and, when that allows completion, ``completion.evaluate``
(preconditioned on the batch snapshot the query returned). A sealed batch whose manifest is older than
``SENDIT_MANIFEST_TIMEOUT_SECONDS`` first gets a FAILED document for every listed object never received.
The sweep is the only trigger of the stable-age rule.

It also re-drives stalled files (``store.stalled``; at most every half ``SENDIT_REDRIVE_SECONDS``): a file
still RECEIVED whose lease expired more than ``SENDIT_REDRIVE_SECONDS`` ago, in any batch, has its
OBJECT_FINALIZE notification re-published to the uploads topic, and the ordinary claim takes it from there
(docs/reliability.md). Without it such a file would hold its batch open for ever.

At most once an hour (``EXPIRY_CHECK_SECONDS``) it also counts the settled batches (DONEPROCESSING, SENDING)
whose clean files expire within ``sendit.expiry.SOON_DAYS`` days, or already did, and logs them at WARNING
(``event: expiring``: counts and batch ids, never a name): one query on the batches collection.

Idempotent and safe to run concurrently (every write is preconditioned or create-if-absent). Errors are
logged and the tick is acked: the next tick is the retry (a redelivered tick would only pile up).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sendit import completion, events, expiry
from sendit.store import stalled, tally
from sendit.store.vocabulary import BatchState

if TYPE_CHECKING:
    from sendit.app.context import Context

log = logging.getLogger(__name__)
MAX_BATCHES = 1000  # open batches looked at per tick
EXPIRY_CHECK_SECONDS = 3600  # how often an instance counts the batches near expiry


@dataclass
class SweepResult:
    open_batches: int = 0
    completed: dict[str, str] = field(default_factory=dict)  # batch id -> status written
    never_received: int = 0
    redriven: int = 0
    expiring: int | None = None  # settled batches near expiry (None: not counted this tick)
    errors: int = 0


class _Due:
    """When the re-drive last ran in this instance (losing it costs one query more)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = float("-inf")

    def due(self, every: float, now: float) -> bool:
        with self._lock:
            if now - self._at < every:
                return False
            self._at = now
            return True


_redrive_due = _Due()
_expiry_due = _Due()


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
            "redriven": result.redriven,
            "expiring": result.expiring,
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
    if _redrive_due.due(ctx.settings.redrive_seconds / 2, time.monotonic()):
        try:
            result.redriven = redrive(ctx)
        except Exception as exc:  # never stops completion; the next window retries
            result.errors += 1
            log.warning("sweep: re-drive failed", extra={"error": type(exc).__name__})
    if _expiry_due.due(EXPIRY_CHECK_SECONDS, time.monotonic()):
        try:
            result.expiring = len(expiring(ctx))
        except Exception as exc:  # a report only: the next check tries again
            result.errors += 1
            log.warning("sweep: expiry not checked", extra={"error": type(exc).__name__})
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


def redrive(ctx: Context) -> int:
    """Re-publish the notification of every stalled file; the number re-published.

    The re-drive is recorded first (preconditioned: one sweep wins), then published; a publish that fails
    is tried again after SENDIT_REDRIVE_SECONDS. Logged with the file key and attempts, never the name.
    """
    settings = ctx.settings
    topic = ctx.clients.topic_path(settings.upload_topic)
    done = 0
    for file in stalled.stalled(ctx.store, after_seconds=settings.redrive_seconds):
        if not stalled.mark_redriven(ctx.store, file=file):
            continue
        data, attributes = events.notification_of(file, redriven="stalled")
        where: dict[str, Any] = {"event": "redrive", "batch_id": file.batch_id, "file_key": file.key}
        where["attempts"] = file.attempts
        try:
            ctx.clients.publisher.publish(topic, data, **attributes).result(timeout=30)  # type: ignore[arg-type]
        except Exception as exc:  # the next re-drive window tries again
            log.warning("re-drive not published", extra={**where, "error": type(exc).__name__})
            continue
        done += 1
        log.warning("stalled file re-driven: notification re-published", extra=where)
    return done


def expiring(ctx: Context) -> list[str]:
    """Ids of the settled batches whose clean files expire within SOON_DAYS (or did); a WARNING if any."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    store, now = ctx.store, datetime.now(UTC)
    settled = [BatchState.DONEPROCESSING, BatchState.SENDING]
    query = store.db.collection(store.batches).where(filter=FieldFilter("status", "in", settled))
    soon, expired = [], 0
    for snap in query.select(list(expiry.FIELDS)).limit(MAX_BATCHES).stream():
        view = expiry.expiry_view(
            snap.to_dict() or {}, retention_days=ctx.settings.processing_retention_days, now=now
        )
        if view.get("expiring_soon"):
            soon.append(snap.id)
            expired += 1 if view["expired"] else 0
    if soon:
        log.warning(
            "unsent batches near expiry: send them, or their clean files are deleted",
            extra={
                "event": "expiring",
                "expiring_soon": len(soon),
                "expired": expired,
                "batch_ids": sorted(soon)[:20],
            },
        )
    return sorted(soon)


def _manifest_overdue(ctx: Context, data: dict[str, Any]) -> bool:
    at = data.get("manifest_at")
    if not isinstance(data.get("manifest"), dict) or not isinstance(at, datetime):
        return False
    return time.time() - at.timestamp() >= ctx.settings.manifest_timeout_seconds
