"""Read-only views for the status API: allow-listed fields only.

Ids, pseudonyms, states, counts, sizes, times and reasons leave these views, and - unless ``names`` is
False (``SENDIT_STATUS_NAMES=hidden``) - each batch's ``folder`` and each file's ``object`` name, for the
staging-side operators who uploaded them. The staging bucket never does. A file's ``name`` is its hashed
object name either way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sendit import naming
from sendit.errors import UnknownBatch
from sendit.store.base import Store, eq
from sendit.store.batches import batch_counts
from sendit.store.vocabulary import LIVE

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
    "first_clean_at",
)
MANIFEST_FIELDS = ("count", "bytes", "created", "tool_version")
# More fields for a batch view, from the batch id and document (with the view's counts, derived on read
# while the batch moves): the status API adds ``completion`` and the expiry (``sendit.expiry``).
Extra = Callable[[str, dict[str, Any]], dict[str, Any]]
DELIVERY_FIELDS = (
    "delivery_id",
    "at",
    "files",
    "rows",
    "objects",
    "bytes",
    "layout",
    "targets",
    "objects_written",
    "dicomweb",
    "removed",
    "kept",
    "errors",
    "send_seconds",
    "collection",
    "studies",
    "unattributed",
)
# A delivery record's ``dicomweb`` part (delivery/dicomweb_target.record).
DICOMWEB_FIELDS = ("url", "stored", "already_present", "failed", "studies", "study_urls")
ID_FIELDS = ("patient_id", "study_uid", "series_uid", "instance_uid")
MAX_BATCHES = 500


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _iso(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_iso(v) for v in value]
    return value


def batch_view(
    store: Store, *, batch_id: str, data: dict[str, Any], names: bool = True, extra: Extra | None = None
) -> dict[str, Any]:
    """The public view of one batch document (counts derived on read while it moves)."""
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
    if view["status"] in LIVE or not isinstance(data.get("counts"), dict):
        view["counts"] = batch_counts(store, batch=batch_id)
    else:
        view["counts"] = {str(k): int(v) for k, v in data["counts"].items()}
    view["deliveries"] = [_delivery_view(d) for d in (data.get("deliveries") or []) if isinstance(d, dict)]
    if names:
        view["folder"] = str(data.get("folder") or "")
    if isinstance(data.get("manifest"), dict):
        view["manifest"] = {k: data["manifest"][k] for k in MANIFEST_FIELDS if k in data["manifest"]}
    if extra is not None:
        view.update(extra(batch_id, {**data, "counts": view["counts"]}))
    return view


def _delivery_view(record: dict[str, Any]) -> dict[str, Any]:
    view = {k: _iso(record[k]) for k in DELIVERY_FIELDS if k in record}
    if isinstance(view.get("dicomweb"), dict):
        view["dicomweb"] = {k: view["dicomweb"][k] for k in DICOMWEB_FIELDS if k in view["dicomweb"]}
    return view


def public_batches(
    store: Store, *, limit: int = MAX_BATCHES, names: bool = True, extra: Extra | None = None
) -> list[dict[str, Any]]:
    """Every batch (up to ``limit``), newest first."""
    snaps = list(store.db.collection(store.batches).limit(limit).stream())
    views = [
        batch_view(store, batch_id=s.id, data=s.to_dict() or {}, names=names, extra=extra) for s in snaps
    ]
    views.sort(key=lambda v: (str(v.get("created_at") or v.get("start_time") or ""), v["id"]), reverse=True)
    return views


def batches_of_folder(
    store: Store, *, folder: str, names: bool = True, extra: Extra | None = None
) -> list[dict[str, Any]]:
    """The batches whose staging folder is ``folder`` (a query on the batch documents' ``folder``)."""
    query = store.db.collection(store.batches).where(filter=eq("folder", folder)).limit(MAX_BATCHES)
    return [
        batch_view(store, batch_id=s.id, data=s.to_dict() or {}, names=names, extra=extra)
        for s in query.stream()
    ]


def public_batch(
    store: Store, *, batch_id: str, names: bool = True, extra: Extra | None = None
) -> dict[str, Any]:
    """One batch's view. Raises ``UnknownBatch``."""
    if not naming.is_token(batch_id):
        raise UnknownBatch(batch_id)
    snap = store.batch_ref(batch_id).get()
    if not snap.exists:
        raise UnknownBatch(batch_id)
    return batch_view(store, batch_id=batch_id, data=snap.to_dict() or {}, names=names, extra=extra)


def _file_view(snap: Any, names: bool) -> dict[str, Any]:
    data = snap.to_dict() or {}
    ids = data.get("ids") or {}
    entry: dict[str, Any] = {
        "name": str(data.get("name_hash") or snap.id),
        "key": snap.id,
        "state": data.get("state"),
        "reason": data.get("reason"),
    }
    if names:
        entry["object"] = str(data.get("object") or "")
    for key in ID_FIELDS:
        if ids.get(key):
            entry[key] = str(ids[key])
    if data.get("clean_size") is not None:
        entry["size"] = data["clean_size"]
    if data.get("dicomweb"):
        entry["dicomweb"] = str(data["dicomweb"])  # stored | already_present
    return entry


def public_files(
    store: Store,
    *,
    batch_id: str,
    page_size: int,
    page_token: str | None = None,
    state: str | None = None,
    names: bool = True,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the batch's files, ordered by key; the token is the last key of the page."""
    query: Any = store.files_of(batch_id)
    if state:
        query = query.where(filter=eq("state", state))
    query = query.order_by("__name__")
    if page_token:
        query = query.start_after({"__name__": page_token})
    fields = ["state", "reason", "name_hash", "ids", "clean_size", "dicomweb", *(["object"] if names else [])]
    snaps = list(query.select(fields).limit(page_size + 1).stream())
    more = len(snaps) > page_size
    snaps = snaps[:page_size]
    return [_file_view(s, names) for s in snaps], (snaps[-1].id if more and snaps else None)
