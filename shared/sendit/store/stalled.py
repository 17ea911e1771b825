"""Stalled files: claimed (RECEIVED) but with a lease that expired long ago and no delivery re-claiming it.

A claim's lease frees a file whose processing died, but only a redelivered notification re-claims it. Pub/Sub
redelivers a message whose push failed; the local Pub/Sub emulator does not always (docs/reliability.md:
a push whose connection died with a killed worker is dropped), and a message can also run out of deliveries
while its lease is held. ``stalled`` finds such files, of every batch whatever its status (a late file of a
SENT batch, or the first file of a batch whose instance died before the batch document was written, belongs
to no open batch); ``mark_redriven`` records, preconditioned
on the document the finder read, that the sweep is re-publishing one (so two sweeps never both do, and the
next re-drive waits as long again). The redelivered notification goes through the ordinary claim: a file
that turned terminal meanwhile is a duplicate, and ``max_attempts`` still bounds how often it is tried.

The query is one equality (``state`` RECEIVED: the files in flight, few at any time), served by Firestore's
single-field index (no composite index to deploy), with a projection of the fields needed; the lease test is
done on the documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sendit.store.base import eq, server_ts
from sendit.store.base import now as _now
from sendit.store.vocabulary import FileState

if TYPE_CHECKING:
    from sendit.store.base import Store

FIELDS = (
    "batch_id",
    "bucket",
    "object",
    "generation",
    "size",
    "md5",
    "attempts",
    "lease_until",
    "redriven_at",
)


@dataclass(frozen=True)
class Stalled:
    """A file to re-drive: its key, the staging object it came from, and the snapshot's update time."""

    key: str
    batch_id: str
    bucket: str
    name: str
    generation: str
    size: int | None
    md5: str | None
    attempts: int
    update_time: Any


def stalled(store: Store, *, after_seconds: float, now: datetime | None = None) -> list[Stalled]:
    """Files still RECEIVED whose lease expired more than ``after_seconds`` ago and that were not re-driven
    within as long."""
    now = now or _now()
    cutoff = now - timedelta(seconds=after_seconds)
    query = (
        store.db.collection(store.files).where(filter=eq("state", FileState.RECEIVED)).select(list(FIELDS))
    )
    found = []
    for snap in query.stream():
        data = snap.to_dict() or {}
        lease, redriven = data.get("lease_until"), data.get("redriven_at")
        if not isinstance(lease, datetime) or lease > cutoff:
            continue  # held, or freed too recently for a redelivery to have been due
        if isinstance(redriven, datetime) and redriven > cutoff:
            continue
        if not data.get("bucket") or not data.get("object") or data.get("generation") in (None, ""):
            continue
        size = data.get("size")
        found.append(
            Stalled(
                key=snap.id,
                batch_id=str(data.get("batch_id") or ""),
                bucket=str(data["bucket"]),
                name=str(data["object"]),
                generation=str(data["generation"]),
                size=int(size) if isinstance(size, int) else None,
                md5=data.get("md5") if isinstance(data.get("md5"), str) else None,
                attempts=int(data.get("attempts") or 0),
                update_time=snap.update_time,
            )
        )
    return found


def mark_redriven(store: Store, *, file: Stalled) -> bool:
    """Record the re-drive on the file (only if nobody wrote it since it was found); False: leave it."""
    from google.api_core.exceptions import FailedPrecondition, NotFound

    try:
        store.file_ref(file.key).update(
            {"redriven_at": server_ts(), "redrives": _increment(), "updated_at": server_ts()},
            option=store.precondition(file.update_time),
        )
    except (FailedPrecondition, NotFound):
        return False
    return True


def _increment() -> Any:
    from google.cloud import firestore

    return firestore.Increment(1)
