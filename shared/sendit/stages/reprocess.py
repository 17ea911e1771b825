"""The `send` function's reprocess route: re-run chosen files with the current recipe and settings
(``sendit reprocess``, and the replay of dead-lettered uploads: ``sendit dead-letters --replay``).

HTTP side: ``sendit.http.reprocess_api`` (``POST <send url>/reprocess``). A request names one batch (by id or
by staging folder) and the file states to re-run (default FAILED; ``--all``: every terminal state), or
file keys (the replay). For each batch, in this order:

1. refused while the batch is being delivered (SENDING), and when the staging original of any chosen file
   is gone (cleaned up after send, or by the staging bucket's lifecycle): nothing is changed;
2. chosen files that were delivered (SENT; only with every state chosen): their rows are withdrawn from the
   image and study tables (``delivery.replace``), so the follow-up delivery inserts them once; refused
   while BigQuery still buffers them (nothing changed), and refused in layout ``tar`` (a follow-up
   delivery writes new archives beside the first, it cannot replace them);
3. each file is reopened (``store.reopen``: RECEIVED, lease expired, attempts 0, its tally shard's
   terminal -1, preconditioned on the document read above); a settled batch goes back to PROCESSING;
4. each reopened file's OBJECT_FINALIZE notification is published to the uploads topic, as the sweep's
   re-drive does: the ordinary claim runs it again. One not published is re-driven by the sweep later.

The batch completes again as any batch does; its re-run files are then delivered by a follow-up send.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from sendit import events, storage
from sendit.delivery import replace
from sendit.errors import Refused, UnknownBatch
from sendit.store import batches, queries, reopen
from sendit.store.reopen import Candidate, ReprocessRequest, ReprocessResult
from sendit.store.vocabulary import BatchState, FileState

if TYPE_CHECKING:
    from sendit.app.context import Context

log = logging.getLogger("sendit.reprocess")

WORKERS = 32  # parallel existence checks (one metadata read each)
PUBLISH_TIMEOUT = 30.0
SHOWN_KEYS = 50  # file keys named in a refusal
REDRIVEN = "reprocess"  # the notification's senditRedriven attribute


def reprocess(ctx: Context, request: ReprocessRequest) -> ReprocessResult:
    """Re-run what ``request`` names (see the module doc). The batch route raises ``UnknownBatch`` and
    ``Refused``; the files route reports per file and per batch instead."""
    result = ReprocessResult(states=list(request.states))
    if request.keys:
        _files_route(ctx, request, result)
    else:
        try:
            batch = result.batch = _resolve(ctx, request)
            chosen = reopen.candidates(ctx.store, batch=batch, states=list(request.states))
            result.status = _batch(ctx, batch, chosen, result)
        except Refused as exc:
            log.warning(
                "reprocess refused", extra={"batch_id": exc.batch, "why": exc.why, "files": len(exc.files)}
            )
            raise
    log.info(
        "reprocess: files reopened",
        extra={
            "event": "reprocess",
            "batch_id": result.batch,
            "states": result.states,
            "reopened": len(result.reopened),
            "reopened_by_state": dict(result.by_state),
            "not_published": len(result.not_published),
            "unchanged": len(result.unchanged),
            "unknown": len(result.unknown),
            "refused": len(result.refused),
            "rows_withdrawn": result.rows_withdrawn,
            "study_rows_withdrawn": result.study_rows_withdrawn,
        },
    )
    return result


def _resolve(ctx: Context, request: ReprocessRequest) -> str:
    """The batch id the request names (an id, or the one batch of a staging folder)."""
    if request.batch is not None:
        return request.batch
    found = queries.batches_of_folder(ctx.store, folder=str(request.folder), names=False)
    if not found:
        raise UnknownBatch("no batch for that folder")
    if len(found) > 1:
        raise Refused("that folder names more than one batch: name the batch id", "ambiguous")
    return str(found[0]["id"])


def _files_route(ctx: Context, request: ReprocessRequest, result: ReprocessResult) -> None:
    """Files by key, batch by batch; a refused batch is reported, the others go on."""
    found, result.unknown = reopen.candidates_of(ctx.store, keys=list(request.keys))
    by_batch: dict[str, list[Candidate]] = {}
    for file in found:
        if file.state in request.states:
            by_batch.setdefault(file.batch_id, []).append(file)
        else:
            result.unchanged.append({"key": file.key, "state": file.state})
    for batch, chosen in by_batch.items():
        try:
            _batch(ctx, batch, chosen, result)
        except (Refused, UnknownBatch) as exc:
            why = exc.why if isinstance(exc, Refused) else "unknown"
            keys = [f.key for f in chosen]
            result.refused.append({"batch": batch, "why": why, "error": str(exc), "files": keys})


def _batch(ctx: Context, batch: str, chosen: list[Candidate], result: ReprocessResult) -> str:
    """Steps 1-4 of the module doc for one batch; returns its status before."""
    data = batches.get_batch(ctx.store, batch=batch)
    if data is None:
        raise UnknownBatch(batch)
    status = str(data.get("status") or BatchState.QUEUE)
    if status == BatchState.SENDING:
        raise Refused(
            "the batch is being delivered (SENDING): reprocess it once the delivery has finished",
            "delivering",
            batch=batch,
        )
    if not chosen:
        return status
    _check_originals(ctx, batch, chosen)
    delivered = [f for f in chosen if f.state == FileState.SENT]
    if delivered:
        _withdraw_rows(ctx, batch, delivered, result)
    reopened = _reopen(ctx, chosen, result)
    if reopened:
        reopen.reopen_batch(ctx.store, batch=batch)
        _publish(ctx, reopened, result)
    return status


def _check_originals(ctx: Context, batch: str, chosen: list[Candidate]) -> None:
    """Refuse (``gone``) when a chosen file's staging object (that generation) no longer exists."""

    def gone(file: Candidate) -> bool:
        if not file.bucket or not file.name:
            return True
        return not storage.exists(ctx.clients.storage, file.bucket, file.name, file.generation)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        missing = [f.key for f, lost in zip(chosen, pool.map(gone, chosen), strict=True) if lost]
    if missing:
        raise Refused(
            f"the staging originals of {len(missing)} of the {len(chosen)} chosen files are gone (cleaned "
            "up after send or by the staging lifecycle): they cannot be re-run; upload them again",
            "gone",
            batch=batch,
            files=missing[:SHOWN_KEYS],
        )


def _withdraw_rows(ctx: Context, batch: str, delivered: list[Candidate], result: ReprocessResult) -> None:
    settings = ctx.settings
    if settings.delivery_layout == "tar":
        raise Refused(
            "delivered files cannot be re-run with SENDIT_DELIVERY_LAYOUT=tar: a follow-up delivery "
            "writes new archives beside the first ones instead of replacing them",
            "layout",
            batch=batch,
        )
    images, studies = replace.withdraw(
        ctx.clients.bigquery,
        image_table=settings.bigquery_table,
        study_table=settings.study_table,
        batch_id=batch,
        instance_uids=[f.ids["instance_uid"] for f in delivered if f.ids.get("instance_uid")],
        study_uids=[f.ids["study_uid"] for f in delivered if f.ids.get("study_uid")],
    )
    result.rows_withdrawn += images
    result.study_rows_withdrawn += studies


def _reopen(ctx: Context, chosen: list[Candidate], result: ReprocessResult) -> list[Candidate]:
    done = reopen.reopen_files(ctx.store, files=chosen, shards=ctx.settings.tally_shards)
    reopened = []
    for file, ok in zip(chosen, done, strict=True):
        if ok:
            reopened.append(file)
            result.reopened.append(file.key)
            result.by_state[file.state] += 1
        else:
            result.unchanged.append({"key": file.key, "state": "changed since it was read"})
    return reopened


def _publish(ctx: Context, reopened: list[Candidate], result: ReprocessResult) -> None:
    """Each file's notification to the uploads topic; one that fails is left to the sweep's re-drive."""
    topic = ctx.clients.topic_path(ctx.settings.upload_topic)
    pending = []
    for file in reopened:
        data, attributes = events.notification_of(file, redriven=REDRIVEN)
        pending.append((file, ctx.clients.publisher.publish(topic, data, **attributes)))  # type: ignore[arg-type]
    for file, future in pending:
        try:
            future.result(timeout=PUBLISH_TIMEOUT)
        except Exception as exc:  # the sweep re-drives a RECEIVED file whose lease expired long ago
            log.warning(
                "reprocess: notification not published, the sweep re-drives it",
                extra={"batch_id": file.batch_id, "file_key": file.key, "error": type(exc).__name__},
            )
            result.not_published.append(file.key)
