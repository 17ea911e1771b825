"""Volume metrics over a window of whole UTC days, from the stored records (read-only).

- files, studies, bytes and deliveries per day and per collection: from the batches' delivery records
  (``deliveries[]``: ``at``, ``files``, ``studies``, ``bytes``, ``collection``), found through the batch's
  ``sent_at`` (the time of its last delivery, a single-field index);
- latency percentiles: from the SENT file documents of the window, ``created_at`` (the upload was first
  seen) to ``finished_at`` (de-identified: *processing*) and to ``sent_at`` (delivered: *delivery*).

Only counts, sizes, days, collection names and seconds leave here. A record written before collections
and study counts were recorded counts under the deployment's collection, with no studies.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sendit.store.base import Store, before, since
from sendit.store.vocabulary import FileState

MAX_DAYS = 366
PERCENTILES = (50, 90, 99)


def window(days: int, until: date | None = None) -> tuple[datetime, datetime]:
    """[start, end) of the ``days`` whole UTC days ending with ``until`` (default: today)."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}")
    last = until or datetime.now(UTC).date()
    end = datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC)
    return end - timedelta(days=days), end


def volume(
    store: Store, *, days: int, until: date | None = None, collection: str = "sendit"
) -> dict[str, Any]:
    """The report ``sendit metrics --days N`` prints and ``GET /metrics?days=N`` answers."""
    start, end = window(days, until)
    per_day = {(start + timedelta(days=i)).date().isoformat(): _zero() for i in range(days)}
    per_collection: dict[tuple[str, str], dict[str, int]] = defaultdict(_zero)
    for record in _records(store, start, end):
        day = _utc(record["at"]).date().isoformat()
        name = str(record.get("collection") or collection)
        for totals in (per_day[day], per_collection[(day, name)]):
            totals["deliveries"] += 1
            totals["files"] += int(record.get("files") or 0)
            totals["studies"] += int(record.get("studies") or 0)
            totals["bytes"] += int(record.get("bytes") or 0)
    processing, delivery = _latencies(store, start, end)
    return {
        "days": days,
        "from": start.isoformat(),
        "until": end.isoformat(),
        "per_day": [{"day": day, **totals} for day, totals in per_day.items()],
        "per_collection": [
            {"day": day, "collection": name, **totals}
            for (day, name), totals in sorted(per_collection.items())
        ],
        "totals": {
            k: sum(t[k] for t in per_day.values()) for k in ("deliveries", "files", "studies", "bytes")
        },
        "latency_seconds": {"processing": summary(processing), "delivery": summary(delivery)},
    }


def _zero() -> dict[str, int]:
    return {"deliveries": 0, "files": 0, "studies": 0, "bytes": 0}


def _utc(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _records(store: Store, start: datetime, end: datetime) -> Iterable[dict[str, Any]]:
    """Delivery records with ``start <= at < end`` (a batch's ``sent_at`` is its last delivery's ``at``)."""
    query = store.db.collection(store.batches).where(filter=since("sent_at", start))
    for snap in query.select(["deliveries"]).stream():
        for record in (snap.to_dict() or {}).get("deliveries") or []:
            if (
                isinstance(record, dict)
                and record.get("at") is not None
                and start <= _utc(record["at"]) < end
            ):
                yield record


def _latencies(store: Store, start: datetime, end: datetime) -> tuple[list[float], list[float]]:
    query = (
        store.db.collection(store.files)
        .where(filter=since("sent_at", start))
        .where(filter=before("sent_at", end))
    )
    processing: list[float] = []
    delivery: list[float] = []
    for snap in query.select(["state", "created_at", "finished_at", "sent_at"]).stream():
        doc = snap.to_dict() or {}
        if doc.get("state") != FileState.SENT or doc.get("created_at") is None:
            continue
        created = _utc(doc["created_at"])
        if doc.get("finished_at") is not None:
            processing.append(max(0.0, (_utc(doc["finished_at"]) - created).total_seconds()))
        delivery.append(max(0.0, (_utc(doc["sent_at"]) - created).total_seconds()))
    return processing, delivery


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least p% of the values at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {"count": len(values)}
    for p in PERCENTILES:
        found = percentile(values, p)
        out[f"p{p}"] = None if found is None else round(found, 3)
    out["max"] = round(max(values), 3) if values else None
    return out
