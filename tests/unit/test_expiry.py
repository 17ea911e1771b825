"""sendit.expiry: when an unsent batch's clean files expire, from the batch document, on a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sendit import expiry

NOW = datetime(2026, 2, 10, 12, 0, tzinfo=UTC)
START = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
FIRST_CLEAN = START + timedelta(seconds=40)


def _counts(anonymized: int, sent: int = 0) -> dict[str, int]:
    return {"RECEIVED": 0, "ANONYMIZED": anonymized, "SKIPPED": 0, "FAILED": 1, "SENT": sent}


def _done(**extra: Any) -> dict[str, Any]:
    """A DONEPROCESSING batch as settling leaves it (the status view's counts)."""
    data: dict[str, Any] = {
        "status": "DONEPROCESSING",
        "start_time": START,
        "created_at": START,
        "finish_time": START + timedelta(minutes=2),
        "first_clean_at": FIRST_CLEAN,
        "counts": _counts(5),
    }
    data.update(extra)
    return data


def test_a_complete_batch_expires_retention_days_after_its_first_clean_file() -> None:
    view = expiry.expiry_view(_done(), retention_days=30, now=NOW)
    assert view == {
        "expires_at": (FIRST_CLEAN + timedelta(days=30)).isoformat(),
        "expiring_soon": False,
        "expired": False,
    }
    assert datetime.fromisoformat(view["expires_at"]) == datetime(2026, 3, 3, 9, 0, 40, tzinfo=UTC)
    assert expiry.expires_at(_done(), retention_days=10) == FIRST_CLEAN + timedelta(days=10)


@pytest.mark.parametrize(
    ("left", "soon", "expired"),
    [
        (timedelta(days=7, seconds=1), False, False),
        (timedelta(days=7), True, False),  # exactly 7 days left: flagged
        (timedelta(days=1), True, False),
        (timedelta(0), True, True),
        (-timedelta(days=3), True, True),
    ],
)
def test_flagged_within_seven_days_and_expired_once_past(left: timedelta, soon: bool, expired: bool) -> None:
    now = FIRST_CLEAN + timedelta(days=30) - left
    view = expiry.expiry_view(_done(), retention_days=30, now=now)
    assert (view["expiring_soon"], view["expired"]) == (soon, expired)
    assert expiry.SOON_DAYS == 7


def test_a_retention_of_a_week_or_less_flags_every_waiting_batch_at_once() -> None:
    view = expiry.expiry_view(_done(), retention_days=7, now=FIRST_CLEAN + timedelta(minutes=1))
    assert view["expiring_soon"] is True and view["expired"] is False


@pytest.mark.parametrize(
    "data",
    [
        _done(status="SENT", counts=_counts(0, sent=5)),
        _done(status="SENT", counts=_counts(2, sent=5)),  # SENT shows no expiry, whatever the counts
        _done(status="EMPTY", first_clean_at=None, counts=_counts(0)),
        {"status": "PROCESSING", "start_time": START, "counts": _counts(0)},  # nothing clean yet
        {"status": "QUEUE", "start_time": START, "counts": {}},
        {"status": "PROCESSING", "counts": _counts(3)},  # no time known: nothing claimed
    ],
)
def test_no_expiry_without_clean_files_waiting(data: dict[str, Any]) -> None:
    assert expiry.expiry_view(data, retention_days=30, now=NOW) == {}
    assert expiry.expires_at(data, retention_days=30) is None


def test_a_batch_still_processing_counts_from_its_start_an_early_estimate() -> None:
    data = {"status": "PROCESSING", "start_time": START, "counts": _counts(2) | {"RECEIVED": 3}}
    assert expiry.first_clean(data) == START
    assert expiry.expires_at(data, retention_days=30) == START + timedelta(days=30)
    assert expiry.first_clean({"created_at": START}) == START  # no start time: the document's creation


def test_sending_and_reopened_from_done_keep_the_first_clean_file() -> None:
    assert expiry.first_clean(_done(status="SENDING")) == FIRST_CLEAN
    reopened = _done(status="PROCESSING", counts=_counts(5) | {"RECEIVED": 1})
    assert expiry.first_clean(reopened) == FIRST_CLEAN


def test_after_a_delivery_the_late_files_count_from_the_reopening() -> None:
    sent_at = START + timedelta(days=2)
    late = START + timedelta(days=3)
    # Delivered, then a late file reopened it: the old first_clean_at belongs to files now SENT.
    data = _done(status="PROCESSING", sent_at=sent_at, reopened_at=late, counts=_counts(1, sent=5))
    assert expiry.first_clean(data) == late
    # A late file arrived while the delivery ran (reopened before sent_at): still the reopening.
    during = START + timedelta(days=2, seconds=-30)
    assert expiry.first_clean({**data, "reopened_at": during}) == during
    # A reopening from an earlier round (before the last settling): the delivery's time.
    assert expiry.first_clean({**data, "reopened_at": START + timedelta(minutes=1)}) == sent_at
    assert expiry.first_clean({**data, "reopened_at": None}) == sent_at
    # Settled again after that delivery: its own first clean file.
    again = START + timedelta(days=3, minutes=1)
    settled = _done(sent_at=sent_at, reopened_at=late, finish_time=again, first_clean_at=late)
    assert expiry.first_clean(settled) == late


def test_naive_times_are_taken_as_utc() -> None:
    naive = _done(first_clean_at=FIRST_CLEAN.replace(tzinfo=None), finish_time=None)
    assert expiry.first_clean(naive) == FIRST_CLEAN


class _Reads(dict[str, Any]):
    """A batch document that remembers which fields were read."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


@pytest.mark.parametrize(
    "data",
    [
        _done(),
        _done(sent_at=START + timedelta(days=2), reopened_at=START + timedelta(days=3)),
        {"status": "PROCESSING", "counts": _counts(1)},
    ],
)
def test_the_sweep_selects_every_field_the_expiry_reads(data: dict[str, Any]) -> None:
    doc = _Reads(data)
    expiry.expiry_view(doc, retention_days=30, now=NOW)
    assert doc.read and doc.read <= set(expiry.FIELDS)
