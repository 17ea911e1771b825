"""Every keyed or derived name, defined once: the pipeline, the status API, the tests and the CLI use these.

- ``file_key``: one uploaded object generation (a re-upload is a new file, a duplicate notification is not);
- ``batch_folder`` / ``batch_id``: the top-level folder of an upload, and its keyed id (an accession
  number used as folder name never shows outside the staging side);
- ``name_hash``: a short unkeyed hash of an object name, for logs and the status API;
- ``clean_object_name``: a clean file in the processing bucket; ``instance_object_name`` /
  ``archive_object_name``: a delivered file or study archive in the destination bucket;
- ``insert_id``: the BigQuery insert id of one image of one batch;
- ``dicomweb_study_url`` / ``dicomweb_instance_url``: a delivered study or instance on the DICOMweb server.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from sendit import logs

# A batch id or a file key as it appears in a URL or a message: letters, digits, '-' and '_'.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def is_token(value: str) -> bool:
    """Whether ``value`` is shaped like a batch id or a file key (safe in a path, a message, a query)."""
    return bool(_TOKEN.match(value))


def file_key(bucket: str, name: str, generation: str | int) -> str:
    """``sha256("<bucket>/<object>#<generation>")[:32]``: a re-upload is a new file, a duplicate is not."""
    return hashlib.sha256(f"{bucket}/{name}#{generation}".encode()).hexdigest()[:32]


def batch_folder(name: str) -> str:
    """The top-level folder of an object name (``""`` for an object at the bucket root)."""
    return name.split("/", 1)[0] if "/" in name else ""


def batch_id(secret_key: bytes, bucket: str, folder: str) -> str:
    """``keyed_digest(key, "<bucket>/<folder>", 16)``: a folder named after an accession never shows."""
    from sendit.deid.identity import keyed_digest

    return keyed_digest(secret_key, f"{bucket}/{folder}", 16)


def name_hash(name: str) -> str:
    """Short unkeyed hash of an object name, for logs and the status API."""
    return logs.digest(name, 12)


def clean_object_name(batch: str, study_uid: str, series_uid: str, instance_uid: str) -> str:
    """Deterministic name of a clean file in the processing bucket (pseudonyms only)."""
    return f"{batch}/{study_uid}/{series_uid}/{instance_uid}.dcm"


def safe(value: str) -> str:
    """``value`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (never empty)."""
    return _UNSAFE.sub("_", value) or "_"


def _entity_prefix(collection: str, ids: Mapping[str, str]) -> str:
    return f"Collection/{safe(collection)}/Entity/{safe(ids['patient_id'])}"


def instance_object_name(collection: str, ids: Mapping[str, str]) -> str:
    """Destination name of one instance (layout ``instance``)."""
    return (
        f"{_entity_prefix(collection, ids)}/{safe(ids['study_uid'])}/"
        f"{safe(ids['series_uid'])}/{safe(ids['instance_uid'])}.dcm"
    )


def archive_object_name(collection: str, ids: Mapping[str, str], suffix: str = "") -> str:
    """Destination name of one study archive (layout ``tar``); later deliveries add a suffix."""
    tail = f".{safe(suffix)}" if suffix else ""
    return f"{_entity_prefix(collection, ids)}/{safe(ids['study_uid'])}{tail}.tar.gz"


def archive_member_name(ids: Mapping[str, str]) -> str:
    """Name of one instance inside a study archive."""
    return f"{safe(ids['series_uid'])}/{safe(ids['instance_uid'])}.dcm"


def insert_id(batch: str, instance_uid: str) -> str:
    """A stable BigQuery insert id for one image of one batch (the same on every retry)."""
    return hashlib.sha256(f"{batch}/{instance_uid}".encode()).hexdigest()[:32]


def study_insert_id(delivery_id: str, study_uid: str) -> str:
    """A stable BigQuery insert id for one study row of one delivery (the same on every retry)."""
    return hashlib.sha256(f"study/{delivery_id}/{study_uid}".encode()).hexdigest()[:32]


def gs_uri(bucket: str, name: str) -> str:
    return f"gs://{bucket}/{name}"


def dicomweb_study_url(root: str, study_uid: str) -> str:
    """A study on the DICOMweb server (``SENDIT_DICOMWEB_URL`` is the service root): QIDO/WADO-RS path."""
    return f"{root.rstrip('/')}/studies/{study_uid}"


def dicomweb_instance_url(root: str, ids: Mapping[str, str]) -> str:
    """One instance on the DICOMweb server (its WADO-RS URL), from its pseudonymous UIDs."""
    study = dicomweb_study_url(root, ids["study_uid"])
    return f"{study}/series/{ids['series_uid']}/instances/{ids['instance_uid']}"


def split_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/name`` -> (bucket, name); ("", "") for anything else."""
    if not uri.startswith("gs://"):
        return "", ""
    bucket, _, name = uri[5:].partition("/")
    return bucket, name
