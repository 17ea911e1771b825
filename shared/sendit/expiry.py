"""When an unsent batch's clean files expire (docs/operations.md, "Expiry").

The processing bucket's lifecycle rule (terraform/storage.tf: ``var.storage.processing_retention_days``,
passed to the functions as ``SENDIT_PROCESSING_RETENTION_DAYS``) deletes every clean object that many days
after it was written. A batch not sent by then fails at send. So the status API shows, for every batch
that holds clean files waiting for delivery (status not SENT, ANONYMIZED files counted), ``expires_at``
(when its first clean file may be deleted: the time it was written plus the retention), ``expiring_soon``
(``expires_at`` within ``SOON_DAYS`` days, or past) and ``expired`` (past).

Derived from the batch document alone (never a listing of the bucket, never a query of its files). The
time the first waiting clean file was written is
- ``first_clean_at`` (the earliest ``finished_at`` of the batch's ANONYMIZED files, written when the batch
  settles: ``store.batches.settle_fields``), while no delivery came after that settling;
- otherwise the time the current round of processing began, which is a little before its first clean
  file (the estimate errs early, never late): ``start_time`` for a batch never delivered; after a
  delivery, ``reopened_at`` if the batch reopened after it last settled, else the delivery's ``sent_at``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sendit.store.vocabulary import BatchState, FileState

SOON_DAYS = 7  # a batch whose clean files expire within this many days is flagged
# The batch document fields the expiry is derived from.
FIELDS = (
    "status",
    "counts",
    "first_clean_at",
    "finish_time",
    "sent_at",
    "reopened_at",
    "start_time",
    "created_at",
)


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def first_clean(data: dict[str, Any]) -> datetime | None:
    """When the first clean file still waiting was written (at the latest), from the batch document."""
    settled, sent = _utc(data.get("finish_time")), _utc(data.get("sent_at"))
    recorded = _utc(data.get("first_clean_at"))
    if recorded is not None and (sent is None or (settled is not None and settled > sent)):
        return recorded
    if sent is None:
        return _utc(data.get("start_time")) or _utc(data.get("created_at"))
    reopened = _utc(data.get("reopened_at"))
    if reopened is not None and (settled is None or reopened > settled):
        return reopened
    return sent


def expires_at(data: dict[str, Any], *, retention_days: int) -> datetime | None:
    """When the batch's first waiting clean file may be deleted; None when no clean file waits.

    ``data`` is the batch document with its current ``counts`` (the status view's).
    """
    if str(data.get("status") or "") == BatchState.SENT:
        return None
    counts = data.get("counts") or {}
    if not isinstance(counts, dict) or int(counts.get(FileState.ANONYMIZED) or 0) <= 0:
        return None
    written = first_clean(data)
    return None if written is None else written + timedelta(days=retention_days)


def expiry_view(data: dict[str, Any], *, retention_days: int, now: datetime) -> dict[str, Any]:
    """``{"expires_at", "expiring_soon", "expired"}`` for the status API, or ``{}`` (nothing waits)."""
    at = expires_at(data, retention_days=retention_days)
    if at is None:
        return {}
    left = at - now
    return {
        "expires_at": at.isoformat(),
        "expiring_soon": left <= timedelta(days=SOON_DAYS),
        "expired": left <= timedelta(0),
    }
