"""sendit.dicomweb without a server: STOW-RS responses in both PS3.18 encodings, auth per URL, batching,
and the delivery-target settings."""

from __future__ import annotations

import io
import json

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import AuthorizedSession
from pydicom import dcmwrite

from sendit import dicomweb as dw
from sendit.config import ConfigError, Settings
from sendit.local.samples import StudySpec, make_instance

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "2.25.1001"
OK_PLAIN, OK_COERCED, FAILED_REF, DUPLICATE = "2.25.11", "2.25.12", "2.25.13", "2.25.14"


def _ref(uid: str, tag: str | None = None, code: int | None = None) -> dict[str, object]:
    """A Referenced/Failed SOP Sequence item in the DICOM JSON model (PS3.18 Annex F)."""
    item: dict[str, object] = {
        "00081150": {"vr": "UI", "Value": [SOP_CLASS]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }
    if tag:
        item[tag] = {"vr": "US", "Value": [code]}
    return item


# A 202/409-style answer as PS3.18 Table 10.5.3-2 lays it out: two stored (one with coercion, B000),
# one refused with 0xA700 (out of resources), one a duplicate (0x0111).
JSON_RESPONSE = {
    "00081190": {"vr": "UR", "Value": [f"https://dicom.example/studies/{STUDY}"]},
    "00081198": {
        "vr": "SQ",
        "Value": [_ref(FAILED_REF, "00081197", 0xA700), _ref(DUPLICATE, "00081197", 0x0111)],
    },
    "00081199": {"vr": "SQ", "Value": [_ref(OK_PLAIN), _ref(OK_COERCED, "00081196", 0xB000)]},
}


def _xml_item(number: int, uid: str, tag: str | None = None, code: str | None = None) -> str:
    extra = (
        f'<DicomAttribute tag="{tag}" vr="US"><Value number="1">{code}</Value></DicomAttribute>'
        if tag
        else ""
    )
    return (
        f'<Item number="{number}">'
        '<DicomAttribute tag="00081150" vr="UI" keyword="ReferencedSOPClassUID">'
        f'<Value number="1">{SOP_CLASS}</Value></DicomAttribute>'
        '<DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID">'
        f'<Value number="1">{uid}</Value></DicomAttribute>{extra}</Item>'
    )


# The same answer in the Native DICOM Model (PS3.19 Annex A), as application/dicom+xml.
XML_RESPONSE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
    '<DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">'
    + _xml_item(1, FAILED_REF, "00081197", "42752")
    + _xml_item(2, DUPLICATE, "00081197", "273")
    + "</DicomAttribute>"
    '<DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">'
    + _xml_item(1, OK_PLAIN)
    + _xml_item(2, OK_COERCED, "00081196", "45056")
    + "</DicomAttribute></NativeDicomModel>"
).encode()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (json.dumps(JSON_RESPONSE).encode(), "application/dicom+json"),
        (XML_RESPONSE, "application/dicom+xml"),
        (XML_RESPONSE, None),  # Orthanc sends no Content-Type with a 409: sniffed
    ],
    ids=["json", "xml", "xml-untyped"],
)
def test_stow_response_parsed_into_stored_and_failed(body: bytes, content_type: str | None) -> None:
    parsed = dw.parse_stow_response(body, content_type)
    assert parsed.stored == {OK_PLAIN: None, OK_COERCED: 0xB000}
    assert parsed.failed == {FAILED_REF: 0xA700, DUPLICATE: 0x0111}


def test_results_per_instance_from_a_409() -> None:
    parsed = dw.parse_stow_response(json.dumps(JSON_RESPONSE).encode(), "application/dicom+json")
    results = {
        uid: dw._result(uid, parsed, 409, alone=False)
        for uid in (OK_PLAIN, OK_COERCED, FAILED_REF, DUPLICATE)
    }
    assert results[OK_PLAIN] == dw.InstanceResult(OK_PLAIN, "stored", http_status=409)
    assert results[OK_COERCED] is not None and results[OK_COERCED].warning_reason == 0xB000
    assert results[FAILED_REF] is not None and results[FAILED_REF].outcome == "failed"
    assert results[FAILED_REF].reason == "dicomweb-failure-0xA700"
    assert results[DUPLICATE] is not None and results[DUPLICATE].outcome == "already_present"
    # Not named in a 409: unknown in a batch (re-sent alone), failed when it was sent alone.
    assert dw._result("2.25.99", parsed, 409, alone=False) is None
    alone = dw._result("2.25.99", parsed, 409, alone=True)
    assert alone is not None and alone.outcome == "failed" and alone.reason == "dicomweb-http-409"
    # A 200 means every instance was stored, named or not.
    stored = dw._result("2.25.99", dw.StowResponse({}, {}), 200, alone=False)
    assert stored is not None and stored.outcome == "stored"


@pytest.mark.parametrize("body", [b"", b"   ", b"<html>Bad Gateway", b"{not json", b"[]", b'{"00081199": 5}'])
def test_unparsable_or_empty_answers_name_nothing(body: bytes) -> None:
    assert dw.parse_stow_response(body, None) == dw.StowResponse({}, {})


def test_hex_reason_strings_are_read() -> None:
    body = XML_RESPONSE.replace(b">42752<", b">0xA700<")
    assert dw.parse_stow_response(body).failed[FAILED_REF] == 0xA700
    # A bare hex code (no 0x) is read as hex; an unreadable one leaves the code out, not the instance.
    assert dw.parse_stow_response(XML_RESPONSE.replace(b">42752<", b">A700<")).failed[FAILED_REF] == 0xA700
    garbled = dw.parse_stow_response(XML_RESPONSE.replace(b">45056<", b">n/a<"))
    assert garbled.stored == {OK_PLAIN: None, OK_COERCED: None}


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        (
            "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb",
            "google",
        ),
        ("http://127.0.0.1:8042/dicom-web", "none"),
        ("http://localhost:8042/dicom-web", "none"),
        ("http://[::1]:8042/dicom-web", "none"),
        ("https://pacs.example.org/dicom-web", "basic"),
        ("https://healthcare.googleapis.com.evil.example/dicomWeb", "basic"),
    ],
)
def test_auth_is_chosen_by_host(url: str, kind: str) -> None:
    assert dw.auth_kind(url) == kind


def test_basic_auth_comes_from_the_secret_version() -> None:
    asked: list[str] = []

    def reader(version: str) -> bytes:
        asked.append(version)
        return b"sendit:pa:ss\n"

    version = "projects/p/secrets/dicomweb/versions/3"
    session = dw.build_session(
        "https://pacs.example.org/dicom-web", auth_secret=version, secret_reader=reader
    )
    assert asked == [version]
    assert isinstance(session.auth, requests.auth.HTTPBasicAuth)
    assert (session.auth.username, session.auth.password) == ("sendit", "pa:ss")
    with pytest.raises(ValueError, match="SENDIT_DICOMWEB_AUTH_SECRET"):
        dw.build_session("https://pacs.example.org/dicom-web")
    with pytest.raises(ValueError, match="user:password"):
        dw.build_session(
            "https://pacs.example.org/x", auth_secret=version, secret_reader=lambda _: b"nocolon"
        )


def test_healthcare_api_gets_an_authorized_session_and_loopback_none() -> None:
    url = "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb"
    session = dw.build_session(url, credentials=AnonymousCredentials())
    assert isinstance(session, AuthorizedSession)
    local = dw.build_session("http://127.0.0.1:8042/dicom-web")
    assert type(local) is requests.Session and local.auth is None
    adapter = local.get_adapter("http://127.0.0.1:8042/")
    assert adapter.max_retries.total == 6 and 503 in adapter.max_retries.status_forcelist  # type: ignore[attr-defined]


def _instance(index: int, rows: int = 32) -> dw.Instance:
    buffer = io.BytesIO()
    dcmwrite(buffer, make_instance(StudySpec(rows=rows, columns=rows), 1, index), enforce_file_format=True)
    return dw.Instance.from_bytes(buffer.getvalue())


def test_instances_read_their_uids_and_junk_is_refused() -> None:
    instance = _instance(3)
    assert instance.sop_instance_uid.endswith(".1.1.3") and instance.series_uid.endswith(".1.1")
    assert "data" not in repr(instance)
    with pytest.raises(dw.InvalidInstance):
        dw.Instance.from_bytes(b"not a dicom file")


def test_batches_stay_under_the_limit_and_keep_order() -> None:
    instances = [_instance(i) for i in range(1, 11)]
    size = len(instances[0].data) + 128
    groups = list(dw.batches(instances, max_bytes=3 * size))
    assert [len(g) for g in groups] == [3, 3, 3, 1]
    assert [i for g in groups for i in g] == instances
    assert [len(g) for g in dw.batches(instances, max_bytes=10)] == [1] * 10  # oversized travel alone
    body = dw.encode_multipart([i.data for i in groups[0]], "b0undary")
    assert body.count(b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n") == 3
    assert body.endswith(b"--b0undary--\r\n") and len(body) <= 3 * size


BASE = {
    "GOOGLE_CLOUD_PROJECT": "proj",
    "SENDIT_STAGING_BUCKET": "stage",
    "SENDIT_PROCESSING_BUCKET": "proc",
    "SENDIT_DESTINATION_BUCKET": "dest",
    "SENDIT_BIGQUERY_TABLE": "proj.sendit.dicom",
    "SENDIT_DELIVER_TOPIC": "sendit-deliver",
    "SENDIT_SECRET_KEY": "a-secret-key-of-enough-length",
}


def test_delivery_target_settings() -> None:
    s = Settings.from_env(BASE)
    assert s.delivery_targets == ("bucket",) and s.dicomweb_url is None
    assert s.dicomweb_max_request_bytes == dw.DICOMWEB_MAX_REQUEST_BYTES
    s = Settings.from_env(
        {
            **BASE,
            "SENDIT_DELIVERY_TARGETS": " Bucket, dicomweb ",
            "SENDIT_DICOMWEB_URL": "http://127.0.0.1:1/dw/",
        }
    )
    assert s.delivery_targets == ("bucket", "dicomweb") and s.dicomweb_url == "http://127.0.0.1:1/dw"
    healthcare = (
        "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb"
    )
    s = Settings.from_env({**BASE, "SENDIT_DELIVERY_TARGETS": "dicomweb", "SENDIT_DICOMWEB_URL": healthcare})
    assert s.delivery_targets == ("dicomweb",)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"SENDIT_DELIVERY_TARGETS": "dicomweb"}, "SENDIT_DICOMWEB_URL (required"),
        ({"SENDIT_DELIVERY_TARGETS": "bucket,s3"}, "SENDIT_DELIVERY_TARGETS: expected"),
        ({"SENDIT_DICOMWEB_URL": "ftp://pacs.secret-host.example"}, "expected an http(s) service root"),
        ({"SENDIT_DICOMWEB_URL": "http://pacs.secret-host.example/dw"}, "must use https"),
        ({"SENDIT_DICOMWEB_URL": "https://pacs.secret-host.example/dw"}, "AUTH_SECRET: required"),
        (
            {
                "SENDIT_DICOMWEB_URL": "https://pacs.secret-host.example/dw",
                "SENDIT_DICOMWEB_AUTH_SECRET": "pw",
            },
            "expected projects/P/secrets/S/versions/V",
        ),
        ({"SENDIT_DICOMWEB_MAX_REQUEST_BYTES": "1000"}, "at least 65536"),
    ],
)
def test_bad_dicomweb_settings_are_named_not_quoted(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        Settings.from_env({**BASE, **extra})
    assert "secret-host" not in str(caught.value)
