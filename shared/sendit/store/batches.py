"""Batch documents on the anonymize side: open a batch, and the fields it is settled with at completion.

The batch document is written when a batch is first seen, when it (re)opens, when its manifest is
recorded, and when it completes (``sendit.completion`` decides when; ``settle_fields`` computes what):
never once per file, because Firestore sustains about one write per second on a single document. Live
counts are derived with aggregation queries on ``files`` (``batch_counts``).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, NamedTuple

from sendit.store.base import PRECONDITION_RETRIES, Store, count, eq, now, server_ts
from sendit.store.vocabulary import MAX_ERRORS, REOPENABLE, BatchState, FileState

_DELIVERING = frozenset({BatchState.SENDING, BatchState.SENT})


def get_batch(store: Store, *, batch: str) -> dict[str, Any] | None:
    """The stored batch document (None when absent)."""
    snap = store.batch_ref(batch).get()
    return snap.to_dict() if snap.exists else None


def new_batch_doc(batch: str, bucket: str, folder: str) -> dict[str, Any]:
    return {
        "id": batch,
        "status": BatchState.QUEUE,
        "bucket": bucket,
        "folder": folder,  # staging side (the status API shows it unless SENDIT_STATUS_NAMES=hidden)
        "created_at": server_ts(),
        "updated_at": server_ts(),
        "start_time": server_ts(),
        "has_error": False,
        "errors": [],
        "counts": {},
    }


class Opened(NamedTuple):
    """What ``open_batch`` found: the status before, whether the file is late, the batch as read."""

    status: str
    late: bool
    data: dict[str, Any]


def open_batch(store: Store, *, batch: str, bucket: str, folder: str) -> Opened:
    """Make sure the batch exists and is PROCESSING; return (status before, late, the batch's fields).

    First file: create QUEUE (create-if-absent), then PROCESSING. A batch seen DONEPROCESSING, EMPTY,
    SENDING or SENT goes back to PROCESSING (``late`` is True when it was SENDING or SENT: the file arrived
    after a delivery started, and is delivered by a follow-up one).
    One document read per file; a write only on a transition.
    """
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

    ref = store.batch_ref(batch)
    first_status: str | None = None
    for _ in range(PRECONDITION_RETRIES * 2):
        snap = ref.get()
        if not snap.exists:
            with contextlib.suppress(AlreadyExists):
                ref.create(new_batch_doc(batch, bucket, folder))
            continue
        data = snap.to_dict() or {}
        status = str(data.get("status") or BatchState.QUEUE)
        if first_status is None:
            first_status = status
        late = first_status in _DELIVERING or status in _DELIVERING
        if status not in REOPENABLE:
            return Opened(status, late, data)
        update: dict[str, Any] = {"status": BatchState.PROCESSING, "updated_at": server_ts()}
        if status in _DELIVERING:
            update["reopened_at"] = server_ts()
        try:
            ref.update(update, option=store.precondition(snap.update_time))
            return Opened(status, late, {**data, "status": BatchState.PROCESSING})
        except (FailedPrecondition, NotFound):
            continue
    return Opened(first_status or BatchState.QUEUE, first_status in _DELIVERING, {})


def reopen_batch(store: Store, *, batch: str, snap: Any) -> bool:
    """A settled batch whose counts no longer match its tally goes back to PROCESSING (preconditioned)."""
    from google.api_core.exceptions import FailedPrecondition, NotFound

    status = (snap.to_dict() or {}).get("status")
    update: dict[str, Any] = {"status": BatchState.PROCESSING, "updated_at": server_ts()}
    if status == BatchState.SENT:
        update["reopened_at"] = server_ts()
    try:
        store.batch_ref(batch).update(update, option=store.precondition(snap.update_time))
    except (FailedPrecondition, NotFound):
        return False  # someone moved it: whoever did decides
    return True


def batch_counts(store: Store, *, batch: str) -> dict[str, int]:
    """``{RECEIVED, ANONYMIZED, SKIPPED, FAILED, SENT, total}`` by aggregation queries (no doc reads)."""
    counts = {str(s): count(store.files_of(batch).where(filter=eq("state", s))) for s in FileState}
    counts["total"] = sum(counts[s] for s in FileState)
    return counts


def _status_for(counts: dict[str, int]) -> BatchState:
    if counts[FileState.ANONYMIZED] > 0:
        return BatchState.DONEPROCESSING
    if counts[FileState.SENT] > 0:
        return BatchState.SENT  # late files that all failed or were filtered: nothing new to deliver
    return BatchState.EMPTY


def settle_fields(
    store: Store, *, batch: str, data: dict[str, Any], listed: set[str] | None, how: str
) -> dict[str, Any]:
    """The batch fields at completion, from one pass over its file documents (``how``: completed_by).

    ``listed``: the file keys of a sealed batch's manifest (files outside it count as ``unlisted_files``).
    The caller checks ``counts[RECEIVED]`` before writing.
    """
    summary = _summary(store, batch, listed)
    counts = summary["counts"]
    # Errors that belong to no file (a dead-lettered delivery) stay; file errors are recounted.
    batch_errors = [e for e in data.get("errors") or [] if isinstance(e, dict) and not e.get("file")]
    finish = now()
    start = data.get("start_time")
    update: dict[str, Any] = {
        "status": _status_for(counts),
        "counts": counts,
        "size_bytes": summary["size_bytes"],
        "has_error": counts[FileState.FAILED] > 0 or bool(batch_errors),
        "errors": (batch_errors + summary["errors"])[:MAX_ERRORS],
        "study_dates": summary["study_dates"],
        "study_uids": summary["study_uids"],
        "multiple_studies": summary["study_uids"] > 1,
        "late_files": summary["late_files"],
        # When the first clean file still waiting for delivery was recorded (None: no clean file waits):
        # its processing-bucket object expires first (sendit.expiry).
        "first_clean_at": summary["first_clean_at"],
        "completed_by": how,
        "finish_time": finish,
        "elapsed_seconds": (finish - start).total_seconds() if isinstance(start, datetime) else None,
        "updated_at": server_ts(),
    }
    if listed is not None:
        update["unlisted_files"] = summary["unlisted"]
    return update


def _summary(store: Store, batch: str, listed: set[str] | None) -> dict[str, Any]:
    """Counts, size, per-StudyDate counts, distinct studies, late and unlisted files, first errors, and
    the earliest ``finished_at`` of the ANONYMIZED (clean, not yet sent) files."""
    counts = {str(s): 0 for s in FileState}
    dates: dict[str, int] = {}
    studies: set[str] = set()
    errors: list[dict[str, str]] = []
    late = unlisted = size = 0
    first_clean: datetime | None = None
    fields = ["state", "reason", "study_date", "ids.study_uid", "late", "size", "finished_at"]
    for snap in store.files_of(batch).select(fields).stream():
        data = snap.to_dict() or {}
        state = str(data.get("state") or FileState.RECEIVED)
        counts[state] = counts.get(state, 0) + 1
        size += int(data.get("size") or 0)
        late += 1 if data.get("late") else 0
        unlisted += 1 if listed is not None and snap.id not in listed else 0
        at = data.get("finished_at")
        if state == FileState.ANONYMIZED and isinstance(at, datetime):
            first_clean = at if first_clean is None else min(first_clean, at)
        if state in (FileState.ANONYMIZED, FileState.SENT):
            if data.get("study_date"):
                dates[str(data["study_date"])] = dates.get(str(data["study_date"]), 0) + 1
            if uid := (data.get("ids") or {}).get("study_uid"):
                studies.add(str(uid))
        elif state == FileState.FAILED and len(errors) < MAX_ERRORS:
            errors.append({"file": snap.id, "reason": str(data.get("reason") or "unknown")})
    counts["total"] = sum(counts[str(s)] for s in FileState)
    return {
        "counts": counts,
        "size_bytes": size,
        "study_dates": dates,
        "study_uids": len(studies),
        "errors": errors,
        "late_files": late,
        "unlisted": unlisted,
        "first_clean_at": first_clean,
    }
