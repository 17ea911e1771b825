"""After a delivery: remove the processing and staging objects of files whose destination verifies.

A file's objects go only when its destination object exists with the MD5 recorded at delivery (or, when
the DICOMweb server is the only target, when the server holds its instance: ``held``). Failures are
logged and keep the objects; they never fail the delivery, which already succeeded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sendit import naming
from sendit.delivery.objects import WORKERS, to_int
from sendit.store.vocabulary import FileState

log = logging.getLogger("sendit.deliver")


def cleanup(storage: Any, files: list[dict[str, Any]], held: Collection[str] = ()) -> tuple[int, int]:
    """Remove the objects of delivered ``files`` (file documents) that verify; (files cleaned, kept).

    ``held``: keys of files verified elsewhere (their instance is on the DICOMweb server)."""
    checked: dict[str, str | None] = {}

    def destination_md5(uri: str) -> str | None:
        if uri not in checked:
            bucket, name = naming.split_gs_uri(uri)
            blob = storage.bucket(bucket).get_blob(name) if bucket and name else None
            checked[uri] = blob.md5_hash if blob is not None else None
        return checked[uri]

    # Verify first (sequentially per archive, cached), then delete in parallel.
    verified = []
    kept = 0
    for doc in files:
        uri, md5 = doc.get("sent_uri"), doc.get("sent_md5")
        at_destination = bool(uri and md5 and destination_md5(str(uri)) == md5)
        if doc.get("state") == FileState.SENT and (doc.get("key") in held or at_destination):
            verified.append(doc)
        else:
            kept += 1
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        removed = sum(pool.map(lambda doc: _remove(storage, doc), verified))
    return removed, kept + len(verified) - removed


def _remove(storage: Any, doc: dict[str, Any]) -> bool:
    from google.api_core.exceptions import GoogleAPICallError, NotFound

    try:
        bucket, name = naming.split_gs_uri(str(doc.get("clean_uri") or ""))
        if bucket and name:
            with contextlib.suppress(NotFound):
                storage.bucket(bucket).blob(name).delete()
        if doc.get("bucket") and doc.get("object"):
            with contextlib.suppress(NotFound):
                storage.bucket(str(doc["bucket"])).blob(str(doc["object"])).delete(
                    if_generation_match=to_int(doc.get("generation"))
                )
        return True
    except GoogleAPICallError as exc:
        log.warning(
            "deliver: cleanup kept a file's objects",
            extra={"file": doc.get("key"), "error": type(exc).__name__},
        )
        return False
