"""Cloud Storage helpers for the file step: download to a temp file, upload a clean file.

Objects are streamed to and from files (in the function's /tmp, which is memory): the bytes are held once,
never once as a download buffer and again as a parsed copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sendit.errors import ObjectGone, TooLarge

if TYPE_CHECKING:
    from google.cloud import storage

DICOM_CONTENT_TYPE = "application/dicom"
MAX_OBJECT_BYTES = 2 * 1024**3  # above this a file is FAILED "object too large" (memory-backed /tmp)


def download(
    client: storage.Client,
    bucket: str,
    name: str,
    generation: str | int | None,
    dest: Path,
    size: int | None = None,
    max_bytes: int = MAX_OBJECT_BYTES,
) -> int:
    """Stream ``gs://bucket/name#generation`` into ``dest``; return the byte count.

    ``size`` (from the notification) is checked against ``max_bytes`` before anything is fetched.
    Raises ``ObjectGone`` on 404 and ``TooLarge`` beyond ``max_bytes``; other API errors propagate.
    """
    from google.api_core.exceptions import NotFound

    gen = int(generation) if generation not in (None, "") else None
    blob = client.bucket(bucket).blob(name, generation=gen)
    if size is not None and size > max_bytes:
        raise TooLarge()
    try:
        blob.download_to_filename(str(dest))  # streamed to the file, not buffered in memory
    except NotFound as exc:
        raise ObjectGone() from exc
    written = dest.stat().st_size
    if written > max_bytes:
        raise TooLarge()
    return written


def upload(
    client: storage.Client,
    bucket: str,
    name: str,
    source: Path,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Upload ``source`` to ``gs://bucket/name`` (overwriting: names are deterministic); uri/size/md5."""
    blob = client.bucket(bucket).blob(name)
    if metadata:
        blob.metadata = metadata
    blob.upload_from_filename(str(source), content_type=DICOM_CONTENT_TYPE)
    return {"uri": f"gs://{bucket}/{name}", "size": blob.size, "md5": blob.md5_hash}


def exists(client: storage.Client, bucket: str, name: str, generation: str | int | None) -> bool:
    """Whether ``gs://bucket/name#generation`` is still there (one metadata read; a reprocess needs it)."""
    gen = int(generation) if generation not in (None, "") else None
    return client.bucket(bucket).get_blob(name, generation=gen) is not None
