"""Queue batches for delivery: DONEPROCESSING -> SENDING and one message on the deliver topic per batch.

What ``POST send`` runs (``sendit.send_api``), and what a completed batch runs itself with
``SENDIT_AUTO_SEND=true``. DONEPROCESSING means complete (``sendit.completion``): a send without names
queues exactly the complete batches. A named batch that is not complete yet is answered ``not_ready`` with
the reason (``waiting_for``), unless ``force``: then it is finalized as it stands (files still in flight
become late files, delivered by a follow-up send) and queued.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from sendit import completion
from sendit import delivery_state as ds

if TYPE_CHECKING:
    from sendit.runtime import Context

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT = 30.0
OUTCOMES = ("queued", "not_ready", "already_sent", "in_progress", "unknown")


def queue(
    ctx: Context, named: list[str] | None, *, force: bool = False
) -> tuple[dict[str, list[Any]], list[str]]:
    """Queue ``named`` batches (None: every complete one). Returns (result by outcome, publish failures)."""
    settings, clients = ctx.settings, ctx.clients
    db = clients.firestore
    batch_ids = named if named is not None else ds.ready_batch_ids(db, settings)
    result: dict[str, list[Any]] = {key: [] for key in OUTCOMES}
    pending: list[tuple[ds.SendDecision, Any]] = []
    topic = clients.topic_path(settings.deliver_topic)
    for batch_id in batch_ids:
        decision = ds.request_send(db, settings, batch_id, uuid.uuid4().hex)
        if decision.outcome == "not_ready" and force and decision.status in completion.OPEN:
            completion.evaluate(ctx, batch_id, force=True)
            decision = ds.request_send(db, settings, batch_id, uuid.uuid4().hex)
        if decision.outcome == "queued":
            data = json.dumps({"batch_id": batch_id, "delivery_id": decision.delivery_id}).encode()
            future = clients.publisher.publish(topic, data, kind="deliver", batch_id=batch_id)
            pending.append((decision, future))
        elif decision.outcome == "not_ready":
            result["not_ready"].append(_not_ready(ctx, batch_id, decision.status))
        else:
            result[decision.outcome].append(batch_id)
    failed: list[str] = []
    for decision, future in pending:
        try:
            future.result(timeout=PUBLISH_TIMEOUT)
            result["queued"].append(decision.batch_id)
        except Exception as exc:  # any publish failure: undo the transition so a later send can retry
            log.error(
                "send: publish failed, batch put back",
                extra={"batch_id": decision.batch_id, "error": type(exc).__name__},
            )
            ds.revert_send(db, settings, decision.batch_id, str(decision.delivery_id))
            failed.append(decision.batch_id)
    return result, failed


def _not_ready(ctx: Context, batch_id: str, status: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": batch_id, "status": status}
    if status in completion.OPEN:
        from sendit import state

        data = state.get_batch(ctx, batch_id) or {}
        view = completion.completion_view(ctx, batch_id, data)
        if view is not None:
            entry["waiting_for"] = view.get("waiting_for")
            entry["completion"] = view
    return entry


def auto_send(ctx: Context, batch_id: str) -> None:
    """With SENDIT_AUTO_SEND=true, queue a batch that just completed (a no-op otherwise)."""
    if not ctx.settings.auto_send:
        return
    try:
        result, failed = queue(ctx, [batch_id])
    except Exception as exc:  # never fail the file or the sweep: `sendit send` still works
        log.error("auto-send failed", extra={"batch_id": batch_id, "error": type(exc).__name__})
        return
    log.info(
        "auto-send",
        extra={
            "event": "auto_send",
            "batch_id": batch_id,
            "queued": bool(result["queued"]),
            "failed": bool(failed),
        },
    )
