"""Withdrawing re-run files' rows: the refusal when BigQuery still buffers them.

The emulator has no streaming buffer, so the one answer it cannot give - BigQuery's 400 for DML over
buffered rows - is played by a stand-in client; the DELETE statements themselves run on the emulator in
tests/e2e/test_reprocess.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.api_core.exceptions import BadRequest

from sendit.delivery import replace
from sendit.errors import Refused

BUFFERED = (
    "UPDATE or DELETE statement over table p.sendit.dicom would affect rows in the streaming buffer, "
    "which is not supported"
)


class _Client:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.sql: list[str] = []

    def query(self, sql: str, **_: Any) -> Any:
        self.sql.append(sql)
        if self.error is not None:
            raise self.error
        raise AssertionError("not reached")


def test_rows_in_the_streaming_buffer_are_a_refusal_that_changed_nothing() -> None:
    client = _Client(BadRequest(BUFFERED, errors=[{"reason": "invalidQuery", "message": BUFFERED}]))
    with pytest.raises(Refused) as caught:
        replace.withdraw(
            client,  # type: ignore[arg-type]
            image_table="p.sendit.dicom",
            study_table="p.sendit.studies",
            batch_id="b1",
            instance_uids=["2.25.1"],
            study_uids=["2.25.2"],
        )
    assert caught.value.why == "buffered" and caught.value.batch == "b1"
    assert "try again later" in str(caught.value)
    assert len(client.sql) == 1  # the study table is not touched after the image table refused


def test_another_bad_request_is_not_a_refusal_and_nothing_to_delete_runs_nothing() -> None:
    with pytest.raises(BadRequest):
        replace.withdraw(
            _Client(BadRequest("Syntax error")),  # type: ignore[arg-type]
            image_table="t",
            study_table="s",
            batch_id="b1",
            instance_uids=["u"],
            study_uids=[],
        )
    quiet = _Client(AssertionError("no statement expected"))
    assert replace.withdraw(
        quiet,  # type: ignore[arg-type]
        image_table="t",
        study_table="s",
        batch_id="b1",
        instance_uids=[],
        study_uids=[],
    ) == (0, 0)
    assert quiet.sql == []
