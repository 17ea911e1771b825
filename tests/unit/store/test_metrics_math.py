"""The metrics window and the nearest-rank percentiles (sendit.store.metrics), without services."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from sendit.store.metrics import percentile, summary, window


def test_window_is_whole_utc_days_ending_with_until() -> None:
    start, end = window(7, date(2026, 3, 10))
    assert start == datetime(2026, 3, 4, tzinfo=UTC) and end == datetime(2026, 3, 11, tzinfo=UTC)
    for bad in (0, 367):
        with pytest.raises(ValueError):
            window(bad)


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (5.0, 9.0, 10.0)
    assert percentile([], 50) is None
    assert summary([3.0]) == {"count": 1, "p50": 3.0, "p90": 3.0, "p99": 3.0, "max": 3.0}
    assert summary([]) == {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
