"""Helpers of the pipeline tests: upload, wait for a batch, read its documents and clean objects (names
through ``sendit.naming``, documents through ``sendit.store``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sendit import naming
from sendit.store import batches, files
from sendit.store.base import Store
from support.polling import wait_for as wait_for  # re-exported for the tests that import it from here


def batch_of(settings: Any, folder: str) -> str:
    return naming.batch_id(settings.secret_key, settings.staging_bucket, folder)


def upload_tree(clients: Any, bucket: str, root: Path, prefix: str = "") -> list[str]:
    """Upload every file under root as prefix + relative path (through the GCS emulator)."""
    names = []
    target = clients.storage.bucket(bucket)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = prefix + path.relative_to(root).as_posix()
        target.blob(name).upload_from_filename(str(path))
        names.append(name)
    return names


def wait_batch(
    clients: Any, batch: str, statuses: set[str], total: int, timeout: float = 60
) -> dict[str, Any]:
    """Wait until the batch has `total` terminal files and one of `statuses`."""

    def done() -> dict[str, Any] | None:
        doc = batches.get_batch(Store.of(clients.firestore), batch=batch)
        if not doc or doc.get("status") not in statuses:
            return None
        counts = doc.get("counts") or {}
        return doc if counts.get("total") == total and counts.get("RECEIVED") == 0 else None

    return wait_for(done, timeout, what=f"batch {batch} in {sorted(statuses)} with {total} files")


def batch_doc(clients: Any, batch: str) -> dict[str, Any]:
    """The stored batch document ({} when absent)."""
    return batches.get_batch(Store.of(clients.firestore), batch=batch) or {}


def files_of(clients: Any, batch: str) -> list[dict[str, Any]]:
    return files.files_of_batch(Store.of(clients.firestore), batch=batch)


def clean_objects(clients: Any, bucket: str, batch: str) -> list[Any]:
    return list(clients.storage.list_blobs(bucket, prefix=f"{batch}/"))
