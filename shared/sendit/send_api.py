"""The `send` HTTP function: queue complete batches for delivery and answer at once.

``POST`` with an optional JSON body ``{"batches": ["<batch id>", ...], "force": false}``; without a body
(or without ``batches``) every DONEPROCESSING batch - every complete one - is queued; a named batch not
complete yet is answered ``not_ready`` with ``waiting_for`` unless ``"force": true``. The work is
``sendit.send_queue.queue``: each batch moves DONEPROCESSING -> SENDING (preconditioned, so two concurrent
sends never queue a batch twice) and one message ``{"batch_id", "delivery_id"}`` goes to the deliver topic.

Answers (JSON):
- 202 ``{"queued": [...], "not_ready": [{"id", "status", "waiting_for", "completion"}],
  "already_sent": [...], "in_progress": [...], "unknown": [...]}`` when at least one batch was queued,
  200 with the same shape when none was;
- 400 malformed JSON or body, 404 when every named batch is unknown, 405 wrong method, 413 body too
  large, 503 when no message could be published (the batches are put back to DONEPROCESSING).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from sendit import logs

if TYPE_CHECKING:
    from flask import Request, Response

    from sendit.runtime import Context

log = logs.get("sendit.send")

MAX_BODY = 64 * 1024
MAX_BATCHES = 1000
BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class BadRequest(ValueError):
    """A client error: the message is safe to return (it never quotes the request body)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    from flask import Response

    response = Response(
        json.dumps(body, default=str, separators=(",", ":")) + "\n",
        status=status,
        mimetype="application/json",
    )
    response.headers["Cache-Control"] = "no-store"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error(status: int, message: str, **extra: Any) -> Response:
    headers = {"Allow": "POST"} if status == 405 else None
    return json_response({"error": message, "status": status, **extra}, status, headers)


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
    unknown_fields = sorted(set(body) - {"batches", "force"})
    if unknown_fields:
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
    if not all(BATCH_ID.match(b) for b in batches):
        raise BadRequest("a batch id may only contain letters, digits, '-' and '_' (at most 128)")
    return list(dict.fromkeys(batches)), force


def handle(ctx: Context, request: Request) -> Response:
    """The HTTP entry (see the module doc)."""
    if request.method != "POST":
        return error(405, f"method {request.method} not allowed: use POST")
    try:
        named, force = parse_request(request.get_data(cache=False))
    except BadRequest as exc:
        return error(exc.status, str(exc))
    try:
        return send(ctx, named, force)
    except Exception as exc:  # the state store is down or slow: a JSON answer, never an HTML 500
        from sendit.process import is_transient

        log.error("send: state store error", extra={"error": type(exc).__name__})
        if not is_transient(exc):
            raise
        return error(
            503,
            "batch state is unavailable right now; try again (a repeated send never queues a batch twice)",
        )


def send(ctx: Context, named: list[str] | None, force: bool = False) -> Response:
    from sendit import send_queue

    result, failed = send_queue.queue(ctx, named, force=force)
    batch_ids = named or []
    log.info(
        "send: request handled",
        extra={
            "named": named is not None,
            **{key: len(value) for key, value in result.items()},
            "publish_failed": len(failed),
        },
    )
    if failed and not result["queued"]:
        return error(503, "could not queue the batches for delivery; try again", not_queued=failed)
    if named is not None and len(result["unknown"]) == len(batch_ids):
        return error(404, "unknown batch" + ("es" if len(batch_ids) > 1 else ""), unknown=result["unknown"])
    if failed:
        result["not_queued"] = failed
    return json_response(result, 202 if result["queued"] else 200)
