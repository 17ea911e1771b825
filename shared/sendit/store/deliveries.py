"""Batch and file documents on the send/deliver side (the document contract is docs/state.md).

The batch moves DONEPROCESSING -> SENDING (``request_send``, preconditioned so two sends never queue a
batch twice) -> SENT (``finish_delivery``); files move ANONYMIZED -> SENT (``mark_files_sent``). A
delivery holds a short lease on its batch so two copies of one message never deliver concurrently, and
each delivery is identified by the ``delivery_id`` that ``send`` wrote, so a retried or duplicated message
finds the work done before it. A message that exhausted its deliveries puts the batch back to
DONEPROCESSING with ``has_error`` and a reason (``record_dead_letter``), ready to be sent again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sendit.store.base import PRECONDITION_RETRIES, WRITE_BATCH, Store, eq, field_of, now
from sendit.store.vocabulary import MAX_ERRORS, BatchState, FileState

LEASE_SECONDS = 600  # longer than the deliver function's timeout (540 s)

SendOutcome = Literal["queued", "not_ready", "already_sent", "in_progress", "unknown"]


@dataclass(frozen=True)
class SendDecision:
    batch_id: str
    outcome: SendOutcome
    status: str | None = None
    delivery_id: str | None = None


@dataclass
class SendResult:
    """What one send did, batch by batch (the JSON answer of the send API)."""

    named: bool
    requested: int = 0
    queued: list[str] = field(default_factory=list)
    not_ready: list[dict[str, Any]] = field(default_factory=list)
    already_sent: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    not_queued: list[str] = field(default_factory=list)  # the message could not be published

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "queued": self.queued,
            "not_ready": self.not_ready,
            "already_sent": self.already_sent,
            "in_progress": self.in_progress,
            "unknown": self.unknown,
        }
        if self.not_queued:
            body["not_queued"] = self.not_queued
        return body


@dataclass(frozen=True)
class DeliveryClaim:
    """Whether a deliver invocation may work on its batch now."""

    granted: bool
    reason: str  # claimed | resumed | unknown | not_sending | stale | busy | reopened
    status: str | None = None
    delivery_id: str | None = None
    first_delivery: bool = True
    requested_at: datetime | None = None


# ------------------------------------------------------------------------------------------ send


def ready_batch_ids(store: Store) -> list[str]:
    """Ids of every batch in DONEPROCESSING (what a send without a list queues)."""
    query = store.db.collection(store.batches).where(filter=eq("status", BatchState.DONEPROCESSING))
    return sorted(snap.id for snap in query.select([]).stream())


def request_send(
    store: Store, *, batch_id: str, delivery_id: str, at: datetime | None = None
) -> SendDecision:
    """DONEPROCESSING -> SENDING, written only if the batch did not change since it was read.

    Optimistic concurrency (an update preconditioned on the snapshot's update time) rather than a
    transaction: concurrent sends of one batch never queue it twice, and none of them waits on a lock
    (Firestore - and much more so its emulator - aborts contended transactions). The loser re-reads and
    reports what it finds (``in_progress``).
    """
    from google.api_core.exceptions import FailedPrecondition, NotFound
    from google.cloud import firestore as fs

    ref = store.batch_ref(batch_id)
    when = at or now()
    for _ in range(PRECONDITION_RETRIES):
        snap = ref.get()
        if not snap.exists:
            return SendDecision(batch_id, "unknown")
        status = str(snap.get("status") or "")
        if status == BatchState.SENT:
            return SendDecision(batch_id, "already_sent", status)
        if status == BatchState.SENDING:
            return SendDecision(batch_id, "in_progress", status, field_of(snap, "delivery_id"))
        if status != BatchState.DONEPROCESSING:
            return SendDecision(batch_id, "not_ready", status)
        try:
            ref.update(
                {
                    "status": BatchState.SENDING,
                    "delivery_id": delivery_id,
                    "send_requested_at": when,
                    "updated_at": fs.SERVER_TIMESTAMP,
                },
                option=store.precondition(snap.update_time),
            )
        except (FailedPrecondition, NotFound):
            continue  # changed under us: look again
        return SendDecision(batch_id, "queued", BatchState.SENDING, delivery_id)
    return SendDecision(batch_id, "in_progress", BatchState.SENDING)


def revert_send(store: Store, *, batch_id: str, delivery_id: str) -> bool:
    """Undo ``request_send`` when its message could not be published (only if nothing moved since)."""
    from google.cloud import firestore as fs

    ref = store.batch_ref(batch_id)

    @fs.transactional
    def attempt(tx: Any) -> bool:
        snap = ref.get(transaction=tx)
        if (
            not snap.exists
            or snap.get("status") != BatchState.SENDING
            or field_of(snap, "delivery_id") != delivery_id
        ):
            return False
        tx.update(ref, {"status": BatchState.DONEPROCESSING, "updated_at": fs.SERVER_TIMESTAMP})
        return True

    reverted: bool = attempt(store.db.transaction())
    return reverted


# ------------------------------------------------------------------------------------------ deliver


def claim_delivery(
    store: Store,
    *,
    batch_id: str,
    delivery_id: str | None,
    owner: str,
    lease_seconds: int = LEASE_SECONDS,
) -> DeliveryClaim:
    """Take the batch's delivery lease if the batch is SENDING for this delivery and nobody holds it."""
    from google.cloud import firestore as fs

    ref = store.batch_ref(batch_id)

    @fs.transactional
    def attempt(tx: Any) -> DeliveryClaim:
        snap = ref.get(transaction=tx)
        if not snap.exists:
            return DeliveryClaim(False, "unknown")
        status = str(snap.get("status") or "")
        current = field_of(snap, "delivery_id")
        if delivery_id and current and delivery_id != current:
            return DeliveryClaim(False, "stale", status, current)
        resumed = False
        if status != BatchState.SENDING:
            # A file that arrived after the send reopened the batch. The send still stands for this
            # delivery: wait while it processes (the caller retries), resume once it is done again.
            if delivery_id and current == delivery_id and status in {BatchState.QUEUE, BatchState.PROCESSING}:
                return DeliveryClaim(False, "reopened", status, current)
            if not (delivery_id and current == delivery_id and status == BatchState.DONEPROCESSING):
                return DeliveryClaim(False, "not_sending", status, current)
            resumed = True
        lease = field_of(snap, "deliver_lease") or {}
        until = lease.get("until")
        if lease.get("owner") not in (None, owner) and until is not None and until > now():
            return DeliveryClaim(False, "busy", status, current)
        update: dict[str, Any] = {
            "deliver_lease": {"owner": owner, "until": now() + timedelta(seconds=lease_seconds)},
            "updated_at": fs.SERVER_TIMESTAMP,
        }
        if resumed:
            update["status"] = BatchState.SENDING
        tx.update(ref, update)
        return DeliveryClaim(
            True,
            "resumed" if resumed else "claimed",
            BatchState.SENDING,
            current or delivery_id,
            first_delivery=not [
                d
                for d in (field_of(snap, "deliveries") or [])
                if d.get("delivery_id") != (current or delivery_id)
            ],
            requested_at=field_of(snap, "send_requested_at"),
        )

    claim: DeliveryClaim = attempt(store.db.transaction())
    return claim


def release_delivery(store: Store, *, batch_id: str, owner: str) -> None:
    """Give the lease back (after a failure, so the redelivered message can proceed at once)."""
    from google.cloud import firestore as fs

    ref = store.batch_ref(batch_id)

    @fs.transactional
    def attempt(tx: Any) -> None:
        snap = ref.get(transaction=tx)
        if snap.exists and (field_of(snap, "deliver_lease") or {}).get("owner") == owner:
            tx.update(ref, {"deliver_lease": fs.DELETE_FIELD})

    attempt(store.db.transaction())


def delivered_files(store: Store, *, batch_id: str, delivery_id: str) -> list[dict[str, Any]]:
    """The files one delivery marked SENT (to compute its record, also after a retry)."""
    query = store.files_of(batch_id).where(filter=eq("delivery_id", delivery_id))
    fields = [
        "state",
        "ids",
        "dicomweb",
        "sent_uri",
        "sent_md5",
        "sent_size",
        "clean_uri",
        "clean_size",
        "bucket",
        "object",
        "generation",
    ]
    return [dict(snap.to_dict() or {}, key=snap.id) for snap in query.select(fields).stream()]


@dataclass(frozen=True)
class SentFile:
    """Where one file went: the destination object (or study archive, or DICOMweb instance), its MD5 and
    size, and what the DICOMweb target did with it (``stored`` / ``already_present``; None without it)."""

    key: str
    uri: str
    md5: str | None
    size: int | None
    dicomweb: str | None = None


def mark_files_sent(store: Store, *, sent: Iterable[SentFile], delivery_id: str, at: datetime) -> int:
    """Files ANONYMIZED -> SENT with their destination. Returns the number written."""
    from google.cloud import firestore as fs

    db = store.db
    count = 0
    writer = db.batch()
    pending = 0
    for item in sent:
        writer.update(
            store.file_ref(item.key),
            {
                "state": FileState.SENT,
                "sent_uri": item.uri,
                "sent_md5": item.md5,
                "sent_size": item.size,
                "sent_at": at,
                "delivery_id": delivery_id,
                "updated_at": fs.SERVER_TIMESTAMP,
                **({"dicomweb": item.dicomweb} if item.dicomweb else {}),
            },
        )
        pending += 1
        count += 1
        if pending >= WRITE_BATCH:
            writer.commit()
            writer, pending = db.batch(), 0
    if pending:
        writer.commit()
    return count


def finish_delivery(
    store: Store,
    *,
    batch_id: str,
    delivery_id: str,
    owner: str,
    record: Mapping[str, Any],
    counts: Mapping[str, int] | None,
    errors: Iterable[Mapping[str, str]] = (),
) -> str:
    """Append the delivery record, SENDING -> SENT, release the lease. Returns the batch status after.

    The record is appended once per delivery id (a retry that finds it already there changes nothing).
    A batch that left SENDING meanwhile (a late file reopened it) keeps its status.
    """
    from google.cloud import firestore as fs

    ref = store.batch_ref(batch_id)
    new_errors = [dict(e) for e in errors]

    @fs.transactional
    def attempt(tx: Any) -> str:
        snap = ref.get(transaction=tx)
        if not snap.exists:
            return "unknown"
        status = str(snap.get("status") or "")
        deliveries = list(field_of(snap, "deliveries") or [])
        update: dict[str, Any] = {"updated_at": fs.SERVER_TIMESTAMP}
        if (field_of(snap, "deliver_lease") or {}).get("owner") == owner:
            update["deliver_lease"] = fs.DELETE_FIELD
        if not any(d.get("delivery_id") == delivery_id for d in deliveries):
            deliveries.append(dict(record))
            update["deliveries"] = deliveries
            update["sent_at"] = record.get("at")
            if record.get("send_seconds") is not None:
                update["send_seconds"] = record["send_seconds"]
        if counts is not None:
            update["counts"] = dict(counts)
        if new_errors:
            merged = list(field_of(snap, "errors") or []) + new_errors
            update["errors"] = merged[-MAX_ERRORS:]
            update["has_error"] = True
        if status == BatchState.SENDING and field_of(snap, "delivery_id") in (None, delivery_id):
            update["status"] = BatchState.SENT
            status = BatchState.SENT
        tx.update(ref, update)
        return status

    result: str = attempt(store.db.transaction())
    return result


def record_dead_letter(store: Store, *, batch_id: str, attempts: int | None) -> bool:
    """A deliver message that exhausted its attempts: SENDING -> DONEPROCESSING, ``has_error`` and a reason.

    Returns False (nothing changed) when the batch is not SENDING, e.g. a duplicate already delivered it.
    """
    from google.cloud import firestore as fs

    ref = store.batch_ref(batch_id)
    tried = f" after {attempts} attempts" if attempts else ""
    reason = f"delivery failed{tried}; the batch can be sent again"

    @fs.transactional
    def attempt(tx: Any) -> bool:
        snap = ref.get(transaction=tx)
        if not snap.exists or snap.get("status") != BatchState.SENDING:
            return False
        errors = [*list(field_of(snap, "errors") or []), {"file": "", "reason": reason}]
        tx.update(
            ref,
            {
                "status": BatchState.DONEPROCESSING,
                "has_error": True,
                "errors": errors[-MAX_ERRORS:],
                "last_delivery_error": reason,
                "deliver_lease": fs.DELETE_FIELD,
                "updated_at": fs.SERVER_TIMESTAMP,
            },
        )
        return True

    changed: bool = attempt(store.db.transaction())
    return changed
