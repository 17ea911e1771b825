"""``<FOLDER>/sendit-manifest.json`` on its batch: the seal (what the anonymize stage does with it).

The manifest is never de-identified and never counts as a file of its batch. It is read (by generation),
validated (``sendit.manifest``), and recorded on the batch: the listed objects' file keys (from name and
generation, as ``naming.file_key`` computes them) in part documents (``sendit.store.manifests``), the
summary under ``manifest`` and the time under ``manifest_at``. Then completion is evaluated at once
(``sendit.completion``): a manifest that arrives last (the normal case) completes its batch here.

An older manifest (lower generation) arriving after a newer one changes nothing; a redelivery rewrites the
same fields. A manifest that cannot be read or trusted is recorded as ``manifest_error`` (a fixed text that
never names an object) and the batch stays on the stable-age rule.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from sendit import completion, naming
from sendit.errors import ManifestError, RetryableError
from sendit.store import batches, manifests
from sendit.store.vocabulary import BatchState

if TYPE_CHECKING:
    from sendit.app.context import Context
    from sendit.events import ObjectFinalized
    from sendit.manifest import Manifest

log = logging.getLogger(__name__)
_RETRIES = 5


def is_seal(name: str) -> bool:
    from sendit.manifest import is_manifest

    return is_manifest(name)


def handle_manifest(ctx: Context, obj: ObjectFinalized) -> str | None:
    """Record the manifest ``obj`` on its batch and evaluate completion; returns the status written."""
    folder = naming.batch_folder(obj.name)
    batch = naming.batch_id(ctx.settings.secret_key, obj.bucket, folder)
    where = {"event_id": obj.event_id, "batch_id": batch, "generation": obj.generation}
    try:
        manifest = _read(ctx, obj)
        if manifest is None:
            log.warning("manifest object gone before it was read, acked", extra=where)
            return None
        if manifest.folder != folder:
            raise ManifestError("manifest folder is not the folder it was uploaded to")
    except ManifestError as exc:
        record_error(ctx, batch, obj, folder, str(exc))
        log.warning("manifest not usable: %s", exc, extra={**where, "event": "manifest_error"})
        return None
    recorded = record(ctx, batch, obj, folder, manifest)
    status = completion.evaluate(ctx, batch) if recorded else None
    log.info(
        "manifest recorded" if recorded else "older manifest ignored",
        extra={
            **where,
            "event": "manifest",
            "listed": manifest.count,
            "bytes": manifest.total_bytes,
            "batch_status": status,
        },
    )
    return status


def _read(ctx: Context, obj: ObjectFinalized) -> Manifest | None:
    from google.api_core.exceptions import NotFound

    from sendit.manifest import MAX_MANIFEST_BYTES, Manifest

    if obj.size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    blob = ctx.clients.storage.bucket(obj.bucket).blob(obj.name, generation=int(obj.generation))
    try:
        raw = blob.download_as_bytes()
    except NotFound:
        return None
    return Manifest.from_json(raw)


def entries(bucket: str, manifest: Manifest) -> list[dict[str, Any]]:
    return [
        {
            "key": naming.file_key(bucket, e.name, e.generation),
            "name": e.name,
            "size": e.size,
            "md5": e.md5,
            "generation": e.generation,
        }
        for e in manifest.objects
    ]


def record(ctx: Context, batch: str, obj: ObjectFinalized, folder: str, manifest: Manifest) -> bool:
    """Write the listing, then the batch's ``manifest`` fields (preconditioned); False for an older one."""
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound
    from google.cloud import firestore

    store = ctx.store
    ref = store.batch_ref(batch)
    listing = entries(obj.bucket, manifest)
    parts = manifests.write_listing(store, batch=batch, generation=obj.generation, entries=listing)
    summary = {
        "generation": obj.generation,
        "count": manifest.count,
        "bytes": manifest.total_bytes,
        "parts": parts,
        "created": manifest.created,
        "tool_version": manifest.tool_version,
    }
    for _ in range(_RETRIES):
        snap = ref.get()
        if not snap.exists:
            with contextlib.suppress(AlreadyExists):
                ref.create(batches.new_batch_doc(batch, obj.bucket, folder))
            continue
        data = snap.to_dict() or {}
        known = data.get("manifest") or {}
        if isinstance(known, dict) and int(known.get("generation") or 0) > int(obj.generation):
            return False
        update: dict[str, Any] = {
            "manifest": summary,
            "manifest_error": firestore.DELETE_FIELD,
            "updated_at": firestore.SERVER_TIMESTAMP,
        }
        if not isinstance(known, dict) or known.get("generation") != obj.generation:
            update["manifest_at"] = firestore.SERVER_TIMESTAMP
        if data.get("status") in (BatchState.DONEPROCESSING, BatchState.EMPTY):
            update["status"] = BatchState.PROCESSING  # judged again under the sealed rule
        try:
            ref.update(update, option=store.precondition(snap.update_time))
            return True
        except (FailedPrecondition, NotFound):
            continue
    raise RetryableError("manifest not recorded: the batch kept changing", step="manifest")


def record_error(ctx: Context, batch: str, obj: ObjectFinalized, folder: str, message: str) -> None:
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import firestore

    ref = ctx.store.batch_ref(batch)
    with contextlib.suppress(AlreadyExists):
        ref.create(batches.new_batch_doc(batch, obj.bucket, folder))
    ref.update({"manifest_error": message, "updated_at": firestore.SERVER_TIMESTAMP})
