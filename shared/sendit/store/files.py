"""File documents: claim, release, record a terminal state, fail (the anonymize and dead-letter side).

Everything that happens per file writes the file's own document only (one write per file; the batch
document is written by ``store.batches`` on transitions, never once per file).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sendit import naming
from sendit.store.base import PRECONDITION_RETRIES, Store, eq, server_ts
from sendit.store.base import now as _now
from sendit.store.vocabulary import TERMINAL, FileState

if TYPE_CHECKING:
    from sendit.deid.outcome import Outcome
    from sendit.events import ObjectFinalized

MAX_HEADER_CHARS = 400_000  # a file document must stay well under Firestore's 1 MiB


@dataclass(frozen=True)
class FileClaim:
    """The result of ``claim_file``.

    ``kind``: ``claimed`` (process it; ``attempts`` counts claims, ``update_time`` preconditions the
    terminal write), ``duplicate`` (already terminal: ack, nothing to do), ``busy`` (another delivery
    holds a valid lease: retry later), ``gave_up`` (more than max_attempts claims: recorded FAILED).
    """

    kind: Literal["claimed", "duplicate", "busy", "gave_up"]
    key: str
    attempts: int = 0
    state: str | None = None
    update_time: Any = None
    late: bool = False


def new_file_doc(obj: ObjectFinalized, batch: str, *, late: bool = False) -> dict[str, Any]:
    """The fields of a file document that come from the notification."""
    return {
        "batch_id": batch,
        "bucket": obj.bucket,
        "object": obj.name,  # staging side only: never logged, never exposed
        "generation": obj.generation,
        "size": obj.size,
        "md5": obj.md5,
        "name_hash": naming.name_hash(obj.name),
        "late": late,
    }


def claim_file(
    store: Store,
    *,
    obj: ObjectFinalized,
    batch: str,
    max_attempts: int,
    lease_seconds: float,
    late: bool = False,
    now: datetime | None = None,
) -> FileClaim:
    """Claim ``obj`` for processing: create-if-absent; re-claim an expired lease; give up after N."""
    from google.api_core.exceptions import AlreadyExists

    key = naming.file_key(obj.bucket, obj.name, obj.generation)
    ref = store.file_ref(key)
    now = now or _now()
    lease_until = now + timedelta(seconds=lease_seconds)
    doc = new_file_doc(obj, batch, late=late)
    doc.update(
        state=FileState.RECEIVED,
        reason=None,
        attempts=1,
        lease_until=lease_until,
        created_at=server_ts(),
        updated_at=server_ts(),
    )
    for _ in range(PRECONDITION_RETRIES):
        try:
            result = ref.create(doc)
            return FileClaim(
                "claimed",
                key,
                attempts=1,
                state=FileState.RECEIVED,
                update_time=result.update_time,
                late=late,
            )
        except AlreadyExists:
            pass
        snap = ref.get()
        if not snap.exists:
            continue  # deleted in between: try the create again
        claim = _reclaim(store, key, snap, now=now, lease_until=lease_until, max_attempts=max_attempts)
        if claim is not None:
            return claim
    return FileClaim("busy", key)


def _reclaim(
    store: Store, key: str, snap: Any, *, now: datetime, lease_until: datetime, max_attempts: int
) -> FileClaim | None:
    """Decide on a file document that exists already; None when it moved under us (look again)."""
    from google.api_core.exceptions import FailedPrecondition, NotFound

    data = snap.to_dict() or {}
    state = data.get("state")
    attempts = int(data.get("attempts") or 0)
    if state in TERMINAL:
        return FileClaim("duplicate", key, attempts=attempts, state=state)
    held = data.get("lease_until")
    if isinstance(held, datetime) and held > now:
        return FileClaim("busy", key, attempts=attempts, state=state)
    try:
        if attempts >= max_attempts:
            snap.reference.update(
                {
                    "state": FileState.FAILED,
                    "reason": f"gave up after {attempts} attempts",
                    "updated_at": server_ts(),
                },
                option=store.precondition(snap.update_time),
            )
            return FileClaim("gave_up", key, attempts=attempts, state=FileState.FAILED)
        result = snap.reference.update(
            {"attempts": attempts + 1, "lease_until": lease_until, "updated_at": server_ts()},
            option=store.precondition(snap.update_time),
        )
    except (FailedPrecondition, NotFound):
        return None  # someone else moved it: look again
    return FileClaim(
        "claimed",
        key,
        attempts=attempts + 1,
        state=FileState.RECEIVED,
        update_time=result.update_time,
        late=bool(data.get("late")),
    )


def release_file(store: Store, *, key: str, update_time: Any) -> bool:
    """Expire our lease after a transient failure so the redelivery may re-claim at once."""
    from google.api_core.exceptions import FailedPrecondition, NotFound

    try:
        store.file_ref(key).update(
            {"lease_until": _now(), "updated_at": server_ts()}, option=store.precondition(update_time)
        )
        return True
    except (FailedPrecondition, NotFound):
        return False


def outcome_fields(outcome: Outcome) -> dict[str, Any]:
    """The file-document fields of an engine outcome (ids, row, study date, reason)."""
    fields: dict[str, Any] = {"state": outcome.state, "reason": outcome.reason}
    if outcome.ids is not None:
        ids = outcome.ids
        fields["ids"] = {
            "patient_id": ids.patient_id,
            "study_uid": ids.study_uid,
            "series_uid": ids.series_uid,
            "instance_uid": ids.instance_uid,
            "accession": ids.accession,
        }
    if outcome.study_date:
        fields["study_date"] = outcome.study_date
    if outcome.row:
        row = dict(outcome.row)
        header = row.get("header")
        if isinstance(header, str) and len(header) > MAX_HEADER_CHARS:
            row["header"] = None
            fields["row_header_dropped"] = True
        fields["row"] = row
    return fields


def record_terminal(store: Store, *, key: str, fields: dict[str, Any], update_time: Any = None) -> bool:
    """Write a terminal state on a file. Returns False if the file was already SENT (left untouched).

    ``update_time`` (from the claim) preconditions the write; if someone else wrote the document since
    (an expired lease re-claimed, a dead letter), the write is re-based on what is there now, unless the
    file was delivered meanwhile: a SENT file never goes back.
    """
    from google.api_core.exceptions import FailedPrecondition, NotFound

    ref = store.file_ref(key)
    payload = dict(fields)
    payload["updated_at"] = server_ts()
    payload["finished_at"] = server_ts()
    for _ in range(PRECONDITION_RETRIES):
        try:
            if update_time is None:
                ref.update(payload)
            else:
                ref.update(payload, option=store.precondition(update_time))
            return True
        except (FailedPrecondition, NotFound):
            snap = ref.get()
            if not snap.exists:
                return False
            if (snap.to_dict() or {}).get("state") == FileState.SENT:
                return False
            update_time = snap.update_time
    return False


def fail_file(
    store: Store, *, obj: ObjectFinalized, batch: str, reason: str, only_if_not_terminal: bool = True
) -> bool:
    """Mark a file FAILED with ``reason``, creating its document if absent (e.g. a dead letter).

    Returns True if the state was written; a terminal file is left as it is.
    """
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

    ref = store.file_ref(naming.file_key(obj.bucket, obj.name, obj.generation))
    doc = new_file_doc(obj, batch)
    doc.update(
        state=FileState.FAILED,
        reason=reason,
        attempts=0,
        created_at=server_ts(),
        updated_at=server_ts(),
        finished_at=server_ts(),
    )
    for _ in range(PRECONDITION_RETRIES):
        try:
            ref.create(doc)
            return True
        except AlreadyExists:
            pass
        snap = ref.get()
        if not snap.exists:
            continue
        if only_if_not_terminal and (snap.to_dict() or {}).get("state") in TERMINAL:
            return False
        try:
            ref.update(
                {
                    "state": FileState.FAILED,
                    "reason": reason,
                    "updated_at": server_ts(),
                    "finished_at": server_ts(),
                },
                option=store.precondition(snap.update_time),
            )
            return True
        except (FailedPrecondition, NotFound):
            continue
    return False


def mark_file_failed(store: Store, *, key: str, reason: str) -> None:
    """A file that cannot be delivered (its clean object is gone, its row cannot be built): FAILED."""
    store.file_ref(key).update({"state": FileState.FAILED, "reason": reason, "updated_at": server_ts()})


def get_file(store: Store, *, key: str) -> dict[str, Any] | None:
    """One file document with its ``key`` (None when absent)."""
    snap = store.file_ref(key).get()
    return {"key": snap.id, **(snap.to_dict() or {})} if snap.exists else None


def files_of_batch(store: Store, *, batch: str, state: str | None = None) -> list[dict[str, Any]]:
    """Every file document of a batch (optionally of one state), each with its ``key``."""
    query: Any = store.files_of(batch)
    if state is not None:
        query = query.where(filter=eq("state", state))
    return [{"key": snap.id, **(snap.to_dict() or {})} for snap in query.stream()]
