"""The file step: claim -> read -> de-identify -> write the clean file -> record the terminal state.

One staging OBJECT_FINALIZE notification is one file. ``handle_event`` is what the ``anonymize`` function
runs; ``process_object`` is the same step for an already decoded notification (tests call it directly).

Errors are classified on purpose:
- permanent (undecodable event, not DICOM, corrupt, filtered, object gone): the file gets a terminal
  state with a reason and the function returns normally, so Pub/Sub acks the message;
- transient (an API unavailable, a timeout, throttling) and unexpected ones: our lease on the file is
  released and ``RetryableError`` is raised (functions-framework answers 500, Pub/Sub redelivers with
  backoff; after N deliveries the dead-letter topic gets the message and ``handle_dead_letter`` marks
  the file FAILED). Its message never carries an object name or a header value.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sendit import completion, events, send_queue, state, storage
from sendit.events import EventError, ObjectFinalized
from sendit.stages import seal

if TYPE_CHECKING:
    from sendit.runtime import Context

log = logging.getLogger(__name__)

DEAD_LETTER_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"


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


class RetryableError(RuntimeError):
    """A transient failure: let Pub/Sub redeliver. The message names the step and the error type only."""


@dataclass
class FileResult:
    """What ``process_object`` did with one notification (for callers and tests)."""

    key: str
    batch_id: str
    claim: str  # claimed | duplicate | gave_up
    state: str | None = None
    reason: str | None = None
    clean_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _transient_types() -> tuple[type[BaseException], ...]:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    kinds: list[type[BaseException]] = [
        gexc.ServiceUnavailable,
        gexc.DeadlineExceeded,
        gexc.InternalServerError,
        gexc.TooManyRequests,
        gexc.Aborted,
        gexc.BadGateway,
        gexc.GatewayTimeout,
        gexc.RetryError,
        gexc.Unknown,
        auth_exc.TransportError,
        ConnectionError,
        TimeoutError,
    ]
    try:
        import requests

        kinds += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:  # pragma: no cover - requests comes with google-cloud-storage
        pass
    return tuple(kinds)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth a redelivery (unavailable, timeouts, throttling, dropped connections)."""
    return isinstance(exc, _transient_types())


# ------------------------------------------------------------------------------------------ entry


def handle_event(ctx: Context, event_type: str, data: Any, event_id: str) -> FileResult | None:
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
            extra={"event_id": event_id, "name_hash": state.name_hash(obj.name)},
        )
        return None
    if seal.is_seal(obj.name):
        _seal(ctx, obj)
        return None
    return process_object(ctx, obj)


def _seal(ctx: Context, obj: ObjectFinalized) -> None:
    """The folder's manifest: recorded on its batch, never de-identified (``sendit.stages.seal``)."""
    try:
        seal.handle_manifest(ctx, obj)
    except Exception as exc:
        transient = is_transient(exc)
        log.log(
            logging.WARNING if transient else logging.ERROR,
            "manifest not recorded: will be retried",
            extra={"event_id": obj.event_id, "generation": obj.generation, "error": type(exc).__name__},
        )
        raise RetryableError(f"manifest not recorded: {type(exc).__name__}") from None


def process_object(
    ctx: Context,
    obj: ObjectFinalized,
    *,
    lease_seconds: float | None = None,
    now: datetime | None = None,
) -> FileResult:
    """Claim, de-identify, write and record one staging object (idempotent per bucket/name/generation)."""
    began = time.monotonic()
    settings = ctx.settings
    folder = state.batch_folder(obj.name)
    batch = state.batch_id(settings.secret_key, obj.bucket, folder)
    key = state.file_key(obj.bucket, obj.name, obj.generation)
    where: dict[str, Any] = {
        "event_id": obj.event_id,
        "file_key": key,
        "name_hash": state.name_hash(obj.name),
        "generation": obj.generation,
        "batch_id": batch,
        "delivery_attempt": obj.delivery_attempt,
    }
    step = "claim"
    claim: state.Claim | None = None
    recorded = False
    t = time.monotonic()
    try:
        claim = state.claim_file(
            ctx,
            obj,
            batch,
            max_attempts=settings.max_attempts,
            lease_seconds=settings.lease_seconds if lease_seconds is None else lease_seconds,
            now=now,
        )
        if claim.kind == "duplicate":
            log.info("duplicate: file already %s, acked", claim.state, extra={**where, "state": claim.state})
            step = "completion"
            _heal(ctx, batch)
            return FileResult(key, batch, "duplicate", state=claim.state)
        if claim.kind == "busy":
            log.info("busy: another delivery holds the lease, retry later", extra=where)
            raise RetryableError("file is being processed by another delivery (lease held); retry later")
        if claim.kind == "gave_up":
            reason = f"gave up after {claim.attempts} attempts"
            log.warning("file FAILED", extra={**where, "state": state.FAILED, "reason": reason})
            step = "completion"
            _settle(ctx, batch)
            return FileResult(key, batch, "gave_up", state=state.FAILED, reason=reason)

        claim_ms = _ms(t)
        _in_flight.add(batch, key)
        step = "open batch"
        t = time.monotonic()
        opened = state.open_batch(ctx, batch, obj.bucket, folder)
        late = opened.late
        open_ms = _ms(t)
        step = "de-identify"
        fields, timings = _deidentify(ctx, obj, batch, key)
        timings.update(claim_ms=claim_ms, open_ms=open_ms)
        if late or claim.late:
            fields["late"] = True
        fields["attempts"] = claim.attempts
        step = "record"
        t = time.monotonic()
        recorded = state.record_terminal(ctx, key, fields, claim.update_time, batch=batch)
        timings["record_ms"] = _ms(t)
        step = "completion"
        t = time.monotonic()
        others = _in_flight.remove_and_others(batch, key)
        finalized = None if others else completion.after_terminal(ctx, batch, opened)
        if finalized == state.DONEPROCESSING:
            send_queue.auto_send(ctx, batch)
        timings["completion_ms"] = _ms(t)
        timings["total_ms"] = _ms(began)
        result = FileResult(
            key,
            batch,
            "claimed",
            state=fields["state"],
            reason=fields.get("reason"),
            clean_uri=fields.get("clean_uri"),
            timings=timings,
        )
        _log_outcome(where, fields, claim.attempts, timings, finalized, recorded)
        return result
    except RetryableError:
        raise
    except Exception as exc:
        if claim is not None:
            _in_flight.remove_and_others(batch, key)
        transient = is_transient(exc)
        if claim is not None and claim.kind == "claimed" and not recorded:
            _release(ctx, key, claim.update_time)
        log.log(
            logging.WARNING if transient else logging.ERROR,
            "%s error during %s: will be retried",
            "transient" if transient else "unexpected",
            step,
            extra={**where, "error": type(exc).__name__, "step": step},
        )
        raise RetryableError(
            f"{'transient' if transient else 'unexpected'} error during {step}: {type(exc).__name__}"
        ) from None


def _deidentify(
    ctx: Context, obj: ObjectFinalized, batch: str, key: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Download to a temp file, run the engine into another, upload the clean file. Temp files always go."""
    settings = ctx.settings
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sendit-") as tmp:
        src, dst = Path(tmp) / "original", Path(tmp) / "clean.dcm"
        t = time.monotonic()
        try:
            size = storage.download(
                ctx.clients.storage, obj.bucket, obj.name, obj.generation, src, size=obj.size or None
            )
        except storage.ObjectGone:
            return {"state": state.FAILED, "reason": "object no longer exists"}, timings
        except storage.TooLarge:
            return {"state": state.FAILED, "reason": "object too large"}, timings
        timings["download_ms"] = _ms(t)

        t = time.monotonic()
        engine = ctx.engine
        with open(dst, "wb") as out:
            outcome = engine.process(str(src), out)
        timings["engine_ms"] = _ms(t)
        src.unlink(missing_ok=True)  # /tmp is memory: free the original before uploading

        fields = state.outcome_fields(outcome)
        fields["size"] = size
        if outcome.state != state.ANONYMIZED:
            return fields, timings
        ids = outcome.ids
        if ids is None:
            return {"state": state.FAILED, "reason": "engine returned no identifiers"}, timings
        name = state.clean_object_name(batch, ids.study_uid, ids.series_uid, ids.instance_uid)
        t = time.monotonic()
        info = storage.upload(
            ctx.clients.storage,
            settings.processing_bucket,
            name,
            dst,
            metadata={"batch_id": batch, "file_key": key},
        )
        timings["upload_ms"] = _ms(t)
        fields.update(clean_uri=info["uri"], clean_size=info["size"], clean_md5=info["md5"])
        return fields, timings


def _heal(ctx: Context, batch: str) -> None:
    """After a duplicate: evaluate completion again (a crash between 'recorded' and the completion check
    leaves it to the redelivery, or to the sweep; a batch settled with stale counts is corrected)."""
    _settle(ctx, batch)


def _settle(ctx: Context, batch: str) -> str | None:
    status = completion.evaluate(ctx, batch)
    if status == state.DONEPROCESSING:
        send_queue.auto_send(ctx, batch)
    return status


def _release(ctx: Context, key: str, update_time: Any) -> None:
    try:
        state.release_file(ctx, key, update_time)
    except Exception as exc:  # best effort: the lease expires on its own
        log.warning("could not release the claim", extra={"file_key": key, "error": type(exc).__name__})


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 2)


def _log_outcome(
    where: dict[str, Any],
    fields: dict[str, Any],
    attempts: int,
    timings: dict[str, float],
    finalized: str | None,
    recorded: bool,
) -> None:
    file_state = fields["state"]
    level = logging.WARNING if file_state == state.FAILED else logging.INFO
    extra = {
        **where,
        "event": "file_outcome",
        "state": file_state,
        "reason": fields.get("reason"),
        "ids": fields.get("ids"),
        "study_date": fields.get("study_date"),
        "size": fields.get("size"),
        "attempts": attempts,
        "late": bool(fields.get("late")),
        "recorded": recorded,
        "batch_status": finalized,
        **timings,
    }
    log.log(level, "file %s", file_state, extra=extra)


# ------------------------------------------------------------------------------------------ dead letters


def handle_dead_letter(ctx: Context, event_type: str, data: Any, event_id: str) -> None:
    """A message that exhausted its deliveries: its file (or batch) is marked failed, then acked."""
    try:
        msg = events.pubsub_message(event_type, data, event_id)
    except EventError as exc:
        log.error("dead letter not understood, acked: %s", exc, extra={"event_id": event_id})
        return
    raw_count = msg.attributes.get(DEAD_LETTER_COUNT) or ""
    count = int(raw_count) if raw_count.isdigit() else None
    try:
        if "bucketId" in msg.attributes and "objectId" in msg.attributes:
            _dead_upload(ctx, event_type, data, event_id, count)
            return
        try:
            payload = msg.json()
        except EventError:
            payload = None
        if isinstance(payload, dict) and payload.get("batch_id"):
            _dead_delivery(ctx, str(payload["batch_id"]), count)
            return
    except RetryableError:
        raise
    except Exception as exc:
        transient = is_transient(exc)
        log.log(
            logging.WARNING if transient else logging.ERROR,
            "dead letter not recorded: will be retried",
            extra={"event_id": event_id, "error": type(exc).__name__},
        )
        raise RetryableError(f"dead letter not recorded: {type(exc).__name__}") from None
    log.warning("dead letter of an unknown kind, acked", extra={"event_id": event_id})


def _dead_upload(ctx: Context, event_type: str, data: Any, event_id: str, count: int | None) -> None:
    try:
        obj = events.object_finalized(event_type, data, event_id)
    except EventError as exc:
        log.error("dead-lettered notification not understood: %s", exc, extra={"event_id": event_id})
        return
    if obj is None or obj.bucket != ctx.settings.staging_bucket or obj.name.endswith("/"):
        log.info("dead-lettered notification ignored", extra={"event_id": event_id})
        return
    folder = state.batch_folder(obj.name)
    batch = state.batch_id(ctx.settings.secret_key, obj.bucket, folder)
    reason = f"dead-lettered after {count} deliveries" if count else "dead-lettered"
    if seal.is_seal(obj.name):  # not a file of the batch: the batch stays on the stable-age rule
        seal.record_error(ctx, batch, obj, folder, f"manifest {reason}")
        log.warning("manifest dead-lettered", extra={"event_id": event_id, "batch_id": batch})
        return
    key = state.file_key(obj.bucket, obj.name, obj.generation)
    wrote = state.fail_file(ctx, obj, batch, reason)
    where = {
        "event_id": event_id,
        "file_key": key,
        "name_hash": state.name_hash(obj.name),
        "generation": obj.generation,
        "batch_id": batch,
    }
    if wrote:
        state.open_batch(ctx, batch, obj.bucket, folder)
        status = _settle(ctx, batch)
        log.warning(
            "file FAILED",
            extra={
                **where,
                "event": "file_outcome",
                "state": state.FAILED,
                "reason": reason,
                "batch_status": status,
            },
        )
    else:
        _heal(ctx, batch)
        log.info("dead letter for a file already terminal, acked", extra=where)


def _dead_delivery(ctx: Context, batch: str, count: int | None) -> None:
    from sendit import deliver

    deliver.handle_dead_letter(ctx, batch, count)
