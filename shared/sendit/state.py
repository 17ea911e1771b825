"""Firestore state: one document per batch, one per file (the contract is docs/state.md).

Everything that happens per file writes the file's own document and, in the same commit, one shard of the
batch's tally (``sendit.store.tally``). The batch document is written when a batch is first seen, when it
(re)opens, and when it completes (``sendit.completion``): never once per file, because Firestore sustains
about one write per second on a single document.

Concurrency is optimistic: claims use ``create()`` (create-if-absent) and every read-modify-write is a
write preconditioned on the ``update_time`` of the snapshot it was derived from, so no transaction (and
no transaction lock) is needed on the hot path.

Functions take a ``target``: a ``sendit.runtime.Context`` (collection names from its settings) or a bare
``firestore.Client`` (collection names from ``topology.json``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from sendit import logs
from sendit.config import topology
from sendit.store import tally

if TYPE_CHECKING:
    from google.cloud import firestore

    from sendit.deid.outcome import Outcome
    from sendit.events import ObjectFinalized

log = logging.getLogger(__name__)

# File states
RECEIVED = "RECEIVED"
ANONYMIZED = "ANONYMIZED"
SKIPPED = "SKIPPED"
FAILED = "FAILED"
SENT = "SENT"
FILE_STATES = (RECEIVED, ANONYMIZED, SKIPPED, FAILED, SENT)
TERMINAL = frozenset({ANONYMIZED, SKIPPED, FAILED, SENT})

# Batch states
QUEUE = "QUEUE"
PROCESSING = "PROCESSING"
DONEPROCESSING = "DONEPROCESSING"
EMPTY = "EMPTY"
SENDING = "SENDING"
BATCH_SENT = "SENT"
BATCH_STATES = (QUEUE, PROCESSING, DONEPROCESSING, EMPTY, SENDING, BATCH_SENT)
# A new file in a batch in one of these states (re)opens it: status -> PROCESSING. A delivery running
# (SENDING) finishes without setting SENT when it finds its batch reopened (sendit.delivery_state).
REOPENABLE = frozenset({QUEUE, DONEPROCESSING, EMPTY, SENDING, BATCH_SENT})

MAX_ERRORS = 50
MAX_HEADER_CHARS = 400_000  # a file document must stay well under Firestore's 1 MiB
_PRECONDITION_RETRIES = 5


# ------------------------------------------------------------------------------------------ keys


def file_key(bucket: str, name: str, generation: str | int) -> str:
    """``sha256("<bucket>/<object>#<generation>")[:32]``: a re-upload is a new file, a duplicate is not."""
    return hashlib.sha256(f"{bucket}/{name}#{generation}".encode()).hexdigest()[:32]


def batch_folder(name: str) -> str:
    """The top-level folder of an object name (``""`` for an object at the bucket root)."""
    return name.split("/", 1)[0] if "/" in name else ""


def batch_id(secret_key: bytes, bucket: str, folder: str) -> str:
    """``keyed_digest(key, "<bucket>/<folder>", 16)``: a folder named after an accession never shows."""
    from sendit.deid.identity import keyed_digest

    return keyed_digest(secret_key, f"{bucket}/{folder}", 16)


def name_hash(name: str) -> str:
    """Short unkeyed hash of an object name, for logs and the status API."""
    return logs.digest(name, 12)


def clean_object_name(batch: str, study_uid: str, series_uid: str, instance_uid: str) -> str:
    """Deterministic name of a clean file in the processing bucket (pseudonyms only)."""
    return f"{batch}/{study_uid}/{series_uid}/{instance_uid}.dcm"


# ------------------------------------------------------------------------------------------ access


@dataclass(frozen=True)
class Store:
    """A Firestore client with the two collection names."""

    db: firestore.Client
    batches: str = "batches"
    files: str = "files"

    def batch_ref(self, batch: str) -> firestore.DocumentReference:
        return self.db.collection(self.batches).document(batch)

    def file_ref(self, key: str) -> firestore.DocumentReference:
        return self.db.collection(self.files).document(key)

    def files_of(self, batch: str) -> firestore.Query:
        from google.cloud.firestore_v1.base_query import FieldFilter

        return self.db.collection(self.files).where(filter=FieldFilter("batch_id", "==", batch))


def store(target: Any) -> Store:
    """A ``Store`` from a Context, a Store or a firestore.Client."""
    if isinstance(target, Store):
        return target
    settings = getattr(target, "settings", None)
    clients = getattr(target, "clients", None)
    if settings is not None and clients is not None:
        return Store(clients.firestore, settings.batches_collection, settings.files_collection)
    names = topology()["firestore"]
    return Store(target, names["batches"], names["files"])


def _now() -> datetime:
    return datetime.now(UTC)


def _server_ts() -> Any:
    from google.cloud import firestore

    return firestore.SERVER_TIMESTAMP


def _precondition(db: Any, update_time: Any) -> Any:
    return db.write_option(last_update_time=update_time)


def _eq(field: str, value: Any) -> Any:
    from google.cloud.firestore_v1.base_query import FieldFilter

    return FieldFilter(field, "==", value)


# ------------------------------------------------------------------------------------------ claims


@dataclass(frozen=True)
class Claim:
    """The result of ``claim_file``.

    ``kind``: ``claimed`` (process it; ``attempts`` counts claims, ``update_time`` preconditions the
    terminal write), ``duplicate`` (already terminal: ack, nothing to do), ``busy`` (another delivery
    holds a valid lease: retry later), ``gave_up`` (more than max_attempts claims: recorded FAILED).
    """

    kind: str
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
        "name_hash": name_hash(obj.name),
        "late": late,
    }


def claim_file(
    target: Any,
    obj: ObjectFinalized,
    batch: str,
    *,
    max_attempts: int,
    lease_seconds: float,
    late: bool = False,
    now: datetime | None = None,
) -> Claim:
    """Claim ``obj`` for processing: create-if-absent; re-claim an expired lease; give up after N."""
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

    st = store(target)
    key = file_key(obj.bucket, obj.name, obj.generation)
    ref = st.file_ref(key)
    now = now or _now()
    lease_until = now + timedelta(seconds=lease_seconds)
    doc = new_file_doc(obj, batch, late=late)
    doc.update(
        state=RECEIVED,
        reason=None,
        attempts=1,
        lease_until=lease_until,
        created_at=_server_ts(),
        updated_at=_server_ts(),
    )
    shard = tally.shard_ref(st.batch_ref(batch), key, tally.shards_setting(target))
    for _ in range(_PRECONDITION_RETRIES):
        try:
            # The create and the tally's "received" commit together: a redelivery's create fails and
            # counts nothing; a re-claim after an expired lease (below) never counts again.
            write = st.db.batch()
            write.create(ref, doc)
            tally.count_received(write, shard, now.timestamp())
            result = write.commit()[0]
            return Claim(
                "claimed", key, attempts=1, state=RECEIVED, update_time=result.update_time, late=late
            )
        except AlreadyExists:
            pass
        snap = ref.get()
        if not snap.exists:
            continue  # deleted in between: try the create again
        data = snap.to_dict() or {}
        state = data.get("state")
        attempts = int(data.get("attempts") or 0)
        if state in TERMINAL:
            return Claim("duplicate", key, attempts=attempts, state=state)
        held = data.get("lease_until")
        if isinstance(held, datetime) and held > now:
            return Claim("busy", key, attempts=attempts, state=state)
        try:
            if attempts >= max_attempts:
                write = st.db.batch()
                write.update(
                    ref,
                    {
                        "state": FAILED,
                        "reason": f"gave up after {attempts} attempts",
                        "updated_at": _server_ts(),
                        "finished_at": _server_ts(),
                    },
                    option=_precondition(st.db, snap.update_time),
                )
                tally.count_terminal(write, shard)
                write.commit()
                return Claim("gave_up", key, attempts=attempts, state=FAILED)
            result = ref.update(
                {"attempts": attempts + 1, "lease_until": lease_until, "updated_at": _server_ts()},
                option=_precondition(st.db, snap.update_time),
            )
            return Claim(
                "claimed",
                key,
                attempts=attempts + 1,
                state=RECEIVED,
                update_time=result.update_time,
                late=bool(data.get("late")),
            )
        except (FailedPrecondition, NotFound):
            continue  # someone else moved it: look again
    return Claim("busy", key)


def release_file(target: Any, key: str, update_time: Any) -> bool:
    """Expire our lease after a transient failure so the redelivery may re-claim at once."""
    from google.api_core.exceptions import FailedPrecondition, NotFound

    st = store(target)
    try:
        st.file_ref(key).update(
            {"lease_until": _now(), "updated_at": _server_ts()}, option=_precondition(st.db, update_time)
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
    target: Any, key: str, fields: dict[str, Any], update_time: Any = None, *, batch: str | None = None
) -> bool:
    """Write a terminal state on a file. Returns False if the file was already SENT (left untouched).

    ``update_time`` (from the claim, whose document was RECEIVED) preconditions the write; if someone else
    wrote the document since (an expired lease re-claimed, a dead letter), the write is re-based on what is
    there now, unless the file was delivered meanwhile: a SENT file never goes back. The file's tally shard
    gets its ``terminal`` increment in the same commit, only when the document it replaces was not terminal.
    """
    from google.api_core.exceptions import FailedPrecondition, NotFound

    st = store(target)
    ref = st.file_ref(key)
    payload = dict(fields)
    payload["updated_at"] = _server_ts()
    payload["finished_at"] = _server_ts()
    counted = False
    if update_time is None or batch is None:
        snap = ref.get()
        if not snap.exists:
            return False
        data = snap.to_dict() or {}
        if data.get("state") == SENT:
            return False
        update_time, counted = snap.update_time, data.get("state") in TERMINAL
        batch = batch or str(data.get("batch_id") or "")
    shard = tally.shard_ref(st.batch_ref(batch), key, tally.shards_setting(target))
    for _ in range(_PRECONDITION_RETRIES):
        try:
            write = st.db.batch()
            write.update(ref, payload, option=_precondition(st.db, update_time))
            if not counted:
                tally.count_terminal(write, shard)
            write.commit()
            return True
        except (FailedPrecondition, NotFound):
            snap = ref.get()
            if not snap.exists:
                return False
            state = (snap.to_dict() or {}).get("state")
            if state == SENT:
                return False
            update_time, counted = snap.update_time, state in TERMINAL
    return False


def fail_file(
    target: Any,
    obj: ObjectFinalized,
    batch: str,
    reason: str,
    *,
    only_if_not_terminal: bool = True,
    create_only: bool = False,
) -> bool:
    """Mark a file FAILED with ``reason``, creating its document if absent (e.g. a dead letter).

    Returns True if the state was written; a terminal file is left as it is; with ``create_only`` any
    existing document is (a listed object never received: one that did arrive is not touched).
    """
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

    st = store(target)
    key = file_key(obj.bucket, obj.name, obj.generation)
    ref = st.file_ref(key)
    doc = new_file_doc(obj, batch)
    doc.update(
        state=FAILED,
        reason=reason,
        attempts=0,
        created_at=_server_ts(),
        updated_at=_server_ts(),
        finished_at=_server_ts(),
    )
    shard = tally.shard_ref(st.batch_ref(batch), key, tally.shards_setting(target))
    for _ in range(_PRECONDITION_RETRIES):
        try:
            write = st.db.batch()
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
        try:
            write = st.db.batch()
            write.update(
                ref,
                {"state": FAILED, "reason": reason, "updated_at": _server_ts(), "finished_at": _server_ts()},
                option=_precondition(st.db, snap.update_time),
            )
            if not was_terminal:
                tally.count_terminal(write, shard)
            write.commit()
            return True
        except (FailedPrecondition, NotFound):
            continue
    return False


# ------------------------------------------------------------------------------------------ batches


def new_batch_doc(batch: str, bucket: str, folder: str) -> dict[str, Any]:
    """A new batch document (QUEUE)."""
    return {
        "id": batch,
        "status": QUEUE,
        "bucket": bucket,
        "folder": folder,  # staging side only (the status API shows it unless SENDIT_STATUS_NAMES=hidden)
        "created_at": _server_ts(),
        "updated_at": _server_ts(),
        "start_time": _server_ts(),
        "has_error": False,
        "errors": [],
        "counts": {},
    }


class Opened(NamedTuple):
    """What ``open_batch`` found: the status before, whether the file is late, the batch as read."""

    status: str
    late: bool
    data: dict[str, Any]


def open_batch(target: Any, batch: str, bucket: str, folder: str) -> Opened:
    """Make sure the batch exists and is PROCESSING; return (status before, late, the batch's fields).

    First file: create QUEUE (create-if-absent), then PROCESSING. A batch seen DONEPROCESSING, EMPTY,
    SENDING or SENT goes back to PROCESSING (``late`` is True when it was SENDING or SENT: the file arrived
    after a delivery started, and is delivered by a follow-up one).
    One document read per file; a write only on a transition.
    """
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

    st = store(target)
    ref = st.batch_ref(batch)
    first_status: str | None = None
    data: dict[str, Any] = {}
    for _ in range(_PRECONDITION_RETRIES * 2):
        snap = ref.get()
        if not snap.exists:
            with contextlib.suppress(AlreadyExists):
                ref.create(new_batch_doc(batch, bucket, folder))
            continue
        data = snap.to_dict() or {}
        status = str(data.get("status") or QUEUE)
        if first_status is None:
            first_status = status
        late = first_status in (BATCH_SENT, SENDING) or status in (BATCH_SENT, SENDING)
        if status not in REOPENABLE:
            return Opened(status, late, data)
        update: dict[str, Any] = {"status": PROCESSING, "updated_at": _server_ts()}
        if status in (BATCH_SENT, SENDING):
            update["reopened_at"] = _server_ts()
        try:
            ref.update(update, option=_precondition(st.db, snap.update_time))
            return Opened(status, late, {**data, "status": PROCESSING})
        except (FailedPrecondition, NotFound):
            continue
    return Opened(first_status or QUEUE, first_status in (BATCH_SENT, SENDING), data)


def _count(query: Any) -> int:
    result = query.count(alias="n").get()
    for row in result:
        for agg in row:
            return int(agg.value)
    return 0


def batch_counts(target: Any, batch: str) -> dict[str, int]:
    """``{RECEIVED, ANONYMIZED, SKIPPED, FAILED, SENT, total}`` by aggregation queries (no doc reads)."""
    st = store(target)
    counts = {state: _count(st.files_of(batch).where(filter=_eq("state", state))) for state in FILE_STATES}
    counts["total"] = sum(counts[s] for s in FILE_STATES)
    return counts


def add_batch_error(target: Any, batch: str, error: dict[str, str]) -> None:
    """Flag a batch with an error that belongs to no file (e.g. a dead-lettered delivery)."""
    from google.cloud import firestore

    st = store(target)
    st.batch_ref(batch).set(
        {"has_error": True, "errors": firestore.ArrayUnion([error]), "updated_at": _server_ts()}, merge=True
    )


# ------------------------------------------------------------------------------------------ reads


def get_file(target: Any, key: str) -> dict[str, Any] | None:
    snap = store(target).file_ref(key).get()
    return {"key": snap.id, **(snap.to_dict() or {})} if snap.exists else None


def get_batch(target: Any, batch: str) -> dict[str, Any] | None:
    snap = store(target).batch_ref(batch).get()
    return snap.to_dict() if snap.exists else None


def list_batches(target: Any, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Batches, most recently updated first (optionally of one status)."""
    from google.cloud import firestore

    query: Any = store(target).db.collection(store(target).batches)
    if status is not None:
        query = query.where(filter=_eq("status", status))
        docs = [s.to_dict() or {} for s in query.limit(limit).stream()]
        return sorted(docs, key=lambda d: str(d.get("updated_at") or ""), reverse=True)
    query = query.order_by("updated_at", direction=firestore.Query.DESCENDING).limit(limit)
    return [s.to_dict() or {} for s in query.stream()]


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": key}).encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return str(json.loads(base64.urlsafe_b64decode(token.encode()))["after"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("invalid page token") from exc


def list_files(
    target: Any,
    batch: str,
    state: str | None = None,
    page_size: int = 500,
    page_token: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a batch's files, ordered by file key; returns (files, next page token or None).

    Each file dict carries ``key`` (the document id) and the stored fields.
    """
    from google.cloud.firestore_v1.field_path import FieldPath

    st = store(target)
    query: Any = st.files_of(batch)
    if state is not None:
        query = query.where(filter=_eq("state", state))
    query = query.order_by(FieldPath.document_id())
    if page_token:
        query = query.start_after({FieldPath.document_id(): st.file_ref(_decode_token(page_token))})
    docs = [{"key": s.id, **(s.to_dict() or {})} for s in query.limit(page_size).stream()]
    token = _encode_token(docs[-1]["key"]) if len(docs) == page_size else None
    return docs, token


def iter_files(
    target: Any, batch: str, state: str | None = None, page_size: int = 500
) -> Iterator[dict[str, Any]]:
    """Every file of a batch (optionally of one state), page by page."""
    token: str | None = None
    while True:
        docs, token = list_files(target, batch, state, page_size, token)
        yield from docs
        if token is None:
            return
