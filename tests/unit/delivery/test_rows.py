"""Rows built for the table from the schema file: columns, types, required fields, insert ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from sendit import naming
from sendit.delivery import rows as bq
from sendit.errors import InsertError, RowError
from sendit.resources import bigquery_schema

SENT_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _row(**engine: object) -> dict[str, object]:
    base: dict[str, object] = {"instance_uid": "2.25.9", "study_uid": "2.25.1", "header": '{"00080060":{}}'}
    base.update(engine)
    return bq.delivery_row(
        base,
        batch_id="b1",
        collection="research",
        uri="gs://dest/Collection/research/x.dcm",
        size_bytes="1234",  # type: ignore[arg-type]
        md5="abc==",
        sent_at=SENT_AT,
    )


def test_row_has_schema_columns_only_with_delivery_fields() -> None:
    row = _row(unknown_column="dropped", series_number="7", pixel_spacing=["0.5", 0.5], study_date="20240117")
    assert set(row) <= {f["name"] for f in bigquery_schema()}
    assert row["batch_id"] == "b1" and row["collection"] == "research" and row["md5"] == "abc=="
    assert row["size_bytes"] == 1234 and row["series_number"] == 7
    assert row["pixel_spacing"] == [0.5, 0.5] and row["study_date"] == "2024-01-17"
    assert row["sent_at"] == "2026-01-02T03:04:05+00:00"
    assert "unknown_column" not in row


def test_json_column_travels_as_json_text() -> None:
    assert _row()["header"] == '{"00080060":{}}'
    as_dict = _row(header={"00100010": {"vr": "PN"}})
    assert isinstance(as_dict["header"], str) and json.loads(as_dict["header"]) == {"00100010": {"vr": "PN"}}


def test_missing_required_column_is_a_row_error() -> None:
    with pytest.raises(RowError, match="instance_uid"):
        _row(instance_uid=None)


def test_nulls_are_left_out_and_repeated_becomes_a_list() -> None:
    row = _row(modality=None, pixel_spacing=None)
    assert "modality" not in row and row["pixel_spacing"] == []


def test_insert_ids_are_stable_per_batch_and_instance() -> None:
    assert naming.insert_id("b1", "2.25.9") == naming.insert_id("b1", "2.25.9")
    assert naming.insert_id("b1", "2.25.9") != naming.insert_id("b2", "2.25.9")
    assert len(naming.insert_id("b1", "2.25.9")) == 32


def test_insert_rows_checks_ids_and_reports_rejections_without_values() -> None:
    class FakeClient:
        def __init__(self) -> None:
            self.calls: list[dict[str, object]] = []

        def insert_rows_json(
            self, table: str, rows: list[dict[str, object]], **kwargs: object
        ) -> list[object]:
            self.calls.append({"rows": len(rows), **kwargs})
            return [{"index": 0, "errors": [{"reason": "invalid", "message": "Zyxwort is not a DATE"}]}]

    client = FakeClient()
    with pytest.raises(ValueError, match="one insert id per row"):
        bq.insert_rows(client, "p.d.t", [{"a": 1}], [])  # type: ignore[arg-type]
    with pytest.raises(InsertError) as caught:
        bq.insert_rows(client, "p.d.t", [{"a": 1}], ["id1"], deadline=5, timeout=3)  # type: ignore[arg-type]
    assert "invalid" in str(caught.value) and "Zyxwort" not in str(caught.value)
    (call,) = client.calls
    assert call["row_ids"] == ["id1"] and call["timeout"] == 3 and call["retry"] is not None
