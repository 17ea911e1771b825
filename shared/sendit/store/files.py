"""File documents: claim, release, record a terminal state, fail (the anonymize and dead-letter side).

Everything that happens per file writes the file's own document and, in the same batched write, one shard
of its batch's tally (``store.tally``): the claim's create-if-absent counts ``received``, every transition
to a terminal state counts ``terminal``, each exactly once (the write's precondition decides). The batch
document is written by ``store.batches`` on transitions, never once per file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sendit import naming
from sendit.store import tally
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
    shards: int = tally.DEFAULT_SHARDS,
) -> FileClaim:
    """Claim ``obj`` for processing: create-if-absent; re-claim an expired lease; give up after N.

    The create and the tally's ``received`` commit together: a redelivery's create fails and counts
    nothing; a re-claim after an expired lease never counts again.
    """
    from google.api_core.exceptions import AlreadyExists

    key = naming.file_key(obj.bucket, obj.name, obj.generation)
    shard = tally.shard_ref(store, batch=batch, key=key, shards=shards)
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
            write = store.db.batch()
            write.create(ref, doc)
            tally.count_received(write, shard, now.timestamp())
            result = write.commit()[0]
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
        claim = _reclaim(
            store, key, snap, now=now, lease_until=lease_until, max_attempts=max_attempts, shard=shard
        )
        if claim is not None:
            return claim
    return FileClaim("busy", key)


def _reclaim(
    store: Store, key: str, snap: Any, *, now: datetime, lease_until: datetime, max_attempts: int, shard: Any
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
            write = store.db.batch()
            write.update(
                snap.reference,
                {
                    "state": FileState.FAILED,
                    "reason": f"gave up after {attempts} attempts",
                    "updated_at": server_ts(),
                    "finished_at": server_ts(),
                },
                option=store.precondition(snap.update_time),
            )
            tally.count_terminal(write, shard)
            write.commit()
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


def record_terminal(
    store: Store,
    *,
    key: str,
    fields: dict[str, Any],
    update_time: Any = None,
    batch: str | None = None,
    shards: int = tally.DEFAULT_SHARDS,
) -> bool:
    """Write a terminal state on a file. Returns False if the file was already SENT (left untouched).

    ``update_time`` (from the claim, whose document was RECEIVED) preconditions the write; if someone else
    wrote the document since (an expired lease re-claimed, a dead letter), the write is re-based on what is
    there now, unless the file was delivered meanwhile: a SENT file never goes back. The file's tally shard
    gets its ``terminal`` increment in the same commit, only when the document it replaces was not terminal.
    """
    from google.api_core.exceptions import FailedPrecondition, NotFound

    ref = store.file_ref(key)
    payload = dict(fields)
    payload["updated_at"] = server_ts()
    payload["finished_at"] = server_ts()
    counted = False
    if update_time is None or batch is None:
        snap = ref.get()
        data = (snap.to_dict() or {}) if snap.exists else None
        if data is None or data.get("state") == FileState.SENT:
            return False
        update_time, counted = snap.update_time, data.get("state") in TERMINAL
        batch = batch or str(data.get("batch_id") or "")
    shard = tally.shard_ref(store, batch=batch, key=key, shards=shards)
    for _ in range(PRECONDITION_RETRIES):
        try:
            write = store.db.batch()
            write.update(ref, payload, option=store.precondition(update_time))
            if not counted:
                tally.count_terminal(write, shard)
            write.commit()
            return True
        except (FailedPrecondition, NotFound):
            snap = ref.get()
            state = (snap.to_dict() or {}).get("state") if snap.exists else FileState.SENT
            if state == FileState.SENT:
                return False
            update_time, counted = snap.update_time, state in TERMINAL
    return False


def fail_file(
    store: Store,
    *,
    obj: ObjectFinalized,
    batch: str,
    reason: str,
    only_if_not_terminal: bool = True,
    create_only: bool = False,
    shards: int = tally.DEFAULT_SHARDS,
) -> bool:
    """Mark a file FAILED with ``reason``, creating its document if absent (e.g. a dead letter).

    Returns True if the state was written; a terminal file is left as it is; with ``create_only`` any
    existing document is (a listed object never received: one that did arrive is not touched). Counted in
    the tally like every terminal transition (a created document counts as received too).
    """
    from google.api_core.exceptions import AlreadyExists

    key = naming.file_key(obj.bucket, obj.name, obj.generation)
    ref = store.file_ref(key)
    shard = tally.shard_ref(store, batch=batch, key=key, shards=shards)
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
            write = store.db.batch()
            write.create(ref, doc)
            tally.count_received_terminal(write, shard, _now().timestamp())
            write.commit()
            return True
        except AlreadyExists:
            if create_only:
                return False
        snap = ref.get()
        if not snap.exists:
            continue
        was_terminal = (snap.to_dict() or {}).get("state") in TERMINAL
        if only_if_not_terminal and was_terminal:
            return False
        if _fail_existing(store, ref, snap, reason=reason, shard=None if was_terminal else shard):
            return True
    return False


def _fail_existing(store: Store, ref: Any, snap: Any, *, reason: str, shard: Any) -> bool:
    """FAILED over an existing document (preconditioned); ``shard`` None: it was counted terminal already."""
    from google.api_core.exceptions import FailedPrecondition, NotFound

    write = store.db.batch()
    write.update(
        ref,
        {"state": FileState.FAILED, "reason": reason, "updated_at": server_ts(), "finished_at": server_ts()},
        option=store.precondition(snap.update_time),
    )
    if shard is not None:
        tally.count_terminal(write, shard)
    try:
        write.commit()
    except (FailedPrecondition, NotFound):
        return False
    return True


def mark_file_failed(store: Store, *, key: str, reason: str, delivery_id: str | None = None) -> None:
    """A file that cannot be delivered (its clean object is gone, its row cannot be built, the DICOMweb
    server refused it): FAILED, with the delivery that failed it (``failed_delivery_id``)."""
    fields: dict[str, Any] = {"state": FileState.FAILED, "reason": reason, "updated_at": server_ts()}
    if delivery_id:
        fields["failed_delivery_id"] = delivery_id
    store.file_ref(key).update(fields)


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
