"""The `send` function's work: queue complete batches for delivery (HTTP side: ``sendit.http.send_api``).

Each named batch (or, with no names, every DONEPROCESSING batch: DONEPROCESSING means complete, see
``sendit.completion``) is moved DONEPROCESSING -> SENDING (preconditioned, so two concurrent sends never
queue a batch twice) and one deliver message ``{"batch_id", "delivery_id"}`` is published; the `deliver`
function does the work. A batch whose message could not be published is put back to DONEPROCESSING.
A named batch that is not complete yet is ``not_ready`` with ``waiting_for`` unless ``force``: then it is
settled as it stands (files still in flight become late files, delivered by a follow-up send) and queued.
With ``SENDIT_AUTO_SEND=true`` the dispatch (``sendit.app.runtime``) runs this for batches that complete.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from sendit import completion, events
from sendit.store import batches, deliveries
from sendit.store.deliveries import SendDecision, SendResult

if TYPE_CHECKING:
    from sendit.app.context import Context

log = logging.getLogger("sendit.send")

PUBLISH_TIMEOUT = 30.0


def queue_batches(ctx: Context, named: list[str] | None, force: bool = False) -> SendResult:
    """Queue the named batches (None: every complete batch); see the module doc."""
    store, clients = ctx.store, ctx.clients
    batch_ids = named if named is not None else deliveries.ready_batch_ids(store)
    result = SendResult(named=named is not None, requested=len(batch_ids))
    pending: list[tuple[SendDecision, Any]] = []
    topic = clients.topic_path(ctx.settings.deliver_topic)
    for batch_id in batch_ids:
        decision = deliveries.request_send(store, batch_id=batch_id, delivery_id=uuid.uuid4().hex)
        if decision.outcome == "not_ready" and force and decision.status in completion.OPEN:
            completion.evaluate(ctx, batch_id, force=True)
            decision = deliveries.request_send(store, batch_id=batch_id, delivery_id=uuid.uuid4().hex)
        if decision.outcome == "queued":
            data, attributes = events.deliver_message(batch_id, str(decision.delivery_id))
            future = clients.publisher.publish(topic, data, **attributes)  # type: ignore[arg-type]
            pending.append((decision, future))
        elif decision.outcome == "not_ready":
            result.not_ready.append(_not_ready(ctx, batch_id, decision.status))
        else:
            getattr(result, decision.outcome).append(batch_id)
    for decision, future in pending:
        try:
            future.result(timeout=PUBLISH_TIMEOUT)
            result.queued.append(decision.batch_id)
        except Exception as exc:  # any publish failure: undo the transition so a later send can retry
            log.error(
                "send: publish failed, batch put back",
                extra={"batch_id": decision.batch_id, "error": type(exc).__name__},
            )
            deliveries.revert_send(store, batch_id=decision.batch_id, delivery_id=str(decision.delivery_id))
            result.not_queued.append(decision.batch_id)
    log.info(
        "send: request handled",
        extra={
            "named": result.named,
            **{key: len(value) for key, value in result.body().items() if key != "not_queued"},
            "publish_failed": len(result.not_queued),
        },
    )
    return result


def _not_ready(ctx: Context, batch_id: str, status: str | None) -> dict[str, Any]:
    """``{"id", "status"}``, and for a batch still open why it is not complete yet."""
    entry: dict[str, Any] = {"id": batch_id, "status": status}
    if status in completion.OPEN:
        data = batches.get_batch(ctx.store, batch=batch_id) or {}
        view = completion.completion_view(ctx.store, ctx.settings.stable_age_seconds, batch_id, data)
        if view is not None:
            entry["waiting_for"] = view.get("waiting_for")
            entry["completion"] = view
    return entry
