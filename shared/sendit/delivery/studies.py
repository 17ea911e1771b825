"""The study table: one BigQuery row per delivered study and delivery (``schema/study.json``).

Built from what the deliver stage already holds, the batch's file documents after this delivery marked
its files SENT: the SENT files of the delivery (their pseudonyms, engine rows and destination), and the
SKIPPED and FAILED files of the batch (their reasons). Nothing is read from the images again.

A SKIPPED or FAILED file that carries a study pseudonym (one that failed at delivery) counts for that
study. A file without one (filters and read errors come before pseudonyms) counts for the batch's study
when the delivery holds exactly one study, and otherwise in ``unattributed`` on the delivery record: it
stays visible in the batch status and is never added to a study it may not belong to.

Rows carry an insert id that is a function of (delivery, study) (``naming.study_insert_id``), and
delivery asks first which studies of the delivery are in the table (the emulator does not deduplicate by
insert id), so a retry adds nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sendit import naming
from sendit.delivery.objects import to_int
from sendit.delivery.rows import CALL_TIMEOUT, _retry
from sendit.store.vocabulary import FileState

if TYPE_CHECKING:
    from google.cloud import bigquery

STUDY_DESCRIPTION, SERIES_DESCRIPTION = "00081030", "0008103E"  # keys of the header JSON (PS3.18 F)


@dataclass(frozen=True)
class Where:
    """Where a delivery went: the destination bucket (None without the bucket target), the layout and the
    DICOMweb root when that target is on."""

    bucket: str | None
    collection: str
    layout: str  # instance | tar
    dicomweb_url: str | None = None


@dataclass
class _Study:
    ids: dict[str, str]
    files: list[Mapping[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)


def study_rows(
    docs: Iterable[Mapping[str, Any]], *, batch_id: str, delivery_id: str, where: Where
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The study rows of one delivery, and the SKIPPED/FAILED files no study could be given.

    ``docs``: every file document of the batch (with its ``key``). The second value counts the
    unattributed files by state (``{"SKIPPED": 2}``).
    """
    studies: dict[str, _Study] = {}
    loose: list[Mapping[str, Any]] = []
    for doc in docs:
        ids = {k: str(v) for k, v in (doc.get("ids") or {}).items() if v}
        state = doc.get("state")
        if state == FileState.SENT and doc.get("delivery_id") == delivery_id and ids.get("study_uid"):
            studies.setdefault(ids["study_uid"], _Study(ids)).files.append(doc)
        elif state in (FileState.SKIPPED, FileState.FAILED):
            loose.append(doc)
    unattributed: Counter[str] = Counter()
    for doc in loose:
        study_uid = str((doc.get("ids") or {}).get("study_uid") or "")
        target = studies.get(study_uid) or (next(iter(studies.values())) if len(studies) == 1 else None)
        state, reason = str(doc.get("state")), str(doc.get("reason") or "no reason recorded")
        if target is None:
            unattributed[state] += 1
        else:
            (target.skipped if state == FileState.SKIPPED else target.failed)[reason] += 1
    rows = [_row(s, batch_id, delivery_id, where) for _, s in sorted(studies.items())]
    return rows, unattributed


def _row(study: _Study, batch_id: str, delivery_id: str, where: Where) -> dict[str, Any]:
    by_instance: dict[str, Mapping[str, Any]] = {}
    for doc in study.files:
        by_instance.setdefault(str(doc["ids"]["instance_uid"]), doc)
    images = list(by_instance.values())
    engine_rows = [dict(doc.get("row") or {}) for doc in images]
    first = engine_rows[0] if engine_rows else {}
    sizes = {str(d.get("sent_uri")): to_int(d.get("sent_size")) or 0 for d in study.files}
    sent_at = min(_time(d.get("sent_at")) for d in study.files)
    prefix, link = _location(study.ids, where, sorted(u for u in sizes if u))
    method = first.get("deid_method")
    return {
        "study_uid": study.ids["study_uid"],
        "patient_id": study.ids.get("patient_id"),
        "accession": study.ids.get("accession"),
        "collection": where.collection,
        "batch_id": batch_id,
        "delivery_id": delivery_id,
        "study_date": next((r["study_date"] for r in engine_rows if r.get("study_date")), None),
        "study_description": next(
            filter(None, (_header_text(r, STUDY_DESCRIPTION) for r in engine_rows)), None
        ),
        "modalities": sorted({str(r["modality"]) for r in engine_rows if r.get("modality")}),
        "body_parts": sorted({str(r["body_part"]) for r in engine_rows if r.get("body_part")}),
        "series_count": len({str(d["ids"]["series_uid"]) for d in images}),
        "series": _series(images),
        "images_delivered": len(images),
        "images_skipped": sum(study.skipped.values()),
        "images_failed": sum(study.failed.values()),
        "skipped": [{"reason": r, "images": n} for r, n in sorted(study.skipped.items())],
        "failed": [{"reason": r, "images": n} for r, n in sorted(study.failed.items())],
        "bytes": sum(sizes.values()),
        "gcs_prefix": prefix,
        "https_url": link,
        "dicomweb_url": naming.dicomweb_study_url(where.dicomweb_url, study.ids["study_uid"])
        if where.dicomweb_url
        else None,
        "deid_method": method,
        "recipe_hash": _recipe_hash(method),
        "sent_at": sent_at.isoformat(),
    }


def _series(images: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for doc in images:
        grouped.setdefault(str(doc["ids"]["series_uid"]), []).append(dict(doc.get("row") or {}))
    out = []
    for uid, engine_rows in grouped.items():
        first = engine_rows[0]
        out.append(
            {
                "series_uid": uid,
                "series_number": to_int(first.get("series_number")),
                "modality": first.get("modality"),
                "images": len(engine_rows),
                "description": next(
                    filter(None, (_header_text(r, SERIES_DESCRIPTION) for r in engine_rows)), None
                ),
            }
        )
    out.sort(key=lambda s: (s["series_number"] is None, s["series_number"] or 0, s["series_uid"]))
    return out


def _location(ids: Mapping[str, str], where: Where, uris: list[str]) -> tuple[str, str | None]:
    """The gs:// folder (instance) or archive (tar) of the study, and an authenticated browser link;
    ("", None) when the bucket is not a target (the study is on the DICOMweb server only)."""
    if where.bucket is None:
        return "", None
    if where.layout == "tar" and uris:
        _, name = naming.split_gs_uri(uris[-1])
        return uris[-1], f"https://storage.cloud.google.com/{where.bucket}/{name}"
    folder = naming.instance_object_name(where.collection, {**ids, "series_uid": "x", "instance_uid": "x"})
    folder = folder.rsplit("/", 2)[0] + "/"
    return (
        naming.gs_uri(where.bucket, folder),
        f"https://console.cloud.google.com/storage/browser/{where.bucket}/{folder}",
    )


def _header_text(engine_row: Mapping[str, Any], key: str) -> str | None:
    """A text attribute of the de-identified header JSON (present only when the recipe kept it)."""
    header = engine_row.get("header")
    if not isinstance(header, str) or key not in header:
        return None
    try:
        values = (json.loads(header).get(key) or {}).get("Value") or []
    except (ValueError, AttributeError):
        return None
    text = " ".join(str(v) for v in values if v is not None).strip()
    return text or None


def _recipe_hash(method: Any) -> str | None:
    for part in str(method or "").split(";"):
        part = part.strip()
        if part.startswith("sha256:"):
            return part.removeprefix("sha256:")
    return None


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def existing_studies(
    client: bigquery.Client, table: str, delivery_id: str, *, timeout: float = CALL_TIMEOUT
) -> set[str]:
    """Study pseudonyms of ``delivery_id`` already in the study table."""
    from google.cloud import bigquery

    job = client.query(
        f"SELECT DISTINCT study_uid FROM `{table}` WHERE delivery_id = @delivery_id",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter("delivery_id", "STRING", delivery_id)]
        ),
        retry=_retry(),
        timeout=timeout,
    )
    return {str(row["study_uid"]) for row in job.result(timeout=timeout, retry=_retry())}
