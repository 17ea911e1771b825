"""BigQuery rows of delivered images: building them from the schema file, finding and inserting them.

One row per image. The engine's row (``Outcome.row``, stored on the file document) carries the
de-identified metadata; delivery adds ``uri``, ``size_bytes``, ``md5``, ``batch_id``, ``collection`` and
``sent_at``. Rows carry an insert id that is a function of (batch, instance), and before inserting,
delivery asks which instances of the batch are already in the table: the BigQuery emulator does not
deduplicate by insert id, and real BigQuery does so only on a best-effort basis.

Every call passes a short retry deadline and a timeout: the client's default retry runs for 600 s, and the
emulator answers a bad value with a 500 the client would retry for that long.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from sendit.errors import InsertError, RowError
from sendit.resources import bigquery_schema

if TYPE_CHECKING:
    from google.cloud import bigquery

RETRY_DEADLINE = 60.0  # seconds: total time one call may spend retrying transient errors
CALL_TIMEOUT = 30.0  # seconds: one HTTP request
INSERT_CHUNK = 500  # rows per insertAll request (BigQuery recommends at most 500)

DELIVERY_COLUMNS = ("batch_id", "collection", "uri", "size_bytes", "md5", "sent_at")


@cache
def _columns() -> dict[str, dict[str, Any]]:
    return {field["name"]: field for field in bigquery_schema()}


def _coerce(value: Any, field: Mapping[str, Any]) -> Any:
    """Bring a stored value into the JSON form ``insertAll`` accepts for the column's type."""
    kind = str(field.get("type", "STRING")).upper()
    if field.get("mode") == "REPEATED":
        items = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
        return [_coerce(item, {"type": kind}) for item in items if item is not None]
    if value is None:
        return None
    if kind == "JSON":
        # JSON columns travel as JSON text (the emulator rejects objects; BigQuery accepts both).
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if kind in {"INTEGER", "INT64"}:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if kind in {"FLOAT", "FLOAT64", "NUMERIC", "BIGNUMERIC"}:
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    if kind == "BOOLEAN":
        return bool(value)
    if kind == "DATE":
        if isinstance(value, datetime):
            return value.date().isoformat()
        if isinstance(value, date):
            return value.isoformat()
        text = str(value)
        if len(text) == 8 and text.isdigit():
            return f"{text[:4]}-{text[4:6]}-{text[6:]}"
        return text or None
    if kind == "TIMESTAMP":
        return value.isoformat() if isinstance(value, datetime) else str(value)
    return str(value)


def delivery_row(
    engine_row: Mapping[str, Any],
    *,
    batch_id: str,
    collection: str,
    uri: str,
    size_bytes: int | None,
    md5: str | None,
    sent_at: datetime,
) -> dict[str, Any]:
    """The table row of one delivered image: the engine's columns plus what delivery knows.

    Keys that are not columns of the schema are dropped; values are coerced to the column types.
    Raises ``RowError`` when a REQUIRED column is empty.
    """
    merged: dict[str, Any] = dict(engine_row)
    merged.update(
        batch_id=batch_id,
        collection=collection,
        uri=uri,
        size_bytes=size_bytes,
        md5=md5,
        sent_at=sent_at,
    )
    row: dict[str, Any] = {}
    for name, field in _columns().items():
        value = _coerce(merged.get(name), field)
        if field.get("mode") == "REQUIRED" and value in (None, ""):
            raise RowError(f"required column {name} is empty")
        if value is not None:
            row[name] = value
    return row


def check_row(engine_row: Mapping[str, Any], *, batch_id: str, collection: str) -> None:
    """Raise ``RowError`` now, before anything is copied, when this image's row could never be built.

    Delivery sets ``uri`` for every file it copies; everything else comes from the engine's row.
    """
    delivery_row(
        engine_row,
        batch_id=batch_id,
        collection=collection,
        uri="gs://",
        size_bytes=None,
        md5=None,
        sent_at=datetime.now(UTC),
    )


def existing_instance_uids(
    client: bigquery.Client,
    table: str,
    batch_id: str,
    instance_uids: Iterable[str] | None = None,
    *,
    timeout: float = CALL_TIMEOUT,
) -> set[str]:
    """Instance UIDs of ``batch_id`` already in ``table`` (optionally only among ``instance_uids``)."""
    from google.cloud import bigquery

    params: list[Any] = [bigquery.ScalarQueryParameter("batch_id", "STRING", batch_id)]
    sql = f"SELECT DISTINCT instance_uid FROM `{table}` WHERE batch_id = @batch_id"
    wanted = sorted(set(instance_uids)) if instance_uids is not None else None
    if wanted is not None:
        if not wanted:
            return set()
        sql += " AND instance_uid IN UNNEST(@uids)"
        params.append(bigquery.ArrayQueryParameter("uids", "STRING", wanted))
    job = client.query(
        sql,
        job_config=bigquery.QueryJobConfig(query_parameters=params),
        retry=_retry(),
        timeout=timeout,
    )
    return {str(row["instance_uid"]) for row in job.result(timeout=timeout, retry=_retry())}


def insert_rows(
    client: bigquery.Client,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    row_ids: Sequence[str],
    *,
    deadline: float = RETRY_DEADLINE,
    timeout: float = CALL_TIMEOUT,
) -> int:
    """Stream ``rows`` into ``table`` with their insert ids, in chunks; returns the number inserted.

    Raises ``InsertError`` if BigQuery rejects any row, and the client's exception on a transport error
    (both make the delivery retry; rows already inserted are found by ``existing_instance_uids``).
    """
    from google.cloud.bigquery import DEFAULT_RETRY

    if len(rows) != len(row_ids):
        raise ValueError("one insert id per row")
    inserted = 0
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = [dict(r) for r in rows[start : start + INSERT_CHUNK]]
        ids = list(row_ids[start : start + INSERT_CHUNK])
        errors = client.insert_rows_json(
            table,
            chunk,
            row_ids=ids,
            retry=DEFAULT_RETRY.with_deadline(deadline),
            timeout=timeout,
        )
        if errors:
            reasons = sorted(
                {str(e.get("reason", "invalid")) for entry in errors for e in entry.get("errors", [])}
            )
            raise InsertError(f"{len(errors)} of {len(chunk)} rows rejected: {', '.join(reasons)}")
        inserted += len(chunk)
    return inserted


def _retry() -> Any:
    from google.cloud.bigquery import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(RETRY_DEADLINE)
