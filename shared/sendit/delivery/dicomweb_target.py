"""The DICOMweb delivery target: a delivery's instances stored in a DICOM server with STOW-RS.

``store_items(client, storage, items)`` works series by series. One QIDO-RS query lists the SOP Instance
UIDs the server already holds: those items are ``already_present`` and their bytes are not even read
(a resend or a redelivery stores nothing twice, and needs no clean object). The others are read from the
processing bucket in chunks of at most the client's ``max_request_bytes`` (so memory stays bounded) and
stored with STOW-RS (``DicomwebClient.store_files``, the presence check already done here). Each item
ends in one outcome:

- ``stored`` or ``already_present`` (``item.dicomweb``): delivered to the server;
- ``failed`` with a reason built from the server's answer: ``dicomweb-failure-0x0110`` (its Failure
  Reason), ``dicomweb-http-400`` (refused alone without one), ``dicomweb-invalid-instance`` (not a
  storable instance); codes and statuses only, never a header value;
- missing: its clean object is gone.

``DicomwebUnavailable`` (the server down or overloaded after the client's retries; the stage raises it on
as a ``RetryableError``) and ``DicomwebRequestError`` (the whole request refused: auth, URL) propagate:
the delivery raises, marks nothing, and Pub/Sub redelivers; the redelivery finds by QIDO-RS what the
first attempt stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sendit import naming
from sendit.delivery.objects import WORKERS, Item
from sendit.dicomweb import ALREADY_PRESENT, FAILED, STORED, chunked

if TYPE_CHECKING:
    from sendit.dicomweb import DicomwebClient

REASON_PREFIX = "dicomweb-"  # every reason this target gives a file starts so
MAX_STUDY_URLS = 50  # study URLs kept on one delivery record (the count is always complete)
_PART_OVERHEAD = 1024  # multipart delimiter and part headers, generously


@dataclass
class Stored:
    """What storing a delivery's items did: per-file outcomes, refusals, missing clean objects, cost."""

    outcomes: dict[str, str] = field(default_factory=dict)  # file key -> stored | already_present
    failed: list[tuple[Item, str]] = field(default_factory=list)  # (item, reason)
    missing: list[Item] = field(default_factory=list)
    requests: int = 0
    bytes_sent: int = 0

    def count(self, outcome: str) -> int:
        return sum(1 for value in self.outcomes.values() if value == outcome)


def store_items(client: DicomwebClient, storage: Any, items: list[Item]) -> Stored:
    """Store every item's clean instance on the server unless it is there already (see the module doc)."""
    result = Stored()
    for members in _by_series(items).values():
        ids = members[0].ids
        present = client.instance_uids(ids["study_uid"], ids["series_uid"])
        pending = []
        for item in members:
            if item.ids["instance_uid"] in present:
                item.dicomweb = result.outcomes[item.key] = ALREADY_PRESENT
            else:
                pending.append(item)
        pending.sort(key=lambda i: i.ids["instance_uid"])  # two files of one instance share a request
        for chunk in _chunks(pending, client.max_request_bytes):
            _store_chunk(client, storage, chunk, result)
    return result


def _by_series(items: Iterable[Item]) -> dict[tuple[str, str], list[Item]]:
    series: dict[tuple[str, str], list[Item]] = {}
    for item in items:
        series.setdefault((item.ids["study_uid"], item.ids["series_uid"]), []).append(item)
    return series


def _chunks(items: list[Item], max_bytes: int) -> Iterator[list[Item]]:
    """Items in runs whose clean sizes add up to at most ``max_bytes`` (about one STOW-RS request each)."""

    def cost(item: Item) -> int:
        return (item.clean_size if item.clean_size is not None else max_bytes) + _PART_OVERHEAD

    return chunked(items, cost, max_bytes)


def _store_chunk(client: DicomwebClient, storage: Any, chunk: list[Item], result: Stored) -> None:
    data = _read(storage, chunk)
    results, report = client.store_files(data, skip_present=False)
    result.requests += report.requests
    result.bytes_sent += report.bytes_sent
    for item in chunk:
        outcome = results.get(item.key)
        if outcome is None:
            result.missing.append(item)
        elif outcome.outcome == FAILED:
            result.failed.append((item, outcome.reason or f"{REASON_PREFIX}failed"))
        else:
            item.dicomweb = result.outcomes[item.key] = outcome.outcome


def _read(storage: Any, items: list[Item]) -> dict[str, bytes]:
    """File key -> the clean object's bytes (in parallel); a clean object that is gone is left out."""
    from google.api_core.exceptions import NotFound

    def one(item: Item) -> tuple[str, bytes | None]:
        try:
            return item.key, storage.bucket(item.clean_bucket).blob(item.clean_name).download_as_bytes()
        except NotFound:
            return item.key, None

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return {key: data for key, data in pool.map(one, items) if data is not None}


def locate(items: Iterable[Item], root: str) -> None:
    """Without the bucket target: each delivered item's ``uri`` is its instance on the server (WADO-RS),
    its MD5 and size those of the clean object that was sent."""
    for item in items:
        item.uri = naming.dicomweb_instance_url(root, item.ids)
        item.md5, item.size = item.clean_md5, item.clean_size


def held(client: DicomwebClient, docs: Iterable[Mapping[str, Any]]) -> set[str]:
    """Keys of the delivered file documents whose instance the server holds (QIDO-RS, one query per
    series): what cleanup verifies when the DICOMweb server is the only target."""
    series: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for doc in docs:
        ids = doc.get("ids") or {}
        if ids.get("study_uid") and ids.get("series_uid") and ids.get("instance_uid"):
            series.setdefault((str(ids["study_uid"]), str(ids["series_uid"])), []).append(doc)
    keys: set[str] = set()
    for (study_uid, series_uid), members in series.items():
        present = client.instance_uids(study_uid, series_uid)
        keys.update(str(d["key"]) for d in members if str(d["ids"]["instance_uid"]) in present)
    return keys


def record(
    root: str, sent: Iterable[Mapping[str, Any]], failed: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """The ``dicomweb`` part of a delivery record, from the files the delivery marked SENT (each with its
    ``dicomweb`` outcome) and those it marked FAILED: distinct instances stored / already present /
    failed, and the delivered studies' URLs (at most ``MAX_STUDY_URLS``; ``studies`` counts them all)."""
    outcomes: dict[str, str] = {}
    studies: set[str] = set()
    for doc in sent:
        ids = doc.get("ids") or {}
        if doc.get("dicomweb") and ids.get("instance_uid"):
            outcomes.setdefault(str(ids["instance_uid"]), str(doc["dicomweb"]))
            studies.add(str(ids.get("study_uid") or ""))
    refused = {
        str((doc.get("ids") or {}).get("instance_uid") or doc.get("key"))
        for doc in failed
        if str(doc.get("reason") or "").startswith(REASON_PREFIX)
    }
    counts = Counter(outcomes.values())
    ordered = sorted(s for s in studies if s)
    return {
        "url": root,
        "stored": counts[STORED],
        "already_present": counts[ALREADY_PRESENT],
        "failed": len(refused),
        "studies": len(ordered),
        "study_urls": [naming.dicomweb_study_url(root, s) for s in ordered[:MAX_STUDY_URLS]],
    }
