"""The `status` HTTP function: batch status as JSON, and a small auto-refreshing HTML dashboard.

- ``GET {url}/batches`` -> ``{"batches": [{"id", "folder", "status", "completion", "counts", ...}]}``
- ``GET {url}/batches?folder=NAME`` -> ``{"folder": NAME, "batches": [...]}`` (the batch of that staging
  folder; a 404 JSON that names nothing when there is none; the name is never logged)
- ``GET {url}/batches/{id}`` -> the batch plus ``"files": [{"name", "state", "reason", ...}]`` and
  ``"next_page_token"`` (``?page_size=`` up to 1000, ``?page_token=``, ``?state=`` to filter)
- ``GET {url}/metrics?days=N[&until=YYYY-MM-DD]`` -> files, studies and bytes delivered per day and per
  collection, and latency percentiles, over N whole UTC days (``sendit.store.metrics``)
- ``GET {url}/`` -> the dashboard for a browser (``Accept: text/html``), the batch list otherwise;
  ``/batches...`` also render as HTML for a browser, and ``?format=json|html`` overrides.

The views come from ``sendit.store.queries`` (allow-listed fields only; folder and object names unless
``SENDIT_STATUS_NAMES=hidden``). A batch's ``deliveries`` say where each delivery went: ``targets``, the
bucket's ``objects`` / ``objects_written`` and, with the DICOMweb target, ``dicomweb`` (instances stored /
already present / failed, the study URLs); each file its ``dicomweb`` outcome. An open batch carries
``completion`` (``sendit.completion``: why it is not DONEPROCESSING yet, from its tally), and a batch whose
clean files wait for delivery ``expires_at``, ``expiring_soon`` and ``expired`` (``sendit.expiry``: the
processing bucket's lifecycle, ``SENDIT_PROCESSING_RETENTION_DAYS``). 404 for an unknown batch, 503 when the
state store is unavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sendit import completion, expiry, naming
from sendit.errors import UnknownBatch, is_transient
from sendit.http import dashboard
from sendit.http.responses import UNAVAILABLE, BadRequest, error, html_response, json_response
from sendit.store import metrics, queries
from sendit.store.vocabulary import FileState

if TYPE_CHECKING:
    from flask import Request, Response

    from sendit.config import Settings
    from sendit.store.base import Store

log = logging.getLogger("sendit.status")

DEFAULT_PAGE, MAX_PAGE = 200, 1000
MAX_FOLDER = 1024  # GCS object names are at most 1,024 bytes


class _Views:
    """How this deployment shows batches: names shown or hidden, completion from the stable age, expiry
    from the processing bucket's retention."""

    def __init__(self, store: Store, settings: Settings | None) -> None:
        self.store = store
        self.names = getattr(settings, "status_names", "shown") != "hidden"
        self.stable_age = int(getattr(settings, "stable_age_seconds", 60))
        self.retention_days = int(getattr(settings, "processing_retention_days", 30))
        self.now = datetime.now(UTC)  # one clock reading per request: every batch judged alike

    def extra(self, batch_id: str, data: dict[str, Any]) -> dict[str, Any]:
        view = completion.completion_view(self.store, self.stable_age, batch_id, data)
        fields = {"completion": view} if view is not None else {}
        fields.update(expiry.expiry_view(data, retention_days=self.retention_days, now=self.now))
        return fields


def _route(path: str) -> tuple[str, str | None]:
    """('root'|'batches'|'batch'|'missing', batch id). Tolerates a leading function-name segment."""
    parts = [p for p in path.split("/") if p]
    if parts[-1:] == ["metrics"]:
        return "metrics", None
    if "batches" in parts:
        rest = parts[parts.index("batches") + 1 :]
        if not rest:
            return "batches", None
        if len(rest) == 1:
            return "batch", rest[0]
        return "missing", None
    if len(parts) <= 1 and (not parts or parts[0] in {"status", "index.html", "dashboard"}):
        return "root", None
    return "missing", None


def _wants_html(request: Request) -> bool:
    fmt = (request.args.get("format") or "").lower()
    if fmt in {"html", "json"}:
        return fmt == "html"
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html"


def _page_args(request: Request) -> tuple[int, str | None, str | None]:
    raw = request.args.get("page_size") or str(DEFAULT_PAGE)
    try:
        size = int(raw)
    except ValueError:
        raise BadRequest("page_size must be an integer") from None
    if not 1 <= size <= MAX_PAGE:
        raise BadRequest(f"page_size must be between 1 and {MAX_PAGE}")
    token = request.args.get("page_token") or None
    if token is not None and not naming.is_token(token):
        raise BadRequest("malformed page_token")
    state = (request.args.get("state") or "").upper() or None
    if state is not None and state not in set(FileState):
        raise BadRequest("state must be one of " + ", ".join(FileState))
    return size, token, state


def _refresh(request: Request) -> int:
    try:
        return max(0, min(3600, int(request.args.get("refresh", dashboard.REFRESH_SECONDS))))
    except ValueError:
        return dashboard.REFRESH_SECONDS


def handle(request: Request, store_of: Callable[[], Store], settings: Settings | None = None) -> Response:
    """The HTTP entry (see the module doc); ``store_of`` gives the state store (created on first use);
    ``settings.collection`` (SENDIT_COLLECTION) names the deliveries recorded before records named theirs."""
    if request.method not in {"GET", "HEAD"}:
        return error(405, f"method {request.method} not allowed: use GET", allow="GET, HEAD")
    route, batch_id = _route(request.path)
    if route == "missing":
        return error(404, "not found: use /batches or /batches/<id>")
    try:
        size, token, state = _page_args(request) if route == "batch" else (0, None, None)
    except BadRequest as exc:
        return error(exc.status, str(exc))
    try:
        views = _Views(store_of(), settings)
        if route == "metrics":
            return _metrics(views.store, request, getattr(settings, "collection", "sendit"))
        folder = request.args.get("folder") if route == "batches" else None
        if folder is not None:
            return _folder(views, request, folder)
        if batch_id is None:
            return _batches(views, request)
        return _batch(views, request, batch_id, size, token, state)
    except UnknownBatch:
        return error(404, "unknown batch")
    except BadRequest as exc:
        return error(exc.status, str(exc))
    except Exception as exc:  # the state store is down or slow: a JSON answer, never an HTML 500
        log.error("status: state store error", extra={"error": type(exc).__name__})
        if not is_transient(exc):
            raise
        return error(503, UNAVAILABLE)


def _batches(views: _Views, request: Request) -> Response:
    batches = queries.public_batches(views.store, names=views.names, extra=views.extra)
    if _wants_html(request):
        return html_response(dashboard.render_dashboard(batches, _refresh(request)))
    return json_response({"batches": batches})


def _folder(views: _Views, request: Request, folder: str) -> Response:
    """``?folder=NAME``: the folder is never logged and never echoed in an error."""
    if not folder or len(folder.encode("utf-8")) > MAX_FOLDER:
        return error(400, f"folder must be 1 to {MAX_FOLDER} bytes")
    batches = queries.batches_of_folder(views.store, folder=folder, names=views.names, extra=views.extra)
    log.info("status: folder lookup", extra={"found": len(batches)})
    if not batches:
        return error(404, "no batch for that folder")
    if _wants_html(request):
        return html_response(dashboard.render_dashboard(batches, _refresh(request)))
    body: dict[str, Any] = {"batches": batches}
    return json_response({"folder": folder, **body} if views.names else body)


def _batch(
    views: _Views, request: Request, batch_id: str, size: int, token: str | None, state: str | None
) -> Response:
    store = views.store
    batch = queries.public_batch(store, batch_id=batch_id, names=views.names, extra=views.extra)
    files, next_token = queries.public_files(
        store, batch_id=batch_id, page_size=size, page_token=token, state=state, names=views.names
    )
    batch["files"], batch["next_page_token"] = files, next_token
    if _wants_html(request):
        return html_response(dashboard.render_batch(batch, _refresh(request), size, state))
    return json_response(batch)


def _metrics(store: Store, request: Request, collection: str) -> Response:
    """Volume over ``days`` whole UTC days ending ``until`` (default today)."""
    from datetime import date

    try:
        days = int(request.args.get("days") or "7")
        until = date.fromisoformat(request.args["until"]) if request.args.get("until") else None
        metrics.window(days, until)
    except ValueError:
        raise BadRequest(f"days must be 1-{metrics.MAX_DAYS}; until a date YYYY-MM-DD") from None
    return json_response(metrics.volume(store, days=days, until=until, collection=collection))
