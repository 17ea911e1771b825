"""The `send` HTTP function: parse the request, queue complete batches (``stages.send``), answer at once.

``POST`` with an optional JSON body ``{"batches": ["<batch id>", ...], "force": false}``; without a body
(or without ``batches``) every DONEPROCESSING batch - every complete one - is queued; a named batch not
complete yet is answered ``not_ready`` with ``waiting_for`` unless ``"force": true``.

Answers (JSON):
- 202 ``{"queued": [...], "not_ready": [{"id", "status", "waiting_for", "completion"}],
  "already_sent": [...], "in_progress": [...], "unknown": [...]}`` when at least one batch was queued,
  200 with the same shape when none was;
- 400 malformed JSON or body, 404 when every named batch is unknown, 405 wrong method, 413 body too
  large, 503 when no message could be published (the batches are put back to DONEPROCESSING) or the
  state store is unavailable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sendit import naming
from sendit.errors import is_transient
from sendit.http.responses import UNAVAILABLE, BadRequest, error, json_response

if TYPE_CHECKING:
    from flask import Request, Response

    from sendit.store.deliveries import SendResult

log = logging.getLogger("sendit.send")

MAX_BODY = 64 * 1024
MAX_BATCHES = 1000

QueueBatches = Callable[[list[str] | None, bool], "SendResult"]


def parse_body(raw: bytes) -> list[str] | None:
    """The batch ids the body names, or None for "every ready batch". Raises BadRequest."""
    return parse_request(raw)[0]


def parse_request(raw: bytes) -> tuple[list[str] | None, bool]:
    """(the batch ids the body names or None for "every complete batch", force). Raises BadRequest."""
    if len(raw) > MAX_BODY:
        raise BadRequest(f"request body larger than {MAX_BODY} bytes", 413)
    if not raw.strip():
        return None, False
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest(
            'malformed JSON body: expected {"batches": ["<batch id>", ...]} or no body'
        ) from None
    if body is None:
        return None, False
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object: {"batches": ["<batch id>", ...]}')
    if sorted(set(body) - {"batches", "force"}):
        raise BadRequest("unknown field(s) in the body; only 'batches' and 'force' are accepted")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("'force' must be true or false")
    batches = body.get("batches")
    if batches is None:
        if force:
            raise BadRequest("'force' needs 'batches': name the batches to send before they are complete")
        return None, False
    if not isinstance(batches, list) or not all(isinstance(b, str) for b in batches):
        raise BadRequest("'batches' must be a list of batch id strings")
    if not batches:
        raise BadRequest("'batches' is empty: name at least one batch, or send no body for every ready batch")
    if len(batches) > MAX_BATCHES:
        raise BadRequest(f"at most {MAX_BATCHES} batches per request")
    if not all(naming.is_token(b) for b in batches):
        raise BadRequest("a batch id may only contain letters, digits, '-' and '_' (at most 128)")
    return list(dict.fromkeys(batches)), force


def handle(request: Request, queue: QueueBatches) -> Response:
    """The HTTP entry (see the module doc); ``queue`` does the work (``stages.send.queue_batches``)."""
    if request.method != "POST":
        return error(405, f"method {request.method} not allowed: use POST", allow="POST")
    try:
        named, force = parse_request(request.get_data(cache=False))
    except BadRequest as exc:
        return error(exc.status, str(exc))
    try:
        result = queue(named, force)
    except Exception as exc:  # the state store is down or slow: a JSON answer, never an HTML 500
        log.error("send: state store error", extra={"error": type(exc).__name__})
        if not is_transient(exc):
            raise
        return error(503, UNAVAILABLE + " (a repeated send never queues a batch twice)")
    return respond(result)


def respond(result: SendResult) -> Response:
    """The HTTP answer for what a send did."""
    if result.not_queued and not result.queued:
        return error(503, "could not queue the batches for delivery; try again", not_queued=result.not_queued)
    if result.named and len(result.unknown) == result.requested:
        plural = "es" if result.requested > 1 else ""
        return error(404, "unknown batch" + plural, unknown=result.unknown)
    return json_response(result.body(), 202 if result.queued else 200)
