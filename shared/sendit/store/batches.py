"""Batch documents on the anonymize side: open a batch, finalize it when its last file is terminal.

The batch document is written when a batch is first seen, when it (re)opens, and when its last file turns
terminal (``finalize_batch``): never once per file, because Firestore sustains about one write per second
on a single document. Counts are derived with aggregation queries on ``files`` (``batch_counts``).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from sendit.store.base import PRECONDITION_RETRIES, Store, count, eq, now, server_ts
from sendit.store.vocabulary import MAX_ERRORS, REOPENABLE, BatchState, FileState

# Batches in these states are finalized again after a duplicate notification (``heal_batch``).
_HEALABLE = frozenset({BatchState.QUEUE, BatchState.PROCESSING, BatchState.DONEPROCESSING, BatchState.EMPTY})
_DELIVERING = frozenset({BatchState.SENDING, BatchState.SENT})


def get_batch(store: Store, *, batch: str) -> dict[str, Any] | None:
    """The stored batch document (None when absent)."""
    snap = store.batch_ref(batch).get()
    return snap.to_dict() if snap.exists else None


def _new_batch(batch: str, bucket: str, folder: str) -> dict[str, Any]:
    return {
        "id": batch,
        "status": BatchState.QUEUE,
        "bucket": bucket,
        "folder": folder,  # staging side only
        "created_at": server_ts(),
        "updated_at": server_ts(),
        "start_time": server_ts(),
        "has_error": False,
        "errors": [],
        "counts": {},
    }


def open_batch(store: Store, *, batch: str, bucket: str, folder: str) -> tuple[str, bool]:
    """Make sure the batch exists and is PROCESSING; return (status before, late).

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
                ref.create(_new_batch(batch, bucket, folder))
            continue
        status = str((snap.to_dict() or {}).get("status") or BatchState.QUEUE)
        if first_status is None:
            first_status = status
        late = first_status in _DELIVERING or status in _DELIVERING
        if status not in REOPENABLE:
            return status, late
        update: dict[str, Any] = {"status": BatchState.PROCESSING, "updated_at": server_ts()}
        if status in _DELIVERING:
            update["reopened_at"] = server_ts()
        try:
            ref.update(update, option=store.precondition(snap.update_time))
            return status, late
        except (FailedPrecondition, NotFound):
            continue
    return first_status or BatchState.QUEUE, first_status in _DELIVERING


def has_pending(store: Store, *, batch: str) -> bool:
    """Whether any file of the batch is not yet terminal: a keys-only query with limit 1.

    Cheaper than a count while a batch is busy (it stops at the first hit); run after every file.
    """
    query = store.files_of(batch).where(filter=eq("state", FileState.RECEIVED)).select([]).limit(1)
    return any(True for _ in query.stream())


def batch_counts(store: Store, *, batch: str) -> dict[str, int]:
    """``{RECEIVED, ANONYMIZED, SKIPPED, FAILED, SENT, total}`` by aggregation queries (no doc reads)."""
    counts = {str(s): count(store.files_of(batch).where(filter=eq("state", s))) for s in FileState}
    counts["total"] = sum(counts[s] for s in FileState)
    return counts


def _size_sum(store: Store, batch: str) -> int:
    query: Any = store.files_of(batch).sum("size", alias="s")
    for row in query.get():
        for agg in row:
            return int(agg.value or 0)
    return 0


def _status_for(counts: dict[str, int], current: str) -> BatchState:
    if current == BatchState.SENDING:
        return BatchState.SENDING  # a delivery is running: it decides what comes next (docs/pipeline.md)
    if counts[FileState.ANONYMIZED] > 0:
        return BatchState.DONEPROCESSING
    if counts[FileState.SENT] > 0:
        return BatchState.SENT  # late files that all failed or were filtered: nothing new to deliver
    return BatchState.EMPTY


def finalize_batch(store: Store, *, batch: str) -> str | None:
    """If every file of the batch is terminal, write DONEPROCESSING/EMPTY with counts and metrics.

    Returns the status written, or None when files are still in progress. The batch snapshot is read
    before counting and the write is preconditioned on it: a file that (re)opened the batch in between
    makes the write fail and the check run again.
    """
    from google.api_core.exceptions import FailedPrecondition, NotFound

    ref = store.batch_ref(batch)
    for _ in range(PRECONDITION_RETRIES):
        if has_pending(store, batch=batch):
            return None  # the common case while a batch is busy: no batch read at all
        snap = ref.get()
        if not snap.exists:
            return None
        data = snap.to_dict() or {}
        counts = batch_counts(store, batch=batch)
        if counts[FileState.RECEIVED] > 0:
            return None
        status = _status_for(counts, str(data.get("status") or BatchState.QUEUE))
        try:
            ref.update(
                _final_fields(store, batch, data, counts, status), option=store.precondition(snap.update_time)
            )
            return status
        except (FailedPrecondition, NotFound):
            continue
    return None


def _final_fields(
    store: Store, batch: str, data: dict[str, Any], counts: dict[str, int], status: str
) -> dict[str, Any]:
    summary = _summary(store, batch)
    finish = now()
    start = data.get("start_time")
    return {
        "status": status,
        "counts": counts,
        "size_bytes": _size_sum(store, batch),
        "has_error": counts[FileState.FAILED] > 0,
        "errors": summary["errors"],
        "study_dates": summary["study_dates"],
        "study_uids": summary["study_uids"],
        "multiple_studies": summary["study_uids"] > 1,
        "late_files": summary["late_files"],
        "finish_time": finish,
        "elapsed_seconds": (finish - start).total_seconds() if isinstance(start, datetime) else None,
        "updated_at": server_ts(),
    }


def _summary(store: Store, batch: str) -> dict[str, Any]:
    """Per-StudyDate counts, distinct study UIDs, late files and the first errors, in one pass."""
    dates: dict[str, int] = {}
    studies: set[str] = set()
    errors: list[dict[str, str]] = []
    late = 0
    fields = ["state", "reason", "study_date", "ids.study_uid", "late"]
    for snap in store.files_of(batch).select(fields).stream():
        data = snap.to_dict() or {}
        state = data.get("state")
        if data.get("late"):
            late += 1
        if state in (FileState.ANONYMIZED, FileState.SENT):
            date = data.get("study_date")
            if date:
                dates[str(date)] = dates.get(str(date), 0) + 1
            uid = (data.get("ids") or {}).get("study_uid")
            if uid:
                studies.add(str(uid))
        elif state == FileState.FAILED and len(errors) < MAX_ERRORS:
            errors.append({"file": snap.id, "reason": str(data.get("reason") or "unknown")})
    return {"study_dates": dates, "study_uids": len(studies), "errors": errors, "late_files": late}


def heal_batch(store: Store, *, batch: str) -> None:
    """After a duplicate or a dead letter for a terminal file: finish a batch left open by a crash between
    'recorded' and 'finalized'.

    A DONEPROCESSING/EMPTY batch is re-finalized too: a concurrent file's finalize may have written the
    counts of all files but the crashed one, and only this redelivery is left to correct them.
    """
    current = get_batch(store, batch=batch)
    if current is not None and current.get("status") in _HEALABLE:
        finalize_batch(store, batch=batch)
