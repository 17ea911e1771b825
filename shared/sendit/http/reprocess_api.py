"""The send function's ``POST /reprocess`` route: parse the request, re-run files (``stages.reprocess``).

Body (JSON), exactly one of ``batch``, ``folder``, ``files``:
- ``{"batch": "<batch id>", "states": ["FAILED"]}`` or ``{"folder": "<staging folder>", ...}``: the files of
  that batch in ``states`` (default ``["FAILED"]``; any of FAILED, SKIPPED, ANONYMIZED, SENT);
- ``{"files": ["<file key>", ...], "states": [...]}``: those files when in ``states`` (the replay of
  dead-lettered uploads), whatever their batches.

Answers (JSON): 202 when files were reopened and re-queued, 200 when none was (nothing in those states);
400 malformed body, 404 unknown batch or folder (or every file key unknown), 405 not POST, 409 the batch is
being delivered (SENDING), its rows are still in BigQuery's streaming buffer, delivered archives (layout
tar) or a folder naming several batches, 410 staging originals gone (``files``: their keys), 413 body too
large, 503 state store unavailable. Every refusal is ``{"error", "status", "why", "batch", ...}``; no
answer quotes the request body or names an object.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sendit import naming
from sendit.errors import Refused, UnknownBatch, is_transient
from sendit.http.responses import UNAVAILABLE, BadRequest, error, json_response
from sendit.store.reopen import ReprocessRequest, ReprocessResult
from sendit.store.vocabulary import TERMINAL, FileState

if TYPE_CHECKING:
    from flask import Request, Response

log = logging.getLogger("sendit.reprocess")

PATH = "/reprocess"
MAX_BODY = 256 * 1024
MAX_FILES = 1000
MAX_FOLDER = 1024
STATUS_OF = {"delivering": 409, "buffered": 409, "layout": 409, "ambiguous": 409, "gone": 410}

Reprocess = Callable[[ReprocessRequest], ReprocessResult]


def is_reprocess(request: Request) -> bool:
    """Whether a request to the send function is for this route."""
    return request.path.rstrip("/") == PATH


def parse_request(raw: bytes) -> ReprocessRequest:
    """The request the body states. Raises ``BadRequest``; its messages never quote the body."""
    if len(raw) > MAX_BODY:
        raise BadRequest(f"request body larger than {MAX_BODY} bytes", 413)
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest('malformed JSON body: expected {"batch": "<batch id>", "states": [...]}') from None
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object: {"batch": "<batch id>", "states": [...]}')
    if sorted(set(body) - {"batch", "folder", "files", "states"}):
        raise BadRequest("unknown field(s) in the body; accepted: batch, folder, files, states")
    named = [k for k in ("batch", "folder", "files") if body.get(k) is not None]
    if len(named) != 1:
        raise BadRequest("name exactly one of 'batch', 'folder' or 'files'")
    fields: dict[str, Any] = {"states": _states(body.get("states"))}
    if named == ["batch"]:
        if not isinstance(body["batch"], str) or not naming.is_token(body["batch"]):
            raise BadRequest("'batch' must be a batch id (letters, digits, '-' and '_', at most 128)")
        fields["batch"] = body["batch"]
    elif named == ["folder"]:
        folder = body["folder"]
        if not isinstance(folder, str) or not folder or len(folder.encode("utf-8")) > MAX_FOLDER:
            raise BadRequest(f"'folder' must be a staging folder name of 1 to {MAX_FOLDER} bytes")
        fields["folder"] = folder
    else:
        fields["keys"] = _keys(body["files"])
    return ReprocessRequest(**fields)


def _states(value: Any) -> tuple[str, ...]:
    if value is None:
        return (FileState.FAILED,)
    allowed = sorted(str(s) for s in TERMINAL)
    if not isinstance(value, list) or not value or not all(v in allowed for v in value):
        raise BadRequest(f"'states' must be a non-empty list of {', '.join(allowed)}")
    return tuple(dict.fromkeys(str(v) for v in value))


def _keys(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'files' must be a non-empty list of file keys")
    if len(value) > MAX_FILES:
        raise BadRequest(f"at most {MAX_FILES} files per request")
    if not all(isinstance(k, str) and naming.is_token(k) for k in value):
        raise BadRequest("a file key may only contain letters, digits, '-' and '_' (at most 128)")
    return tuple(dict.fromkeys(value))


def handle(request: Request, run: Reprocess) -> Response:
    """The HTTP entry (see the module doc); ``run`` does the work (``stages.reprocess.reprocess``)."""
    if request.method != "POST":
        return error(405, f"method {request.method} not allowed: use POST", allow="POST")
    try:
        wanted = parse_request(request.get_data(cache=False))
    except BadRequest as exc:
        return error(exc.status, str(exc))
    try:
        result = run(wanted)
    except UnknownBatch:
        return error(404, "no batch for that folder" if wanted.folder is not None else "unknown batch")
    except Refused as exc:
        return error(STATUS_OF.get(exc.why, 409), str(exc), why=exc.why, batch=exc.batch, files=exc.files)
    except Exception as exc:  # the state store is down or slow: a JSON answer, never an HTML 500
        log.error("reprocess: error", extra={"error": type(exc).__name__})
        if not is_transient(exc):
            raise
        return error(503, UNAVAILABLE + " (a repeated reprocess reopens only what is still terminal)")
    return respond(result, requested=len(wanted.keys))


def respond(result: ReprocessResult, requested: int = 0) -> Response:
    if requested and len(result.unknown) == requested:
        return error(404, "unknown file" + ("s" if requested > 1 else ""), unknown=result.unknown)
    return json_response(result.body(), 202 if result.reopened else 200)
