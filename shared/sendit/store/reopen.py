"""Reopen terminal files so that they are processed again (``sendit reprocess``, the dead-letter replay).

A terminal file (FAILED, SKIPPED, ANONYMIZED or SENT) goes back to RECEIVED with an expired lease and
``attempts`` 0, so the next notification of its object claims it as on a first try
(``files.claim_file`` re-claims a RECEIVED file whose lease expired). What the last run wrote about the
outcome (reason, pseudonyms, row, clean object) is removed; where it was delivered (``sent_uri``,
``delivery_id``...) stays until a new delivery replaces it. The update is preconditioned on the document
as it was read (``Candidate.update_time``), and in the same batched write the file's tally shard gets
``terminal`` -1: the file is in flight again (``received`` stays, it was counted at the first claim), so its
batch cannot complete before the re-run is recorded, which counts ``terminal`` +1 again
(``files.record_terminal``). ``reopens`` counts how often a file was reopened, ``reopened_from`` says from
which state. Many files go ``WRITE_CHUNK`` to a batched write, with one decrement per tally shard for the
files of the chunk it counts (a shard takes few writes however many files are reopened); a chunk in which
some file changed since it was read fails as a whole and is done again file by file.

A settled batch (DONEPROCESSING, EMPTY, SENT) whose files were reopened goes back to PROCESSING
(``reopen_batch``), so no send takes it while they re-run and completion settles it again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sendit.store import batches, tally
from sendit.store.base import PRECONDITION_RETRIES, eq, server_ts
from sendit.store.base import now as _now
from sendit.store.vocabulary import SETTLED, TERMINAL, BatchState, FileState

if TYPE_CHECKING:
    from sendit.store.base import Store

GET_ALL_CHUNK = 500
WRITE_CHUNK = 200  # files per batched write: 200 updates + at most 200 shard increments (limit 500)
# What a reopen reads of a file document (a projection: a file's row holds the whole header JSON).
FIELDS = ("batch_id", "state", "bucket", "object", "generation", "size", "md5", "ids")
# The outcome of the last run: removed when a file is reopened (the re-run writes its own).
OUTCOME_FIELDS = (
    "reason",
    "finished_at",
    "ids",
    "row",
    "row_header_dropped",
    "study_date",
    "clean_uri",
    "clean_size",
    "clean_md5",
    "failed_delivery_id",  # a delivery refused it (DICOMweb): the next delivery decides again
    "dicomweb",  # what the DICOMweb target did with the last run's instance
)


@dataclass(frozen=True)
class Candidate:
    """A file as read, with what its notification needs (``name`` is the staging object: never logged)."""

    key: str
    batch_id: str
    state: str
    bucket: str
    name: str
    generation: str
    size: int | None
    md5: str | None
    update_time: Any
    ids: dict[str, str] = field(default_factory=dict)


def _candidate(snap: Any) -> Candidate:
    data = snap.to_dict() or {}
    size = data.get("size")
    return Candidate(
        key=snap.id,
        batch_id=str(data.get("batch_id") or ""),
        state=str(data.get("state") or FileState.RECEIVED),
        bucket=str(data.get("bucket") or ""),
        name=str(data.get("object") or ""),
        generation=str(data.get("generation") or ""),
        size=int(size) if isinstance(size, int) else None,
        md5=data.get("md5") if isinstance(data.get("md5"), str) else None,
        update_time=snap.update_time,
        ids={str(k): str(v) for k, v in (data.get("ids") or {}).items() if v},
    )


def candidates(store: Store, *, batch: str, states: list[str]) -> list[Candidate]:
    """The files of a batch in ``states`` (one equality query per state)."""
    found: list[Candidate] = []
    for state in dict.fromkeys(states):
        query = store.files_of(batch).where(filter=eq("state", state)).select(list(FIELDS))
        found += [_candidate(snap) for snap in query.stream()]
    return found


def candidates_of(store: Store, *, keys: list[str]) -> tuple[list[Candidate], list[str]]:
    """The files of these keys (``get_all`` in chunks) and the keys that have no document."""
    found: dict[str, Candidate] = {}
    wanted = list(dict.fromkeys(keys))
    for start in range(0, len(wanted), GET_ALL_CHUNK):
        refs = [store.file_ref(key) for key in wanted[start : start + GET_ALL_CHUNK]]
        for snap in store.db.get_all(refs, field_paths=list(FIELDS)):
            if snap.exists:
                found[snap.id] = _candidate(snap)
    return [found[k] for k in wanted if k in found], [k for k in wanted if k not in found]


def _reopen_update(file: Candidate) -> dict[str, Any]:
    from google.cloud import firestore

    update: dict[str, Any] = {name: firestore.DELETE_FIELD for name in OUTCOME_FIELDS}
    update.update(
        state=FileState.RECEIVED,
        attempts=0,
        lease_until=_now(),
        reopened_at=server_ts(),
        reopened_from=file.state,
        reopens=firestore.Increment(1),
        updated_at=server_ts(),
    )
    return update


def _commit(store: Store, files: list[Candidate], shards: int) -> bool:
    """One batched write: each file's update (preconditioned on the document read) and, per tally shard,
    ``terminal`` minus the files it counts. All or nothing: False when any file changed since it was read."""
    from google.api_core.exceptions import FailedPrecondition, NotFound

    write = store.db.batch()
    per_shard: dict[Any, int] = {}
    refs: dict[str, Any] = {}
    for file in files:
        write.update(
            store.file_ref(file.key), _reopen_update(file), option=store.precondition(file.update_time)
        )
        ref = tally.shard_ref(store, batch=file.batch_id, key=file.key, shards=shards)
        refs[ref.path] = ref
        per_shard[ref.path] = per_shard.get(ref.path, 0) + 1
    for path, count in per_shard.items():
        tally.count_reopened(write, refs[path], count)
    try:
        write.commit()
    except (FailedPrecondition, NotFound):
        return False
    return True


def reopen_file(store: Store, *, file: Candidate, shards: int = tally.DEFAULT_SHARDS) -> bool:
    """RECEIVED again, claimable at once; False when the file is not terminal or changed since it was read."""
    return file.state in TERMINAL and _commit(store, [file], shards)


def reopen_files(store: Store, *, files: list[Candidate], shards: int = tally.DEFAULT_SHARDS) -> list[bool]:
    """``reopen_file`` for many files, ``WRITE_CHUNK`` to a batched write (few writes on the tally shards);
    a chunk in which some file changed is done file by file. Returns, per file, whether it was reopened."""
    done = dict.fromkeys((f.key for f in files), False)
    terminal = [f for f in files if f.state in TERMINAL]
    for start in range(0, len(terminal), WRITE_CHUNK):
        chunk = terminal[start : start + WRITE_CHUNK]
        if _commit(store, chunk, shards):
            done.update(dict.fromkeys((f.key for f in chunk), True))
            continue
        for file in chunk:
            done[file.key] = _commit(store, [file], shards)
    return [done[f.key] for f in files]


def reopen_batch(store: Store, *, batch: str) -> str | None:
    """A settled batch back to PROCESSING (preconditioned); returns the status it had (None: no batch).

    QUEUE and PROCESSING batches are open already; a SENDING batch is left to its delivery (a file
    reopened meanwhile reopens it when claimed, as a late file).
    """
    status: str | None = None
    for _ in range(PRECONDITION_RETRIES):
        snap = store.batch_ref(batch).get()
        if not snap.exists:
            return None
        status = str((snap.to_dict() or {}).get("status") or BatchState.QUEUE)
        if status not in SETTLED or batches.reopen_batch(store, batch=batch, snap=snap):
            return status
    return status


# ------------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class ReprocessRequest:
    """What to re-run: a batch (``batch`` id or ``folder``) in ``states``, or the files ``keys``."""

    states: tuple[str, ...] = (FileState.FAILED,)
    batch: str | None = None
    folder: str | None = None
    keys: tuple[str, ...] = ()


@dataclass
class ReprocessResult:
    """What a reprocess did (the JSON answer). Every file is named by its key only."""

    states: list[str]
    batch: str | None = None
    status: str | None = None  # the batch's status before (batch route)
    reopened: list[str] = field(default_factory=list)
    by_state: Counter[str] = field(default_factory=Counter)  # reopened files by the state they had
    not_published: list[str] = field(default_factory=list)  # reopened; the sweep re-drives them later
    unchanged: list[dict[str, str]] = field(default_factory=list)  # {key, state}: not in a chosen state
    unknown: list[str] = field(default_factory=list)  # file keys without a document
    refused: list[dict[str, Any]] = field(default_factory=list)  # files route: {batch, why, error, files}
    rows_withdrawn: int = 0
    study_rows_withdrawn: int = 0

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"batch": self.batch, "status": self.status} if self.batch else {}
        body.update(
            states=self.states,
            reopened=self.reopened,
            reopened_by_state=dict(self.by_state),
            published=len(self.reopened) - len(self.not_published),
            not_published=self.not_published,
            unchanged=self.unchanged,
            rows_withdrawn=self.rows_withdrawn,
            study_rows_withdrawn=self.study_rows_withdrawn,
        )
        if not self.batch:
            body.update(unknown=self.unknown, refused=self.refused)
        return body
