"""A DICOMweb client for the deliver stage (DICOM PS3.18): STOW-RS, QIDO-RS and WADO-RS.

``DicomwebClient.store(instances)`` stores de-identified instances in a DICOM server, idempotently:
per series it first asks QIDO-RS which SOP Instance UIDs the server already holds (those are reported
``already_present`` and not sent again), then sends the rest with STOW-RS to ``/studies/{study}`` in
multipart/related requests of at most ``max_request_bytes``. Each instance ends in one
``InstanceResult`` keyed by its SOP Instance UID: ``stored``, ``already_present`` or ``failed`` with the
server's Failure Reason (0008,1197). An instance the server neither stored nor named in its answer is
re-sent alone, so one bad instance never fails the others.

Errors: ``DicomwebUnavailable`` is transient (the server did not answer, or answered 408/429/5xx after
the retries with backoff that urllib3's ``Retry`` performs): the caller raises it on so Pub/Sub
redelivers. ``DicomwebRequestError`` is a refusal of the whole request (401, 403, 404, 415...): a
configuration problem that retrying does not cure. Messages name statuses and counts only.

Auth (``auth_kind``): an OAuth access token from Application Default Credentials for the Cloud Healthcare
API, HTTP basic auth from a Secret Manager secret version ("user:password") for any other server, none on
loopback. Nothing here imports Firestore or the pipeline state.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import requests
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from sendit.config import DICOMWEB_MAX_REQUEST_BYTES

if TYPE_CHECKING:
    from sendit.config import Settings

log = logging.getLogger(__name__)

HEALTHCARE_HOST = "healthcare.googleapis.com"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
DICOM_JSON = "application/dicom+json"

# PS3.18 Table 10.5.3-1 / PS3.4 C-STORE status codes the client acts on.
FAILURE_PROCESSING = 0x0110  # Processing failure
FAILURE_DUPLICATE = 0x0111  # Duplicate SOP Instance: the server holds it already

# Tags of the STOW-RS response (PS3.18 Table 10.5.3-2..4) and of QIDO-RS results.
TAG_FAILED_SOP_SEQUENCE = "00081198"
TAG_REFERENCED_SOP_SEQUENCE = "00081199"
TAG_REFERENCED_SOP_INSTANCE_UID = "00081155"
TAG_FAILURE_REASON = "00081197"
TAG_WARNING_REASON = "00081196"
TAG_STUDY_INSTANCE_UID = "0020000D"
TAG_SERIES_INSTANCE_UID = "0020000E"
TAG_SOP_INSTANCE_UID = "00080018"

STORED: Final = "stored"
ALREADY_PRESENT: Final = "already_present"
FAILED: Final = "failed"
Outcome = Literal["stored", "already_present", "failed"]
AuthKind = Literal["google", "basic", "none"]
SecretReader = Callable[[str], bytes]


class DicomwebError(RuntimeError):
    """Base class of DICOMweb errors; messages carry statuses and counts, never header values."""


class DicomwebUnavailable(DicomwebError):
    """Transient: the server was unreachable or overloaded after all retries. Let Pub/Sub redeliver."""


class DicomwebRequestError(DicomwebError):
    """The server refused a whole request (auth, not found, unsupported media): permanent for now."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class InvalidInstance(ValueError):
    """The bytes are not a DICOM instance with Study, Series and SOP Instance UIDs."""


@dataclass(frozen=True)
class Instance:
    """One DICOM instance to store: its UIDs (pseudonymous after de-identification) and its bytes."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    data: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, data: bytes) -> Instance:
        """Read the three UIDs from a Part 10 file's header (pixel data is not parsed)."""
        try:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
            uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        except (InvalidDicomError, AttributeError, ValueError, EOFError, OSError) as exc:
            raise InvalidInstance(f"not a storable DICOM instance ({type(exc).__name__})") from None
        if not all(uids):
            raise InvalidInstance("not a storable DICOM instance (a UID is empty)")
        return cls(*uids, data=data)


@dataclass(frozen=True)
class InstanceResult:
    """What the server did with one instance."""

    sop_instance_uid: str
    outcome: Outcome
    failure_reason: int | None = None  # (0008,1197), when the server gave one
    warning_reason: int | None = None  # (0008,1196): stored with coercion or discarded elements
    http_status: int | None = None  # of the STOW-RS request that decided the outcome
    invalid: bool = False  # refused before sending: not a DICOM instance with its three UIDs

    @property
    def reason(self) -> str | None:
        """A short reason for a state record: ``dicomweb-failure-0x0110``, ``dicomweb-http-400`` or
        ``dicomweb-invalid-instance``."""
        if self.outcome != FAILED:
            return None
        if self.invalid:
            return "dicomweb-invalid-instance"
        if self.failure_reason is not None:
            return f"dicomweb-failure-0x{self.failure_reason:04X}"
        return f"dicomweb-http-{self.http_status}"


@dataclass
class StoreReport:
    """The result of ``DicomwebClient.store``: one result per SOP Instance UID, and what it cost."""

    results: dict[str, InstanceResult] = field(default_factory=dict)
    requests: int = 0
    bytes_sent: int = 0

    def counts(self) -> dict[str, int]:
        out = {STORED: 0, ALREADY_PRESENT: 0, FAILED: 0}
        for result in self.results.values():
            out[result.outcome] += 1
        return out


@dataclass(frozen=True)
class StowResponse:
    """A parsed STOW-RS response: referenced (stored) UIDs with warning, failed UIDs with reason."""

    stored: dict[str, int | None]
    failed: dict[str, int | None]


# ---------------------------------------------------------------- STOW-RS response parsing (PS3.18 10.5.3)
def parse_stow_response(body: bytes, content_type: str | None = None) -> StowResponse:
    """Parse a STOW-RS response in the DICOM JSON (PS3.18 F) or Native DICOM XML (PS3.19 A) model.

    An empty or unparsable body yields empty results (the caller treats unnamed instances as unknown).
    """
    text = body.strip()
    if not text:
        return StowResponse({}, {})
    is_xml = (content_type and "xml" in content_type.lower()) or text.startswith(b"<")
    try:
        return _parse_stow_xml(text) if is_xml else _parse_stow_json(text)
    except (ValueError, ET.ParseError, TypeError, AttributeError, KeyError, IndexError):
        return StowResponse({}, {})


def _json_value(dataset: dict[str, Any], tag: str) -> Any:
    values = dataset.get(tag, {}).get("Value") or []
    return values[0] if values else None


def _reason(value: Any) -> int | None:
    """A US reason code: JSON gives a number; XML (and some servers) a decimal or hex string."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    raw = str(value).strip()
    for base in (16, 10) if raw.lower().startswith("0x") else (10, 16):
        try:
            return int(raw, base)
        except ValueError:
            continue
    return None  # an unreadable code must not hide which instances were stored


def _parse_stow_json(text: bytes) -> StowResponse:
    dataset = json.loads(text)
    if isinstance(dataset, list):  # a few servers wrap the dataset in a list
        dataset = dataset[0] if dataset else {}
    stored: dict[str, int | None] = {}
    failed: dict[str, int | None] = {}
    for item in dataset.get(TAG_REFERENCED_SOP_SEQUENCE, {}).get("Value") or []:
        uid = _json_value(item, TAG_REFERENCED_SOP_INSTANCE_UID)
        if uid:
            stored[str(uid)] = _reason(_json_value(item, TAG_WARNING_REASON))
    for item in dataset.get(TAG_FAILED_SOP_SEQUENCE, {}).get("Value") or []:
        uid = _json_value(item, TAG_REFERENCED_SOP_INSTANCE_UID)
        if uid:
            failed[str(uid)] = _reason(_json_value(item, TAG_FAILURE_REASON))
    return StowResponse(stored, failed)


def _parse_stow_xml(text: bytes) -> StowResponse:
    # The configured server's answer; the bundled expat refuses entity-expansion bombs.
    root = ET.fromstring(text)
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""

    def items(tag: str) -> Iterator[ET.Element]:
        for attribute in root.findall(f"{ns}DicomAttribute[@tag='{tag}']"):
            yield from attribute.findall(f"{ns}Item")

    def value(item: ET.Element, tag: str) -> str | None:
        found = item.find(f"{ns}DicomAttribute[@tag='{tag}']/{ns}Value")
        return found.text.strip() if found is not None and found.text else None

    stored = {
        uid: _reason(value(item, TAG_WARNING_REASON))
        for item in items(TAG_REFERENCED_SOP_SEQUENCE)
        if (uid := value(item, TAG_REFERENCED_SOP_INSTANCE_UID))
    }
    failed = {
        uid: _reason(value(item, TAG_FAILURE_REASON))
        for item in items(TAG_FAILED_SOP_SEQUENCE)
        if (uid := value(item, TAG_REFERENCED_SOP_INSTANCE_UID))
    }
    return StowResponse(stored, failed)


# ---------------------------------------------------------------- multipart/related bodies
def encode_multipart(parts: Iterable[bytes], boundary: str) -> bytes:
    """A multipart/related body (RFC 2387) of application/dicom parts.

    requests-toolbelt's MultipartEncoder writes multipart/form-data parts (with Content-Disposition);
    STOW-RS wants plain related parts, which take a few lines.
    """
    delimiter = f"--{boundary}\r\n".encode()
    chunks = []
    for part in parts:
        chunks += [delimiter, b"Content-Type: application/dicom\r\n\r\n", part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def decode_multipart(content: bytes, content_type: str) -> list[bytes]:
    """The parts of a multipart/related WADO-RS answer (requests-toolbelt's decoder)."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    return [part.content for part in MultipartDecoder(content, content_type).parts]


T = TypeVar("T")


def chunked(items: Iterable[T], cost: Callable[[T], int], max_bytes: int) -> Iterator[list[T]]:
    """Split ``items`` (in order) into runs whose costs add up to at most ``max_bytes``; an item costing
    more than that travels alone."""
    chunk: list[T] = []
    size = 0
    for item in items:
        weight = cost(item)
        if chunk and size + weight > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += weight
    if chunk:
        yield chunk


def batches(instances: list[Instance], max_bytes: int) -> Iterator[list[Instance]]:
    """Split instances (in order) into requests whose parts add up to at most ``max_bytes``.

    An instance larger than ``max_bytes`` travels alone: a server refusing it answers 413 for it only.
    """
    overhead = 128  # delimiter and part headers
    return chunked(instances, lambda instance: len(instance.data) + overhead, max_bytes)


# ---------------------------------------------------------------- sessions and auth
def auth_kind(url: str) -> AuthKind:
    """How to authenticate to a DICOMweb service root: by its host, nothing else."""
    host = (urlsplit(url).hostname or "").lower()
    if host in LOOPBACK_HOSTS:
        return "none"
    if host == HEALTHCARE_HOST:
        return "google"
    return "basic"


def read_secret(version: str) -> bytes:
    """The payload of a Secret Manager secret version (projects/P/secrets/S/versions/V)."""
    from google.cloud import secretmanager

    client = secretmanager.SecretManagerServiceClient()
    data: bytes = client.access_secret_version(name=version).payload.data
    return data


def retry_policy(retries: int = 6, backoff: float = 0.5, backoff_max: float = 20.0) -> Retry:
    """Retries with exponential backoff and jitter on refused connections, 408, 429 and 5xx.

    POST is retried too: a STOW-RS of the same instances again stores nothing twice (same SOP UIDs).
    With the defaults the waits add up to about 30 s before ``DicomwebUnavailable``.
    """
    return Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        backoff_factor=backoff,
        backoff_max=backoff_max,
        backoff_jitter=0.2,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def build_session(
    url: str,
    *,
    auth_secret: str | None = None,
    secret_reader: SecretReader = read_secret,
    credentials: Any = None,
    retry: Retry | None = None,
) -> requests.Session:
    """A requests session for ``url`` with the auth ``auth_kind`` picks and the retry policy mounted.

    ``credentials`` (google.auth) defaults to Application Default Credentials with the cloud-platform
    scope; ``google.auth.transport.requests.AuthorizedSession`` refreshes the access token as it expires.
    """
    kind = auth_kind(url)
    session: requests.Session
    if kind == "google":
        from google.auth.transport.requests import AuthorizedSession

        if credentials is None:
            import google.auth

            credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        session = AuthorizedSession(credentials)
    else:
        session = requests.Session()
        if kind == "basic":
            if not auth_secret:
                raise ValueError("a DICOMweb server off loopback needs SENDIT_DICOMWEB_AUTH_SECRET")
            user, sep, password = secret_reader(auth_secret).decode("utf-8").strip().partition(":")
            if not sep or not user:
                raise ValueError("the DICOMweb auth secret must hold user:password")
            session.auth = requests.auth.HTTPBasicAuth(user, password)
    adapter = HTTPAdapter(max_retries=retry or retry_policy())
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# ---------------------------------------------------------------- the client
class DicomwebClient:
    """STOW-RS / QIDO-RS / WADO-RS against one service root. Create once per instance and reuse."""

    def __init__(
        self,
        url: str,
        session: requests.Session | None = None,
        *,
        max_request_bytes: int = DICOMWEB_MAX_REQUEST_BYTES,
        timeout: tuple[float, float] = (10.0, 300.0),
        page_size: int = 1000,
    ) -> None:
        self.url = url.rstrip("/")
        self.session = session if session is not None else build_session(self.url)
        self.max_request_bytes = max_request_bytes
        self.timeout = timeout
        self.page_size = page_size

    @classmethod
    def from_settings(cls, settings: Settings, **session_options: Any) -> DicomwebClient:
        if not settings.dicomweb_url:
            raise ValueError("SENDIT_DICOMWEB_URL is not set")
        session = build_session(
            settings.dicomweb_url, auth_secret=settings.dicomweb_auth_secret, **session_options
        )
        return cls(settings.dicomweb_url, session, max_request_bytes=settings.dicomweb_max_request_bytes)

    # ------------------------------------------------------------ STOW-RS
    def store(self, instances: Iterable[Instance], *, skip_present: bool = True) -> StoreReport:
        """Store every instance not already on the server; one result per SOP Instance UID.

        ``skip_present=False`` sends without the QIDO-RS check (the server's own duplicate handling
        then decides: Orthanc keeps the first copy, a 0x0111 answer counts as already present).
        """
        report = StoreReport()
        series: dict[tuple[str, str], dict[str, Instance]] = {}
        for instance in instances:
            key = (instance.study_uid, instance.series_uid)
            series.setdefault(key, {}).setdefault(instance.sop_instance_uid, instance)
        for (study_uid, series_uid), by_uid in series.items():
            self._store_series(study_uid, series_uid, list(by_uid.values()), report, skip_present)
        return report

    def store_files(
        self, files: Mapping[str, bytes], *, skip_present: bool = True
    ) -> tuple[dict[str, InstanceResult], StoreReport]:
        """For the deliver stage: file key -> Part 10 bytes in, file key -> result out.

        Bytes that are not a storable instance fail alone (``invalid``); two files with one SOP Instance
        UID are sent once and get the same result.
        """
        instances: dict[str, Instance] = {}
        results: dict[str, InstanceResult] = {}
        for key, data in files.items():
            try:
                instances[key] = Instance.from_bytes(data)
            except InvalidInstance:
                results[key] = InstanceResult("", FAILED, invalid=True)
        report = self.store(instances.values(), skip_present=skip_present)
        for key, instance in instances.items():
            results[key] = report.results[instance.sop_instance_uid]
        return results, report

    def _store_series(
        self,
        study_uid: str,
        series_uid: str,
        instances: list[Instance],
        report: StoreReport,
        skip_present: bool,
    ) -> None:
        present = self.instance_uids(study_uid, series_uid) if skip_present else set()
        pending = []
        for instance in instances:
            if instance.sop_instance_uid in present:
                report.results[instance.sop_instance_uid] = InstanceResult(
                    instance.sop_instance_uid, ALREADY_PRESENT
                )
            else:
                pending.append(instance)
        for batch in batches(pending, self.max_request_bytes):
            unacknowledged = self._stow(study_uid, batch, report)
            # Re-send alone what the server neither stored nor named, to tell the bad one from the rest.
            if len(batch) > 1:
                for instance in unacknowledged:
                    self._stow(study_uid, [instance], report)
        log.info(
            "dicomweb: series stored",
            extra={"series_uid": series_uid, "instances": len(instances), **_counts(report, instances)},
        )

    def _stow(self, study_uid: str, batch: list[Instance], report: StoreReport) -> list[Instance]:
        """One STOW-RS request; records results and returns the instances the answer did not name."""
        boundary = uuid.uuid4().hex
        body = encode_multipart((i.data for i in batch), boundary)
        response = self._request(
            "POST",
            f"studies/{study_uid}",
            ok=(200, 202, 400, 409, 413),
            data=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": DICOM_JSON,
            },
        )
        report.requests += 1
        report.bytes_sent += len(body)
        status = response.status_code
        parsed = parse_stow_response(response.content, response.headers.get("Content-Type"))
        unacknowledged = []
        for instance in batch:
            result = _result(instance.sop_instance_uid, parsed, status, alone=len(batch) == 1)
            if result is None:
                unacknowledged.append(instance)
            else:
                report.results[instance.sop_instance_uid] = result
        return unacknowledged

    # ------------------------------------------------------------ QIDO-RS
    def search_studies(self, **params: str) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies`` with query parameters (e.g. ``StudyInstanceUID=...``, ``includefield``)."""
        return self._search("studies", params)

    def search_instances(
        self, study_uid: str, series_uid: str | None = None, **params: str
    ) -> list[dict[str, Any]]:
        """QIDO-RS instances of a study (or of one series of it), every page."""
        path = f"studies/{study_uid}" + (f"/series/{series_uid}" if series_uid else "") + "/instances"
        return self._search(path, params)

    def instance_uids(self, study_uid: str, series_uid: str | None = None) -> set[str]:
        """The SOP Instance UIDs the server holds for a study or series (QIDO-RS)."""
        found = self.search_instances(study_uid, series_uid, includefield=TAG_SOP_INSTANCE_UID)
        return {str(uid) for item in found if (uid := _json_value(item, TAG_SOP_INSTANCE_UID))}

    def _search(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        while True:
            page_params = {**params, "limit": str(self.page_size), "offset": str(len(results))}
            response = self._request(
                "GET", path, ok=(200, 204, 404), params=page_params, headers={"Accept": DICOM_JSON}
            )
            page = response.json() if response.status_code == 200 and response.content.strip() else []
            results.extend(page)
            if len(page) < self.page_size:
                return results

    # ------------------------------------------------------------ WADO-RS
    def retrieve_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> bytes:
        """WADO-RS of one instance, in the transfer syntax it was stored in."""
        response = self._request(
            "GET",
            f"studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}",
            ok=(200,),
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        parts = decode_multipart(response.content, response.headers.get("Content-Type", ""))
        if len(parts) != 1:
            raise DicomwebRequestError(f"WADO-RS answered {len(parts)} parts for one instance", 200)
        return parts[0]

    # ------------------------------------------------------------ transport
    def _request(self, method: str, path: str, *, ok: tuple[int, ...], **kwargs: Any) -> requests.Response:
        from google.auth.exceptions import GoogleAuthError

        try:
            response = self.session.request(method, f"{self.url}/{path}", timeout=self.timeout, **kwargs)
        except (requests.RequestException, GoogleAuthError) as exc:
            raise DicomwebUnavailable(f"DICOMweb {method} failed: {type(exc).__name__}") from None
        status = response.status_code
        if status in RETRY_STATUSES:
            raise DicomwebUnavailable(f"DICOMweb {method} answered {status} after retries")
        if status not in ok:
            raise DicomwebRequestError(f"DICOMweb {method} answered {status}", status)
        return response


def _result(uid: str, parsed: StowResponse, status: int, *, alone: bool) -> InstanceResult | None:
    """One instance's outcome from a STOW-RS answer; None when the answer does not say."""
    if uid in parsed.failed:
        reason = parsed.failed[uid]
        if reason == FAILURE_DUPLICATE:
            return InstanceResult(uid, ALREADY_PRESENT, failure_reason=reason, http_status=status)
        return InstanceResult(uid, FAILED, failure_reason=reason, http_status=status)
    if uid in parsed.stored:
        return InstanceResult(uid, STORED, warning_reason=parsed.stored[uid], http_status=status)
    if status == 200:  # PS3.18: 200 means every instance was stored, whatever the body lists
        return InstanceResult(uid, STORED, http_status=status)
    if alone:
        return InstanceResult(uid, FAILED, http_status=status)
    return None


def _counts(report: StoreReport, instances: list[Instance]) -> dict[str, int]:
    out = {STORED: 0, ALREADY_PRESENT: 0, FAILED: 0}
    for instance in instances:
        result = report.results.get(instance.sop_instance_uid)
        if result:
            out[result.outcome] += 1
    return out
