"""Withdraw the BigQuery rows of delivered files that are re-run (``sendit reprocess --all``).

A delivered file that is processed again is delivered again by a follow-up send, which inserts the rows
of the instances not yet in the table (``rows.existing_instance_uids``) and one study row per study of that
delivery. So that the re-run replaces rather than duplicates, the reprocess deletes first, with one DML
statement per table: the image rows of the batch's re-run instances, and the batch's study rows of their
studies (the follow-up delivery's study row then describes every re-run image of the study).

BigQuery refuses DML over rows still in the streaming buffer (rows inserted with ``insertAll`` stay
there for up to about 90 minutes): the statement fails and nothing is deleted. That is ``Refused``
("buffered"): the reprocess changes nothing and can be asked again later. The emulator has no buffer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sendit.delivery.rows import CALL_TIMEOUT, _retry
from sendit.errors import Refused

if TYPE_CHECKING:
    from google.cloud import bigquery

BUFFERED = (
    "rows of this batch delivered within about the last 90 minutes are still in BigQuery's streaming "
    "buffer and cannot be replaced yet; nothing was changed, try again later"
)


def withdraw(
    client: bigquery.Client,
    *,
    image_table: str,
    study_table: str,
    batch_id: str,
    instance_uids: Iterable[str],
    study_uids: Iterable[str],
) -> tuple[int, int]:
    """Delete the image rows of ``instance_uids`` and the study rows of ``study_uids`` of ``batch_id``;
    returns (image rows, study rows) deleted. Raises ``Refused("buffered")``."""
    images = _delete(client, image_table, batch_id, "instance_uid", sorted(set(instance_uids)))
    studies = _delete(client, study_table, batch_id, "study_uid", sorted(set(study_uids)))
    return images, studies


def _delete(client: bigquery.Client, table: str, batch_id: str, column: str, values: list[str]) -> int:
    from google.api_core.exceptions import BadRequest
    from google.cloud import bigquery

    if not values:
        return 0
    job_config = bigquery.QueryJobConfig(
        query_parameters=[
            bigquery.ScalarQueryParameter("batch_id", "STRING", batch_id),
            bigquery.ArrayQueryParameter("values", "STRING", values),
        ]
    )
    sql = f"DELETE FROM `{table}` WHERE batch_id = @batch_id AND {column} IN UNNEST(@values)"
    try:
        job = client.query(sql, job_config=job_config, retry=_retry(), timeout=CALL_TIMEOUT)
        job.result(timeout=CALL_TIMEOUT, retry=_retry())
    except BadRequest as exc:
        if _in_streaming_buffer(exc):
            raise Refused(BUFFERED, "buffered", batch=batch_id) from None
        raise
    return int(job.num_dml_affected_rows or 0)


def _in_streaming_buffer(exc: Any) -> bool:
    """BigQuery's answer to DML over buffered rows: 400 "... would affect rows in the streaming buffer"."""
    texts = [str(getattr(exc, "message", "") or "")] + [str(e.get("message", "")) for e in exc.errors or []]
    return any("streaming buffer" in text for text in texts)
