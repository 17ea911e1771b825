"""Status API routing and the dashboard HTML (pure functions: no emulator)."""

from __future__ import annotations

import re

import pytest

from sendit.http import dashboard, status_api


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/", ("root", None)),
        ("", ("root", None)),
        ("/status", ("root", None)),
        ("/batches", ("batches", None)),
        ("/batches/", ("batches", None)),
        ("/status/batches/abc123", ("batch", "abc123")),
        ("/batches/abc123", ("batch", "abc123")),
        ("/batches/a/b", ("missing", None)),
        ("/favicon.ico", ("missing", None)),
        ("/a/b", ("missing", None)),
    ],
)
def test_routes(path: str, route: tuple[str, str | None]) -> None:
    assert status_api._route(path) == route


def _batch(**extra: object) -> dict[str, object]:
    batch: dict[str, object] = {
        "id": "0123abcd",
        "status": "PROCESSING",
        "counts": {"RECEIVED": 2, "ANONYMIZED": 5, "SKIPPED": 1, "FAILED": 2, "SENT": 0, "total": 10},
        "has_error": True,
        "errors": [{"file": "k1", "reason": "not DICOM"}, {"file": "k2", "reason": "<script>x</script>"}],
        "size_bytes": 3 * 1024 * 1024,
        "elapsed_seconds": 12.25,
        "deliveries": [],
    }
    batch.update(extra)
    return batch


def test_dashboard_row_shows_progress_counts_and_errors() -> None:
    page = dashboard.render_dashboard([_batch()], refresh=7)
    assert '<meta http-equiv="refresh" content="7">' in page
    assert '<a href="batches/0123abcd">0123abcd</a>' in page
    assert 'aria-valuenow="80"' in page and "8/10" in page  # 8 of 10 files terminal
    assert '<td class="num" data-state="FAILED">2</td>' in page
    assert "3.0 MB" in page and "12.2 s" in page
    assert "PROCESSING: 1" in page


def test_dashboard_escapes_everything_and_can_stop_refreshing() -> None:
    batch = _batch(id="<b>", status='"><img src=x>')
    page = dashboard.render_dashboard([batch], refresh=0)
    assert "<b>" not in page.split("<body>")[1] and "<img" not in page
    assert "&lt;b&gt;" in page and "http-equiv" not in page and "auto-refresh off" in page


def test_empty_dashboard_says_so() -> None:
    assert "no batches yet" in dashboard.render_dashboard([])


def test_batch_page_lists_files_errors_deliveries_and_next_page() -> None:
    batch = _batch(
        status="SENT",
        deliveries=[{"at": "2026-01-02T03:04:05+00:00", "files": 5, "rows": 5, "objects": 5, "bytes": 2048}],
        files=[
            {"name": "aa11", "state": "SENT", "reason": None, "patient_id": "P1", "study_uid": "2.25.1"},
            {"name": "bb22", "state": "FAILED", "reason": "not DICOM"},
        ],
        next_page_token="k9",
    )
    page = dashboard.render_batch(batch, refresh=5, page_size=2, state="FAILED")
    assert "sendit batch 0123abcd" in page and "2026-01-02 03:04:05 UTC" in page and "2.0 KB" in page
    assert ">aa11<" in page and ">P1<" in page and ">2.25.1<" in page and "&lt;script&gt;" in page
    assert 'href="?page_token=k9&amp;page_size=2&amp;state=FAILED"' in page
    assert "<th>dicomweb</th>" in page and "<td>-</td>" in page  # no DICOMweb target in that delivery


def _row(page: str, batch_id: str) -> str:
    match = re.search(rf'(?s)<tr id="batch-{batch_id}"[^>]*>.*?</tr>', page)
    assert match, batch_id
    return match.group(0)


def test_unsent_batches_show_when_their_clean_files_expire_and_soon_ones_are_flagged() -> None:
    later = _batch(id="later", status="DONEPROCESSING", expires_at="2026-03-03T09:00:40+00:00")
    later.update(expiring_soon=False, expired=False)
    soon = _batch(id="soon", status="DONEPROCESSING", expires_at="2026-02-12T08:00:00+00:00")
    soon.update(expiring_soon=True, expired=False)
    gone = _batch(id="gone", status="PROCESSING", expires_at="2026-01-20T08:00:00+00:00")
    gone.update(expiring_soon=True, expired=True)
    sent = _batch(id="sent", status="SENT", sent_at="2026-01-02T03:04:05+00:00")
    page = dashboard.render_dashboard([later, soon, gone, sent])
    assert "<th>expires</th>" in page
    assert '<tr id="batch-later">' in page and "2026-03-03 09:00:40 UTC" in _row(page, "later")
    assert "expiring soon" not in _row(page, "later") and "expired" not in _row(page, "later")
    assert _row(page, "soon").startswith('<tr id="batch-soon" class="expiring">')
    assert '<span class="flag soon">expiring soon</span>' in _row(page, "soon")
    assert '<span class="flag expired">expired</span>' in _row(page, "gone")
    assert _row(page, "gone").startswith('<tr id="batch-gone" class="expiring">')
    assert '<tr id="batch-sent">' in page and 'class="expires"' not in _row(page, "sent")
    assert "2 unsent batches expiring within 7 days" in page  # the summary line
    css = page.split("<style>")[1].split("</style>")[0]
    assert "tr.expiring" in css and ".flag.expired" in css


def test_batch_page_shows_the_expiry_of_its_clean_files() -> None:
    batch = _batch(status="DONEPROCESSING", expires_at="2026-02-12T08:00:00+00:00", expiring_soon=True)
    page = dashboard.render_batch({**batch, "expired": False, "files": []}, 5, 200, None)
    assert "<dt>clean files expire</dt>" in page and "2026-02-12 08:00:00 UTC" in page
    assert "expiring soon" in page
    assert "clean files expire" not in dashboard.render_batch({**_batch(), "files": []}, 5, 200, None)


def test_batch_page_says_what_the_dicomweb_target_did() -> None:
    figures = {"stored": 4, "already_present": 2, "failed": 1, "studies": 1, "study_urls": []}
    delivery = {"at": "2026-01-02T03:04:05+00:00", "files": 6, "dicomweb": figures}
    batch = _batch(status="SENT", deliveries=[delivery])
    page = dashboard.render_batch(batch, refresh=5, page_size=2, state=None)
    assert "<td>stored 4, present 2, failed 1</td>" in page
