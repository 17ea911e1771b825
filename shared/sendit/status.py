"""The `status` HTTP function: batch status as JSON, and a small auto-refreshing HTML dashboard.

- ``GET {url}/batches`` -> ``{"batches": [{"id", "folder", "status", "completion", "counts", ...}]}``
- ``GET {url}/batches?folder=NAME`` -> ``{"folder": NAME, "batches": [...]}`` (the batch of that staging
  folder; 404 JSON without the name when there is none)
- ``GET {url}/batches/{id}`` -> the batch plus ``"files": [{"name", "state", "reason", ...}]`` and
  ``"next_page_token"`` (``?page_size=`` up to 1000, ``?page_token=``, ``?state=`` to filter)
- ``GET {url}/`` -> the dashboard for a browser (``Accept: text/html``), the batch list otherwise;
  ``/batches...`` also render as HTML for a browser, and ``?format=json|html`` overrides.

Ids, pseudonyms, states, counts, sizes, times and reasons leave this API, and - for the staging-side
operators who uploaded them - each batch's ``folder`` and each file's ``object`` name, unless
``SENDIT_STATUS_NAMES=hidden`` (then neither appears anywhere in it). Names never appear in an error body
or a log line. A file's ``name`` is its hashed name either way. An open batch carries ``completion``: why it
is not DONEPROCESSING yet (``sendit.completion``), computed from its tally on read.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from sendit import completion, logs, state
from sendit import delivery_state as ds
from sendit.send_api import json_response
from sendit.store import tally

if TYPE_CHECKING:
    from flask import Request, Response

    from sendit.config import Settings
    from sendit.runtime import Context

log = logs.get("sendit.status")

BATCH_FIELDS = (
    "status",
    "counts",
    "has_error",
    "errors",
    "created_at",
    "updated_at",
    "start_time",
    "finish_time",
    "elapsed_seconds",
    "size_bytes",
    "study_dates",
    "study_uids",
    "multiple_studies",
    "send_requested_at",
    "sent_at",
    "send_seconds",
    "last_delivery_error",
    "manifest_at",
    "manifest_error",
    "unlisted_files",
    "late_files",
    "completed_by",
)
MANIFEST_FIELDS = ("count", "bytes", "created", "tool_version")
DELIVERY_FIELDS = (
    "delivery_id",
    "at",
    "files",
    "rows",
    "objects",
    "bytes",
    "layout",
    "removed",
    "kept",
    "errors",
    "send_seconds",
)
ID_FIELDS = ("patient_id", "study_uid", "series_uid", "instance_uid")
LIVE_STATES = {"QUEUE", "PROCESSING", "SENDING"}  # counts derived on read while files move
ORDER = ("QUEUE", "PROCESSING", "DONEPROCESSING", "SENDING", "SENT", "EMPTY")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
DEFAULT_PAGE, MAX_PAGE = 200, 1000
MAX_BATCHES = 500
REFRESH_SECONDS = 5


class NotFound(LookupError):
    pass


class BadRequest(ValueError):
    pass


# ------------------------------------------------------------------------------------------ reads


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _iso(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_iso(v) for v in value]
    return value


def batch_view(db: Any, settings: Settings, batch_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """The public view of one batch document (allow-listed fields only; counts live while it moves)."""
    view: dict[str, Any] = {"id": batch_id}
    for key in BATCH_FIELDS:
        if key in data:
            view[key] = _iso(data[key])
    view.setdefault("status", "")
    view["has_error"] = bool(data.get("has_error"))
    view["errors"] = [
        {"file": str(e.get("file", "")), "reason": str(e.get("reason", ""))}
        for e in (data.get("errors") or [])
        if isinstance(e, dict)
    ]
    if view["status"] in LIVE_STATES or not isinstance(data.get("counts"), dict):
        view["counts"] = ds.file_counts(db, settings, batch_id)
    else:
        view["counts"] = {str(k): int(v) for k, v in data["counts"].items()}
    view["deliveries"] = [
        {k: _iso(d[k]) for k in DELIVERY_FIELDS if k in d}
        for d in (data.get("deliveries") or [])
        if isinstance(d, dict)
    ]
    if names_shown(settings):
        view["folder"] = str(data.get("folder") or "")
    if isinstance(data.get("manifest"), dict):
        view["manifest"] = {k: data["manifest"][k] for k in MANIFEST_FIELDS if k in data["manifest"]}
    if view["status"] in completion.OPEN:
        store = state.Store(db, settings.batches_collection, settings.files_collection)
        counts = tally.read(store.batch_ref(batch_id))
        now = datetime.now(UTC).timestamp()
        view["completion"] = completion.assess(settings.stable_age_seconds, data, counts, now).view()
    return view


def names_shown(settings: Settings) -> bool:
    return getattr(settings, "status_names", "shown") != "hidden"


def batches_of_folder(db: Any, settings: Settings, folder: str) -> list[dict[str, Any]]:
    """The batches whose staging folder is ``folder`` (a query on the batch documents' ``folder``)."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = db.collection(settings.batches_collection).where(filter=FieldFilter("folder", "==", folder))
    return [batch_view(db, settings, s.id, s.to_dict() or {}) for s in query.limit(MAX_BATCHES).stream()]


def list_batches(db: Any, settings: Settings, limit: int = MAX_BATCHES) -> list[dict[str, Any]]:
    """Every batch (up to ``limit``), newest first."""
    col = db.collection(settings.batches_collection)
    snaps = list(col.limit(limit).stream())
    views = [batch_view(db, settings, s.id, s.to_dict() or {}) for s in snaps]
    views.sort(key=lambda v: (str(v.get("created_at") or v.get("start_time") or ""), v["id"]), reverse=True)
    return views


def get_batch(db: Any, settings: Settings, batch_id: str) -> dict[str, Any]:
    if not TOKEN.match(batch_id):
        raise NotFound(batch_id)
    snap = db.collection(settings.batches_collection).document(batch_id).get()
    if not snap.exists:
        raise NotFound(batch_id)
    return batch_view(db, settings, batch_id, snap.to_dict() or {})


def list_files(
    db: Any,
    settings: Settings,
    batch_id: str,
    page_size: int = DEFAULT_PAGE,
    page_token: str | None = None,
    state: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the batch's files, ordered by key; the token is the last key of the page."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = db.collection(settings.files_collection).where(filter=FieldFilter("batch_id", "==", batch_id))
    if state:
        query = query.where(filter=FieldFilter("state", "==", state))
    query = query.order_by("__name__")
    if page_token:
        query = query.start_after({"__name__": page_token})
    fields = ["state", "reason", "name_hash", "ids", "clean_size"]
    shown = names_shown(settings)
    if shown:
        fields.append("object")
    snaps = list(query.select(fields).limit(page_size + 1).stream())
    more = len(snaps) > page_size
    snaps = snaps[:page_size]
    files = []
    for snap in snaps:
        data = snap.to_dict() or {}
        ids = data.get("ids") or {}
        entry: dict[str, Any] = {
            "name": str(data.get("name_hash") or snap.id),
            "key": snap.id,
            "state": data.get("state"),
            "reason": data.get("reason"),
        }
        if shown:
            entry["object"] = str(data.get("object") or "")
        for key in ID_FIELDS:
            if ids.get(key):
                entry[key] = str(ids[key])
        if data.get("clean_size") is not None:
            entry["size"] = data["clean_size"]
        files.append(entry)
    return files, (snaps[-1].id if more and snaps else None)


# ------------------------------------------------------------------------------------------ HTTP


def _route(path: str) -> tuple[str, str | None]:
    """('root'|'batches'|'batch'|'missing', batch id). Tolerates a leading function-name segment."""
    parts = [p for p in path.split("/") if p]
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


def _error(status: int, message: str) -> Response:
    headers = {"Allow": "GET, HEAD"} if status == 405 else None
    return json_response({"error": message, "status": status}, status, headers)


def _page_args(request: Request) -> tuple[int, str | None, str | None]:
    raw = request.args.get("page_size") or str(DEFAULT_PAGE)
    try:
        size = int(raw)
    except ValueError:
        raise BadRequest("page_size must be an integer") from None
    if not 1 <= size <= MAX_PAGE:
        raise BadRequest(f"page_size must be between 1 and {MAX_PAGE}")
    token = request.args.get("page_token") or None
    if token is not None and not TOKEN.match(token):
        raise BadRequest("malformed page_token")
    state = (request.args.get("state") or "").upper() or None
    if state is not None and state not in ds.FILE_STATES:
        raise BadRequest("state must be one of " + ", ".join(ds.FILE_STATES))
    return size, token, state


def handle(ctx: Context, request: Request) -> Response:
    """The HTTP entry (see the module doc)."""
    if request.method not in {"GET", "HEAD"}:
        return _error(405, f"method {request.method} not allowed: use GET")
    route, batch_id = _route(request.path)
    if route == "missing":
        return _error(404, "not found: use /batches or /batches/<id>")
    html_wanted = _wants_html(request)
    try:
        size, token, state = _page_args(request) if route == "batch" else (0, None, None)
    except BadRequest as exc:
        return _error(400, str(exc))
    db, settings = ctx.clients.firestore, ctx.settings
    try:
        folder = request.args.get("folder") if route == "batches" else None
        if folder is not None:
            return _folder(db, settings, folder, html_wanted, request)
        if route in {"root", "batches"}:
            batches = list_batches(db, settings)
            if html_wanted:
                return _html(render_dashboard(batches, _refresh(request)))
            return json_response({"batches": batches})
        assert batch_id is not None
        batch = get_batch(db, settings, batch_id)
        files, next_token = list_files(db, settings, batch_id, size, token, state)
        batch["files"], batch["next_page_token"] = files, next_token
        if html_wanted:
            return _html(render_batch(batch, _refresh(request), size, state))
        return json_response(batch)
    except NotFound:
        return _error(404, "unknown batch")
    except Exception as exc:  # the state store is down or slow: a JSON answer, never an HTML 500
        from sendit.process import is_transient

        log.error("status: state store error", extra={"error": type(exc).__name__})
        if not is_transient(exc):
            raise
        return _error(503, "batch state is unavailable right now; try again")


def _folder(db: Any, settings: Settings, folder: str, html_wanted: bool, request: Request) -> Response:
    """``?folder=NAME``: the folder is never logged and never echoed in an error."""
    if not folder or len(folder) > 1024:
        return _error(400, "folder must be 1 to 1024 characters")
    batches = batches_of_folder(db, settings, folder)
    log.info("status: folder lookup", extra={"found": len(batches)})
    if not batches:
        return _error(404, "no batch for that folder")
    if html_wanted:
        return _html(render_dashboard(batches, _refresh(request)))
    body: dict[str, Any] = {"batches": batches}
    if names_shown(settings):
        body = {"folder": folder, **body}
    return json_response(body)


def _refresh(request: Request) -> int:
    try:
        return max(0, min(3600, int(request.args.get("refresh", REFRESH_SECONDS))))
    except ValueError:
        return REFRESH_SECONDS


def _html(text: str) -> Response:
    from flask import Response

    response = Response(text, status=200, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


# ------------------------------------------------------------------------------------------ HTML


@cache
def _css() -> str:
    return resources.files("sendit").joinpath("static/dashboard.css").read_text(encoding="utf-8")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, refresh: int) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{_e(title)}</title><style>{_css()}</style></head>"
        f"<body><header><h1>{_e(title)}</h1>"
        f'<p class="note">{"auto-refresh every " + str(refresh) + " s" if refresh else "auto-refresh off"}'
        "</p></header><main>"
        f"{body}</main></body></html>\n"
    )


def _done(counts: dict[str, int]) -> tuple[int, int]:
    total = int(counts.get("total", 0))
    finished = sum(int(counts.get(s, 0)) for s in ("ANONYMIZED", "SKIPPED", "FAILED", "SENT"))
    return finished, total


def _bar(done: int, total: int) -> str:
    pct = round(100 * done / total) if total else 0
    return (
        f'<span class="bar" role="progressbar" aria-valuenow="{pct}" aria-valuemin="0" aria-valuemax="100">'
        f'<span style="width:{pct}%"></span></span> <span class="pct">{done}/{total}</span>'
    )


def _counts_cells(counts: dict[str, int]) -> str:
    return "".join(
        f'<td class="num" data-state="{s}">{int(counts.get(s, 0))}</td>'
        for s in ("ANONYMIZED", "SKIPPED", "FAILED", "SENT")
    )


def render_dashboard(batches: list[dict[str, Any]], refresh: int = REFRESH_SECONDS) -> str:
    """The batch overview: one row per batch with its status, progress and counts."""
    by_status = {s: sum(1 for b in batches if b.get("status") == s) for s in ORDER}
    summary = " · ".join(f"{_e(s)}: {n}" for s, n in by_status.items() if n) or "no batches yet"
    rows = []
    folders = any("folder" in b for b in batches)  # absent with SENDIT_STATUS_NAMES=hidden
    for b in batches:
        counts = b.get("counts") or {}
        done, total = _done(counts)
        last = (b.get("deliveries") or [{}])[-1]
        rows.append(
            f'<tr id="batch-{_e(b["id"])}">'
            f'<td class="id"><a href="batches/{quote(b["id"])}">{_e(b["id"])}</a></td>'
            + (f'<td class="folder">{_e(b.get("folder"))}</td>' if folders else "")
            + f'<td><span class="status s-{_e(b.get("status"))}">{_e(b.get("status"))}</span>'
            f"{_waiting(b)}</td>"
            f"<td>{_bar(done, total)}</td>{_counts_cells(counts)}"
            f'<td class="num">{_e(_size(b.get("size_bytes")))}</td>'
            f'<td class="num">{_e(_seconds(b.get("elapsed_seconds")))}</td>'
            f"<td>{_e(_when(b.get('sent_at')))}</td>"
            f'<td class="num">{_e(last.get("rows", ""))}</td>'
            f'<td class="{"err" if b.get("has_error") else ""}">'
            f"{len(b.get('errors') or []) if b.get('has_error') else ''}</td></tr>"
        )
    table = (
        '<table id="batches"><thead><tr><th>batch</th>'
        + ("<th>folder</th>" if folders else "")
        + "<th>status</th><th>progress</th>"
        "<th>anonymized</th><th>skipped</th><th>failed</th><th>sent</th><th>size</th>"
        "<th>processing</th><th>sent at</th><th>rows</th><th>errors</th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan="13" class="empty">no batches yet</td></tr>')
        + "</tbody></table>"
    )
    return _page("sendit batches", f'<p class="summary">{summary}</p>{table}', refresh)


def _waiting(batch: dict[str, Any]) -> str:
    waiting = (batch.get("completion") or {}).get("waiting_for")
    return f' <span class="waiting">waiting for {_e(waiting)}</span>' if waiting else ""


def render_batch(batch: dict[str, Any], refresh: int, page_size: int, state: str | None) -> str:
    """One batch: its figures, deliveries, errors and a page of files (keys, states, pseudonyms)."""
    counts = batch.get("counts") or {}
    done, total = _done(counts)
    facts = [("folder", _e(batch["folder"]))] if "folder" in batch else []
    facts += [
        (
            "status",
            f'<span class="status s-{_e(batch.get("status"))}">{_e(batch.get("status"))}</span>'
            + _waiting(batch),
        ),
        ("progress", _bar(done, total)),
        ("files", " ".join(f"{_e(k.lower())}={int(v)}" for k, v in counts.items() if k != "total")),
        ("size", _e(_size(batch.get("size_bytes")))),
        ("processing time", _e(_seconds(batch.get("elapsed_seconds")))),
        ("studies", _e(batch.get("study_uids", ""))),
        ("sent at", _e(_when(batch.get("sent_at")))),
        ("send time", _e(_seconds(batch.get("send_seconds")))),
    ]
    objects = any("object" in f for f in batch.get("files") or [])  # absent when names are hidden
    body = ['<p><a href="../">all batches</a></p><dl class="facts">']
    body += [f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts]
    body.append("</dl>")
    if batch.get("deliveries"):
        body.append(
            '<h2>deliveries</h2><table id="deliveries"><thead><tr><th>at</th><th>files</th><th>rows</th>'
            "<th>objects</th><th>bytes</th><th>layout</th><th>cleaned</th></tr></thead><tbody>"
        )
        for d in batch["deliveries"]:
            body.append(
                f"<tr><td>{_e(_when(d.get('at')))}</td><td class=num>{_e(d.get('files'))}</td>"
                f"<td class=num>{_e(d.get('rows'))}</td><td class=num>{_e(d.get('objects'))}</td>"
                f"<td class=num>{_e(_size(d.get('bytes')))}</td><td>{_e(d.get('layout'))}</td>"
                f"<td class=num>{_e(d.get('removed'))}</td></tr>"
            )
        body.append("</tbody></table>")
    if batch.get("errors"):
        body.append(
            '<h2>errors</h2><table id="errors"><thead><tr><th>file</th><th>reason</th></tr></thead><tbody>'
        )
        body += [f"<tr><td>{_e(e['file'])}</td><td>{_e(e['reason'])}</td></tr>" for e in batch["errors"]]
        body.append("</tbody></table>")
    body.append(
        '<h2>files</h2><table id="files"><thead><tr><th>file</th>'
        + ("<th>object</th>" if objects else "")
        + "<th>state</th><th>reason</th>"
        "<th>patient</th><th>study</th><th>series</th><th>instance</th></tr></thead><tbody>"
    )
    for f in batch.get("files") or []:
        body.append(
            f'<tr><td class="id">{_e(f["name"])}</td>'
            + (f'<td class="object">{_e(f.get("object"))}</td>' if objects else "")
            + f'<td><span class="state t-{_e(f["state"])}">'
            f"{_e(f['state'])}</span></td><td>{_e(f.get('reason'))}</td>"
            + "".join(f'<td class="uid">{_e(f.get(k))}</td>' for k in ID_FIELDS)
            + "</tr>"
        )
    body.append("</tbody></table>")
    if batch.get("next_page_token"):
        params = {"page_token": batch["next_page_token"], "page_size": page_size}
        if state:
            params["state"] = state
        body.append(f'<p><a class="next" href="?{_e(urlencode(params))}">next page</a></p>')
    return _page(f"sendit batch {batch['id']}", "".join(body), refresh)


def _size(value: Any) -> str:
    if value in (None, ""):
        return ""
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _seconds(value: Any) -> str:
    if value in (None, ""):
        return ""
    return f"{float(value):.1f} s"


def _when(value: Any) -> str:
    if not value:
        return ""
    text = str(value)
    return text[:19].replace("T", " ") + " UTC" if len(text) >= 19 else text
