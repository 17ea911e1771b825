"""Destination objects: copy each clean instance (layout ``instance``) or pack one deterministic
``.tar.gz`` per study (layout ``tar``), verified by MD5.

Names are deterministic (``sendit.naming``): an object already there with the right MD5 is not written
again, and an archive has the same members, bytes and MD5 on every retry.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import tarfile
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from sendit import naming
from sendit.errors import VerifyError

WORKERS = 8  # parallel object copies / deletions per delivery
_SPOOL_ARCHIVE = 64 * 1024 * 1024
_SPOOL_MEMBER = 16 * 1024 * 1024


@dataclass
class Item:
    """One file to deliver: its pseudonyms, its clean object, its engine row, and where it went
    (``uri``, ``md5``, ``size``: the bucket object, or the DICOMweb instance without the bucket target;
    ``dicomweb``: ``stored`` or ``already_present`` once the DICOMweb target has it)."""

    key: str
    ids: dict[str, str]
    clean_bucket: str
    clean_name: str
    clean_md5: str | None
    clean_size: int | None
    row: dict[str, Any]
    uri: str = ""
    md5: str | None = None
    size: int | None = None
    dicomweb: str | None = None


@dataclass
class Written:
    """What writing a delivery's objects did: written, reused, and items whose clean object is gone."""

    written: int = 0
    reused: int = 0
    missing: list[Item] = field(default_factory=list)


def copy_instances(storage: Any, *, destination: str, collection: str, items: list[Item]) -> Written:
    """Copy every item's clean object to its destination name (in parallel)."""
    target = storage.bucket(destination)

    def copy(item: Item) -> tuple[Item, str]:
        name = naming.instance_object_name(collection, item.ids)
        existing = target.get_blob(name)
        expected = item.clean_md5
        if existing is not None and expected and existing.md5_hash == expected:
            outcome, blob = "reused", existing
        else:
            source_bucket = storage.bucket(item.clean_bucket)
            source = source_bucket.get_blob(item.clean_name)
            if source is None:
                if existing is None or expected:
                    return item, "missing"
                outcome, blob = "reused", existing
            else:
                expected = expected or source.md5_hash
                blob = source_bucket.copy_blob(source, target, name)
                outcome = "written"
        if expected and blob.md5_hash != expected:
            raise VerifyError("destination object does not match the clean object")
        item.uri, item.md5, item.size = naming.gs_uri(destination, name), blob.md5_hash, to_int(blob.size)
        return item, outcome

    result = Written()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for item, outcome in pool.map(copy, items):
            if outcome == "written":
                result.written += 1
            elif outcome == "reused":
                result.reused += 1
            else:
                result.missing.append(item)
    return result


def write_archives(
    storage: Any, *, destination: str, collection: str, items: list[Item], suffix: str = ""
) -> Written:
    """One deterministic ``.tar.gz`` per study; ``suffix`` names a follow-up delivery's archives."""
    target = storage.bucket(destination)
    studies: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for item in items:
        studies[(item.ids["patient_id"], item.ids["study_uid"])].append(item)
    result = Written()
    for members in studies.values():
        members.sort(key=lambda i: (i.ids["series_uid"], i.ids["instance_uid"]))
        name = naming.archive_object_name(collection, members[0].ids, suffix)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_ARCHIVE) as spool:
            packed, missing = _pack(storage, members, spool)
            result.missing += missing
            if not packed:
                continue
            md5, size = _md5_and_size(spool)
            if _upload_archive(target, name, spool, md5, size):
                result.written += 1
            else:
                result.reused += 1
        for item in packed:
            item.uri, item.md5, item.size = naming.gs_uri(destination, name), md5, size
    return result


def _md5_and_size(spool: IO[bytes]) -> tuple[str, int]:
    spool.seek(0)
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    for chunk in iter(lambda: spool.read(1024 * 1024), b""):
        digest.update(chunk)
        size += len(chunk)
    return base64.b64encode(digest.digest()).decode(), size


def _upload_archive(target: Any, name: str, spool: IO[bytes], md5: str, size: int) -> bool:
    """Upload unless an object with that MD5 is there already; returns whether it wrote."""
    existing = target.get_blob(name)
    if existing is not None and existing.md5_hash == md5:
        return False
    blob = target.blob(name)
    spool.seek(0)
    blob.upload_from_file(spool, size=size, content_type="application/gzip", checksum="md5")
    blob.reload()
    if blob.md5_hash != md5:
        raise VerifyError("destination archive does not match what was written")
    return True


def _pack(storage: Any, members: list[Item], out: IO[bytes]) -> tuple[list[Item], list[Item]]:
    packed: list[Item] = []
    missing: list[Item] = []
    with (
        gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for item in members:
            blob = storage.bucket(item.clean_bucket).get_blob(item.clean_name)
            if blob is None:
                missing.append(item)
                continue
            with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMBER) as data:
                blob.download_to_file(data)
                info = tarfile.TarInfo(naming.archive_member_name(item.ids))
                info.size = data.tell()
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
                data.seek(0)
                tar.addfile(info, data)
            packed.append(item)
    return packed, missing


def to_int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
