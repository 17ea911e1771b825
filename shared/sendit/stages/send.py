"""The `send` function's work: queue ready batches for delivery (the HTTP side is ``sendit.http.send_api``).

Each named batch (or, with no names, every DONEPROCESSING batch) is moved DONEPROCESSING -> SENDING
(preconditioned, so two concurrent sends never queue a batch twice) and one deliver message
``{"batch_id", "delivery_id"}`` is published; the `deliver` function does the work. A batch whose message
could not be published is put back to DONEPROCESSING.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from sendit import events
from sendit.store import deliveries
from sendit.store.deliveries import SendDecision, SendResult

if TYPE_CHECKING:
    from sendit.app.context import Context

log = logging.getLogger("sendit.send")

PUBLISH_TIMEOUT = 30.0


def queue_batches(ctx: Context, named: list[str] | None) -> SendResult:
    """Queue the named batches (None: every ready batch); see the module doc."""
    store, clients = ctx.store, ctx.clients
    batch_ids = named if named is not None else deliveries.ready_batch_ids(store)
    result = SendResult(named=named is not None, requested=len(batch_ids))
    pending: list[tuple[SendDecision, Any]] = []
    topic = clients.topic_path(ctx.settings.deliver_topic)
    for batch_id in batch_ids:
        decision = deliveries.request_send(store, batch_id=batch_id, delivery_id=uuid.uuid4().hex)
        if decision.outcome == "queued":
            data, attributes = events.deliver_message(batch_id, str(decision.delivery_id))
            future = clients.publisher.publish(topic, data, **attributes)  # type: ignore[arg-type]
            pending.append((decision, future))
        elif decision.outcome == "not_ready":
            result.not_ready.append({"id": batch_id, "status": decision.status})
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
