"""The DICOMweb target's pure parts: request-sized chunks, instance URLs, and the delivery record's figures.

Storing itself (QIDO-RS, STOW-RS, refusals, outages) runs against the stack's Orthanc in
tests/e2e/test_deliver_dicomweb.py.
"""

from __future__ import annotations

from sendit import naming
from sendit.delivery import dicomweb_target as target
from sendit.delivery.objects import Item

ROOT = "http://127.0.0.1:8042/dicom-web"


def _item(n: int, size: int | None = 100, study: str = "2.25.1", series: str = "2.25.2") -> Item:
    ids = {"patient_id": "P", "study_uid": study, "series_uid": series, "instance_uid": f"2.25.3{n}"}
    return Item(f"k{n}", ids, "proc", f"b/{n}.dcm", "md5==", size, {})


def test_chunks_bound_each_request_and_a_large_instance_travels_alone() -> None:
    limit = 3 * (100 + 1024)
    items = [_item(n) for n in range(7)]
    assert [len(c) for c in target._chunks(items, limit)] == [3, 3, 1]
    big = [_item(0), _item(1, size=10 * limit), _item(2)]
    assert [[i.key for i in c] for c in target._chunks(big, limit)] == [["k0"], ["k1"], ["k2"]]
    unknown = [_item(0, size=None), _item(1)]  # no recorded size: assume the worst, send alone
    assert [len(c) for c in target._chunks(unknown, limit)] == [1, 1]


def test_locate_points_rows_and_files_at_the_instance_on_the_server() -> None:
    item = _item(5, size=321)
    target.locate([item], ROOT + "/")
    assert item.uri == f"{ROOT}/studies/2.25.1/series/2.25.2/instances/2.25.35"
    assert item.uri == naming.dicomweb_instance_url(ROOT, item.ids)
    assert (item.md5, item.size) == ("md5==", 321)


def _sent(n: int, outcome: str, study: str = "2.25.1") -> dict[str, object]:
    return {"key": f"k{n}", "dicomweb": outcome, "ids": {"study_uid": study, "instance_uid": f"2.25.3{n}"}}


def test_record_counts_distinct_instances_and_dicomweb_refusals_only() -> None:
    sent = [
        _sent(1, "stored"),
        _sent(1, "stored"),  # two uploads of one image: one instance
        _sent(2, "already_present", study="2.25.7"),
        {"key": "k3", "ids": {"study_uid": "2.25.1", "instance_uid": "2.25.33"}},  # no DICOMweb outcome
    ]
    failed = [
        {"key": "k4", "reason": "dicomweb-failure-0x0110", "ids": {"instance_uid": "2.25.34"}},
        {"key": "k5", "reason": "dicomweb-http-400"},
        {"key": "k6", "reason": "row cannot be built: required column instance_uid is empty"},
    ]
    assert target.record(ROOT, sent, failed) == {
        "url": ROOT,
        "stored": 1,
        "already_present": 1,
        "failed": 2,
        "studies": 2,
        "study_urls": [f"{ROOT}/studies/2.25.1", f"{ROOT}/studies/2.25.7"],
    }


def test_record_keeps_a_bounded_list_of_study_urls() -> None:
    sent = [_sent(n, "stored", study=f"2.25.{1000 + n}") for n in range(target.MAX_STUDY_URLS + 5)]
    record = target.record(ROOT, sent, [])
    assert record["studies"] == target.MAX_STUDY_URLS + 5
    assert len(record["study_urls"]) == target.MAX_STUDY_URLS
