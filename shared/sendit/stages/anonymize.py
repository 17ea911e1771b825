"""The `anonymize` function: claim -> open batch -> de-identify -> record -> completion check, for one file.

One staging OBJECT_FINALIZE notification is one file. ``handle_event`` is what the function runs;
``process_object`` is the same step for an already decoded notification (tests call it directly). A
folder's ``sendit-manifest.json`` is its batch's seal, never a file: ``sendit.seal`` records it.

Errors are classified on purpose (``sendit.errors``):
- permanent (undecodable event, not DICOM, corrupt, filtered, object gone): the file gets a terminal
  state with a reason and the function returns normally, so Pub/Sub acks the message;
- transient (an API unavailable, a timeout, throttling, the identity provider unreachable) and unexpected
  ones: our lease on the file is released and ``RetryableError`` is raised naming the step (functions-
  framework answers 500, Pub/Sub redelivers with backoff; after N deliveries the dead-letter topic gets
  the message and ``stages.dead_letter`` marks the file FAILED). Its message never carries an object
  name or a header value.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sendit import completion, events, naming, seal, storage
from sendit.errors import EventError, ObjectGone, RetryableError, Steps, TooLarge
from sendit.events import ObjectFinalized
from sendit.store import batches, files
from sendit.store.files import FileClaim
from sendit.store.vocabulary import FileState

if TYPE_CHECKING:
    from sendit.app.context import Context

log = logging.getLogger(__name__)


class _InFlight:
    """Files this instance is processing, per batch.

    A file that turns terminal while another file of its batch is still in flight here skips the completion
    check (``completion.after_terminal``): that other file runs it when it finishes (after this file's state
    is recorded). Correctness never depends on it: the sweep evaluates every open batch anyway.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, set[str]] = {}

    def add(self, batch: str, key: str) -> None:
        with self._lock:
            self._files.setdefault(batch, set()).add(key)

    def remove_and_others(self, batch: str, key: str) -> bool:
        """Forget ``key``; return whether other files of ``batch`` are still in flight here."""
        with self._lock:
            keys = self._files.get(batch, set())
            keys.discard(key)
            if not keys:
                self._files.pop(batch, None)
            return bool(keys)


_in_flight = _InFlight()


@dataclass
class AnonymizeResult:
    """What ``process_object`` did with one notification (for callers and tests)."""

    key: str
    batch_id: str
    claim: str  # claimed | duplicate | gave_up | manifest
    state: str | None = None
    batch_status: str | None = None  # what a completion this file triggered wrote (DONEPROCESSING...)
    reason: str | None = None
    clean_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def handle_event(ctx: Context, event_type: str, data: Any, event_id: str) -> AnonymizeResult | None:
    """The ``anonymize`` function: one staging notification. Returns normally to ack."""
    try:
        obj = events.object_finalized(event_type, data, event_id)
    except EventError as exc:
        # The messages of EventError are fixed texts (no payload): safe to log.
        log.error("event not understood, acked: %s", exc, extra={"event_id": event_id})
        return None
    if obj is None:
        log.info("ignored: not an OBJECT_FINALIZE notification", extra={"event_id": event_id})
        return None
    if obj.bucket != ctx.settings.staging_bucket:
        log.warning(
            "ignored: notification from another bucket",
            extra={"event_id": event_id, "bucket": obj.bucket, "generation": obj.generation},
        )
        return None
    if obj.name.endswith("/"):
        log.info(
            "ignored: folder placeholder object",
            extra={"event_id": event_id, "name_hash": naming.name_hash(obj.name)},
        )
        return None
    if seal.is_seal(obj.name):
        return _seal(ctx, obj)
    return process_object(ctx, obj)


def _seal(ctx: Context, obj: ObjectFinalized) -> AnonymizeResult:
    """The folder's manifest: recorded on its batch, never de-identified (``sendit.seal``)."""
    steps = Steps()
    try:
        with steps.step("manifest"):
            status = seal.handle_manifest(ctx, obj)
    except RetryableError as error:
        log.log(
            logging.WARNING if error.transient else logging.ERROR,
            "manifest not recorded: will be retried",
            extra={"event_id": obj.event_id, "generation": obj.generation, "error": error.cause_type},
        )
        raise
    batch = naming.batch_id(ctx.settings.secret_key, obj.bucket, naming.batch_folder(obj.name))
    key = naming.file_key(obj.bucket, obj.name, obj.generation)
    return AnonymizeResult(key, batch, "manifest", batch_status=status)


@dataclass
class _Work:
    """One notification being processed: its names, its claim, and how far it got."""

    obj: ObjectFinalized
    batch: str
    key: str
    steps: Steps = field(default_factory=Steps)
    claim: FileClaim | None = None
    recorded: bool = False

    def where(self) -> dict[str, Any]:
        """The log fields of this file (hashes and pseudonyms only)."""
        return {
            "event_id": self.obj.event_id,
            "file_key": self.key,
            "name_hash": naming.name_hash(self.obj.name),
            "generation": self.obj.generation,
            "batch_id": self.batch,
            "delivery_attempt": self.obj.delivery_attempt,
        }


def process_object(
    ctx: Context,
    obj: ObjectFinalized,
    *,
    lease_seconds: float | None = None,
    now: datetime | None = None,
) -> AnonymizeResult:
    """Claim, de-identify, write and record one staging object (idempotent per bucket/name/generation)."""
    folder = naming.batch_folder(obj.name)
    work = _Work(
        obj,
        batch=naming.batch_id(ctx.settings.secret_key, obj.bucket, folder),
        key=naming.file_key(obj.bucket, obj.name, obj.generation),
    )
    try:
        with work.steps.step("claim", "claim"):
            work.claim = files.claim_file(
                ctx.store,
                obj=obj,
                batch=work.batch,
                max_attempts=ctx.settings.max_attempts,
                lease_seconds=ctx.settings.lease_seconds if lease_seconds is None else lease_seconds,
                now=now,
                shards=ctx.settings.tally_shards,
            )
            early = _unclaimed(ctx, work)
        if early is not None:
            return early
        return _claimed(ctx, work, folder)
    except RetryableError as error:
        if error.step is not None:
            _retry_later(ctx, work, error)
        raise


def _unclaimed(ctx: Context, work: _Work) -> AnonymizeResult | None:
    """The claim's answer when it is not ``claimed``: a duplicate, a lease held elsewhere, a give-up."""
    claim, where = work.claim, work.where()
    assert claim is not None
    if claim.kind == "duplicate":
        log.info("duplicate: file already %s, acked", claim.state, extra={**where, "state": claim.state})
        with work.steps.step("completion"):
            status = completion.evaluate(ctx, work.batch)  # a crash before the check, or stale counts
        return AnonymizeResult(work.key, work.batch, "duplicate", state=claim.state, batch_status=status)
    if claim.kind == "busy":
        log.info("busy: another delivery holds the lease, retry later", extra=where)
        raise RetryableError("file is being processed by another delivery (lease held); retry later")
    if claim.kind == "gave_up":
        reason = f"gave up after {claim.attempts} attempts"
        log.warning("file FAILED", extra={**where, "state": FileState.FAILED, "reason": reason})
        with work.steps.step("completion"):
            status = completion.evaluate(ctx, work.batch)
        return AnonymizeResult(
            work.key, work.batch, "gave_up", state=FileState.FAILED, reason=reason, batch_status=status
        )
    _in_flight.add(work.batch, work.key)
    return None


def _claimed(ctx: Context, work: _Work, folder: str) -> AnonymizeResult:
    """The steps of a file this invocation claimed."""
    claim, steps = work.claim, work.steps
    assert claim is not None
    with steps.step("open batch", "open"):
        opened = batches.open_batch(ctx.store, batch=work.batch, bucket=work.obj.bucket, folder=folder)
    with steps.step("de-identify"):
        fields = _deidentify(ctx, work)
    if opened.late or claim.late:
        fields["late"] = True
    fields["attempts"] = claim.attempts
    with steps.step("record", "record"):
        work.recorded = files.record_terminal(
            ctx.store,
            key=work.key,
            fields=fields,
            update_time=claim.update_time,
            batch=work.batch,
            shards=ctx.settings.tally_shards,
        )
    with steps.step("completion", "completion"):
        others = _in_flight.remove_and_others(work.batch, work.key)
        finalized = None if others else completion.after_terminal(ctx, work.batch, opened)
    steps.total()
    _log_outcome(work, fields, finalized)
    return AnonymizeResult(
        work.key,
        work.batch,
        "claimed",
        state=fields["state"],
        reason=fields.get("reason"),
        clean_uri=fields.get("clean_uri"),
        timings=steps.timings,
        batch_status=finalized,
    )


def _retry_later(ctx: Context, work: _Work, error: RetryableError) -> None:
    """A step failed: forget the file here, release our lease unless the state was recorded, log it."""
    claim = work.claim
    if claim is not None:
        _in_flight.remove_and_others(work.batch, work.key)
    if claim is not None and claim.kind == "claimed" and not work.recorded:
        try:
            files.release_file(ctx.store, key=work.key, update_time=claim.update_time)
        except Exception as exc:  # best effort: the lease expires on its own
            log.warning(
                "could not release the claim", extra={"file_key": work.key, "error": type(exc).__name__}
            )
    log.log(
        logging.WARNING if error.transient else logging.ERROR,
        "%s error during %s: will be retried",
        "transient" if error.transient else "unexpected",
        error.step,
        extra={**work.where(), "error": error.cause_type, "step": error.step},
    )


def _deidentify(ctx: Context, work: _Work) -> dict[str, Any]:
    """Download to a temp file, run the engine into another, upload the clean file. Temp files always go."""
    obj = work.obj
    with tempfile.TemporaryDirectory(prefix="sendit-") as tmp:
        src, dst = Path(tmp) / "original", Path(tmp) / "clean.dcm"
        with work.steps.step("de-identify", "download"):
            try:
                size = storage.download(
                    ctx.clients.storage, obj.bucket, obj.name, obj.generation, src, size=obj.size or None
                )
            except ObjectGone:
                return {"state": FileState.FAILED, "reason": "object no longer exists"}
            except TooLarge:
                return {"state": FileState.FAILED, "reason": "object too large"}
        with work.steps.step("de-identify", "engine"), open(dst, "wb") as out:
            outcome = ctx.engine.process(str(src), out)
        src.unlink(missing_ok=True)  # /tmp is memory: free the original before uploading
        fields = files.outcome_fields(outcome)
        fields["size"] = size
        if outcome.state != FileState.ANONYMIZED:
            return fields
        if outcome.ids is None:
            return {"state": FileState.FAILED, "reason": "engine returned no identifiers"}
        ids = outcome.ids
        name = naming.clean_object_name(work.batch, ids.study_uid, ids.series_uid, ids.instance_uid)
        with work.steps.step("de-identify", "upload"):
            info = storage.upload(
                ctx.clients.storage,
                ctx.settings.processing_bucket,
                name,
                dst,
                metadata={"batch_id": work.batch, "file_key": work.key},
            )
        fields.update(clean_uri=info["uri"], clean_size=info["size"], clean_md5=info["md5"])
        return fields


def _log_outcome(work: _Work, fields: dict[str, Any], finalized: str | None) -> None:
    file_state = fields["state"]
    claim = work.claim
    level = logging.WARNING if file_state == FileState.FAILED else logging.INFO
    extra = {
        **work.where(),
        "event": "file_outcome",
        "state": file_state,
        "reason": fields.get("reason"),
        "ids": fields.get("ids"),
        "study_date": fields.get("study_date"),
        "size": fields.get("size"),
        "attempts": claim.attempts if claim else 0,
        "late": bool(fields.get("late")),
        "recorded": work.recorded,
        "batch_status": finalized,
        **work.steps.timings,
    }
    log.log(level, "file %s", file_state, extra=extra)
