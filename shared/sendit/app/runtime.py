"""The dispatch from the entry points to the stages: the one module that imports ``sendit.stages``, and
the one that only ``functions/main.py`` imports.

The context is built from the environment on first use and reused by every request of the instance.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from sendit import logs
from sendit.app.context import Context
from sendit.resources import topology
from sendit.store.vocabulary import BatchState

if TYPE_CHECKING:
    from flask import Request, Response

log = logging.getLogger("sendit.runtime")
_context: Context | None = None
_context_lock = threading.Lock()


def context(function: str) -> Context:
    """The process-wide context, built from the environment on first use.

    Only functions marked ``needs_key`` in topology.json require SENDIT_SECRET_KEY (Terraform gives the
    key to those alone); in the others ``settings.secret_key`` is empty.
    """
    global _context
    if _context is None:
        with _context_lock:
            if _context is None:
                logs.setup()
                needs_key = bool(topology()["functions"][function].get("needs_key", True))
                _context = Context.from_env(require_key=needs_key)
                logs.setup(_context.settings.log_level)  # SENDIT_LOG_LEVEL
    return _context


def anonymize(event_type: str, data: Any, event_id: str) -> None:
    from sendit.stages import anonymize

    ctx = context("anonymize")
    result = anonymize.handle_event(ctx, event_type, data, event_id)
    if result is not None and result.batch_status == BatchState.DONEPROCESSING:
        _auto_send(ctx, [result.batch_id])


def sweep(event_type: str, data: Any, event_id: str) -> None:
    from sendit.stages import sweep

    ctx = context("sweep")
    sweep.handle_event(ctx, event_type, data, event_id)
    _auto_send(ctx, None)  # every complete batch: also those completed elsewhere, or not queued before


def _auto_send(ctx: Context, batch_ids: list[str] | None) -> None:
    """With SENDIT_AUTO_SEND=true, queue batches that are complete (the send stage; a no-op otherwise)."""
    if not ctx.settings.auto_send:
        return
    from sendit.stages import send

    try:
        result = send.queue_batches(ctx, batch_ids)
    except Exception as exc:  # never fail the file or the tick: the next tick, or `sendit send`, retries
        log.error("auto-send failed", extra={"error": type(exc).__name__})
        return
    if result.queued:
        log.info("auto-send", extra={"event": "auto_send", "queued": len(result.queued)})


def deliver(event_type: str, data: Any, event_id: str) -> None:
    from sendit.stages import deliver

    deliver.handle_event(context("deliver"), event_type, data, event_id)


def dead_letter(event_type: str, data: Any, event_id: str) -> None:
    from sendit.stages import dead_letter

    dead_letter.handle_event(context("dead_letter"), event_type, data, event_id)


def send(request: Request) -> Response:
    """``POST /``: queue batches for delivery; ``POST /reprocess``: re-run files (operators only, both)."""
    from sendit.http import reprocess_api, send_api
    from sendit.stages import reprocess, send

    ctx = context("send")
    if reprocess_api.is_reprocess(request):
        return reprocess_api.handle(request, lambda wanted: reprocess.reprocess(ctx, wanted))
    return send_api.handle(request, lambda named, force: send.queue_batches(ctx, named, force))


def status(request: Request) -> Response:
    from sendit.http import status_api

    ctx = context("status")
    return status_api.handle(request, lambda: ctx.store, ctx.settings)
