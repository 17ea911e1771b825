"""sendit.dicomweb against the real Orthanc (with its DICOMweb plugin) that the local stack runs.

Every test makes a series with fresh UIDs, so tests never see each other's instances.
"""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.request
from typing import Any

import pytest
import requests
from pydicom import dcmread, dcmwrite
from pydicom.uid import generate_uid

from sendit import dicomweb as dw
from sendit.local.emulators import free_port, http_ok
from sendit.local.samples import StudySpec, make_instance

pytestmark = pytest.mark.stack


def make_series(count: int, rows: int = 64, study_uid: str | None = None) -> list[dw.Instance]:
    """A synthetic CT series of ``count`` instances with fresh UIDs, as Part 10 bytes."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    out = []
    for index in range(1, count + 1):
        ds = make_instance(StudySpec(rows=rows, columns=rows), 1, index)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        out.append(dw.Instance.from_bytes(buffer.getvalue()))
    return out


def orthanc_instance_count(stack: Any) -> int:
    """Orthanc's own count of stored instances (its REST API, not DICOMweb)."""
    with urllib.request.urlopen(f"{stack.orthanc_url}/statistics", timeout=5) as response:
        return int(json.load(response)["CountInstances"])


@pytest.fixture
def client(stack: Any) -> dw.DicomwebClient:
    return dw.DicomwebClient(stack.settings_env()["SENDIT_DICOMWEB_URL"])


def uids(instances: list[dw.Instance]) -> set[str]:
    return {i.sop_instance_uid for i in instances}


def test_stow_in_one_request_then_qido_and_wado(client: dw.DicomwebClient) -> None:
    series = make_series(6)
    report = client.store(series)
    assert report.counts() == {"stored": 6, "already_present": 0, "failed": 0}
    assert report.requests == 1
    assert set(report.results) == uids(series)

    study, series_uid = series[0].study_uid, series[0].series_uid
    assert client.instance_uids(study) == uids(series)
    assert client.instance_uids(study, series_uid) == uids(series)
    studies = client.search_studies(StudyInstanceUID=study)
    assert [s[dw.TAG_STUDY_INSTANCE_UID]["Value"][0] for s in studies] == [study]

    first = series[2]
    data = client.retrieve_instance(study, series_uid, first.sop_instance_uid)
    assert data == first.data  # the exact bytes that were sent
    ds = dcmread(io.BytesIO(data))
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        study,
        series_uid,
        first.sop_instance_uid,
    )


def test_stow_in_bounded_requests(stack: Any) -> None:
    series = make_series(10)
    limit = 3 * (len(series[0].data) + 200)
    client = dw.DicomwebClient(stack.settings_env()["SENDIT_DICOMWEB_URL"], max_request_bytes=limit)
    bodies: list[int] = []
    client.session.hooks["response"].append(
        lambda r, *a, **k: bodies.append(len(r.request.body)) if r.request.method == "POST" else None
    )
    report = client.store(series)
    assert report.counts()["stored"] == 10
    assert report.requests == len(bodies) == 4  # 3 + 3 + 3 + 1
    assert max(bodies) <= limit and sum(bodies) == report.bytes_sent
    assert client.instance_uids(series[0].study_uid, series[0].series_uid) == uids(series)


def test_second_stow_stores_nothing_twice(stack: Any, client: dw.DicomwebClient) -> None:
    series = make_series(5)
    assert client.store(series).counts()["stored"] == 5
    count = orthanc_instance_count(stack)
    again = client.store(series + series[:2])  # a redelivery, with duplicates inside it too
    assert again.counts() == {"stored": 0, "already_present": 5, "failed": 0}
    assert again.requests == 0  # QIDO-RS said they are there: nothing sent
    assert orthanc_instance_count(stack) == count
    assert len(client.search_instances(series[0].study_uid)) == 5
    # Two deliveries racing past the QIDO-RS check: Orthanc keeps the first copy, stores nothing twice.
    raced = client.store(series, skip_present=False)
    assert raced.requests == 1 and raced.counts()["failed"] == 0
    assert orthanc_instance_count(stack) == count
    assert len(client.search_instances(series[0].study_uid)) == 5


def test_partly_present_series_sends_only_the_missing(stack: Any, client: dw.DicomwebClient) -> None:
    series = make_series(6)
    client.store(series[:4])
    report = client.store(series)
    assert report.counts() == {"stored": 2, "already_present": 4, "failed": 0}
    assert client.instance_uids(series[0].study_uid) == uids(series)


def test_an_instance_orthanc_refuses_fails_with_its_reason_and_the_rest_arrive(
    client: dw.DicomwebClient,
) -> None:
    series = make_series(4)
    # Bytes of another study under this series' record: Orthanc refuses it in a STOW-RS to this
    # study (409, Failed SOP Sequence, Failure Reason 0x0110) and stores the others.
    stranger = make_series(1)[0]
    mismatched = dw.Instance(
        series[0].study_uid, series[0].series_uid, stranger.sop_instance_uid, stranger.data
    )
    report = client.store([*series[:2], mismatched, *series[2:]])
    failed = report.results[stranger.sop_instance_uid]
    assert failed.outcome == "failed" and failed.failure_reason == dw.FAILURE_PROCESSING
    assert failed.http_status == 409 and failed.reason == "dicomweb-failure-0x0110"
    assert report.counts() == {"stored": 4, "already_present": 0, "failed": 1}
    assert client.instance_uids(series[0].study_uid) == uids(series)
    assert client.instance_uids(stranger.study_uid) == set()


def test_a_malformed_dataset_fails_alone(client: dw.DicomwebClient) -> None:
    series = make_series(5)
    broken = series[1]
    truncated = dw.Instance(broken.study_uid, broken.series_uid, broken.sop_instance_uid, broken.data[:300])
    report = client.store([series[0], truncated, *series[2:]])
    # Orthanc cannot parse it and does not name it (400): re-sent alone, it fails on its own.
    result = report.results[broken.sop_instance_uid]
    assert result.outcome == "failed" and result.http_status == 400 and result.reason == "dicomweb-http-400"
    assert report.counts() == {"stored": 4, "already_present": 0, "failed": 1}
    assert report.requests == 2  # the batch named the four it stored; the fifth was re-sent alone
    assert client.instance_uids(broken.study_uid) == uids(series) - {broken.sop_instance_uid}


def test_store_files_maps_file_keys_to_results(client: dw.DicomwebClient) -> None:
    series = make_series(3)
    files = {f"batch/series/IMG_{n}.dcm": i.data for n, i in enumerate(series)}
    files["batch/notes.txt"] = b"not DICOM"
    files["batch/copy-of-IMG_0.dcm"] = series[0].data  # the same instance under another name
    results, report = client.store_files(files)
    assert set(results) == set(files)
    assert results["batch/notes.txt"].outcome == "failed"
    assert results["batch/notes.txt"].reason == "dicomweb-invalid-instance"
    assert results["batch/copy-of-IMG_0.dcm"] == results["batch/series/IMG_0.dcm"]
    assert [results[f"batch/series/IMG_{n}.dcm"].outcome for n in range(3)] == ["stored"] * 3
    assert report.requests == 1 and client.instance_uids(series[0].study_uid) == uids(series)


def test_orthanc_stopped_mid_stow_is_retried_and_completes(stack: Any) -> None:
    series = make_series(12)
    orthanc = stack.service("orthanc")
    limit = 2 * (len(series[0].data) + 200)
    client = dw.DicomwebClient(stack.settings_env()["SENDIT_DICOMWEB_URL"], max_request_bytes=limit)
    posts: list[int] = []
    down: list[bool] = []
    restarted = threading.Event()

    def bring_back() -> None:
        orthanc.start()
        orthanc.wait_ready(time.monotonic() + 60)
        restarted.set()

    def outage_after_second_post(response: requests.Response, *args: object, **kwargs: object) -> None:
        if response.request.method != "POST":
            return
        posts.append(response.status_code)
        if len(posts) == 2:  # two of six requests stored: Orthanc goes away for 3 s (the fault)
            orthanc.stop()
            down.append(not http_ok(f"{stack.orthanc_url}/system"))
            threading.Timer(3.0, bring_back).start()

    client.session.hooks["response"].append(outage_after_second_post)
    try:
        report = client.store(series)
    finally:
        restarted.wait(60)
    assert restarted.is_set() and down == [True]
    assert report.counts() == {"stored": 12, "already_present": 0, "failed": 0}
    assert posts == [200] * 6  # refused connections were retried inside the third request
    assert client.instance_uids(series[0].study_uid) == uids(series)


def test_unreachable_server_is_retryable_not_a_failure() -> None:
    port = free_port()
    session = dw.build_session(
        f"http://127.0.0.1:{port}/dicom-web", retry=dw.retry_policy(retries=2, backoff=0.05)
    )
    client = dw.DicomwebClient(f"http://127.0.0.1:{port}/dicom-web", session)
    with pytest.raises(dw.DicomwebUnavailable) as caught:
        client.store(make_series(1))
    assert str(port) not in str(caught.value)  # status and error type only
