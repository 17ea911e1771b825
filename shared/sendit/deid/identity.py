"""Pseudonymous identities: keyed (HMAC-SHA256) by default, or an honest-broker HTTP service.

Everything here is deterministic for a given secret key: parallel function instances, separate processes
and uploads months apart derive the same patient pseudonym, accession pseudonym, UIDs and date shift, with
no coordination and no stored mapping. Without the key, the pseudonyms cannot be linked back to the
originals (unlike an unkeyed hash, which anyone holding a list of candidate identifiers can reverse).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
UID_ROOT = "2.25."


class MissingKeyError(ValueError):
    """No usable secret key: nothing may be de-identified without SENDIT_SECRET_KEY."""

    def __init__(self, detail: str = "is missing") -> None:
        super().__init__(
            f"SENDIT_SECRET_KEY {detail}: de-identification needs a secret key of at least "
            f"{MIN_KEY_BYTES} bytes (Secret Manager in the cloud, SENDIT_SECRET_KEY or --key-file offline)"
        )


class IdentityError(RuntimeError):
    """The identity provider could not answer (e.g. the honest broker is unreachable): transient."""


class IdentityRefused(Exception):
    """The identity provider refused our credentials (HTTP 401/403), after a fresh token was tried:
    permanent for this file (the engine records FAILED with this message, which names no identifier)."""


def check_key(secret_key: bytes | str | None) -> bytes:
    """Return the key as bytes, or raise ``MissingKeyError`` (never echoing the key)."""
    if secret_key is None:
        raise MissingKeyError()
    key = secret_key.encode("utf-8") if isinstance(secret_key, str) else bytes(secret_key)
    if not key.strip():
        raise MissingKeyError()
    if len(key) < MIN_KEY_BYTES:
        raise MissingKeyError("is too short")
    return key


def keyed_digest(secret_key: bytes, value: str, length: int = 16) -> str:
    """Hex HMAC-SHA256 of ``value`` under ``secret_key``, cut to ``length`` hex characters."""
    digest = hmac.new(secret_key, value.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:length]


def _uid_from_digest(digest: bytes) -> str:
    """A ``2.25.<int>`` UID from 16 digest bytes, shaped as an RFC 9562 version-8 (custom) UUID."""
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return UID_ROOT + str(int.from_bytes(bytes(raw), "big"))


@dataclass(frozen=True)
class Subject:
    """The original identifiers one file is filed under (PHI: never log it), and the attributes they were
    read from (``IdSource``: the entity's and the item's id source)."""

    patient_id: str
    accession: str | None = None
    study_uid: str | None = None
    entity_source: str = "PatientID"
    item_source: str = "AccessionNumber"


ENTITY_DEFAULT, ITEM_DEFAULT = "PatientID", "AccessionNumber"


@dataclass(frozen=True)
class IdSource:
    """Which attributes define the patient entity and the item (SENDIT_ENTITY_ID / SENDIT_ITEM_ID).

    Fallback when the chosen attribute is absent or empty (docs/identity.md): the default attribute
    (PatientID / AccessionNumber), its value prefixed with its keyword and a colon so it can never equal
    a value of the chosen attribute; then, for the entity, the engine's ``study:<StudyInstanceUID>``; for
    the item, no item. With the defaults the values are exactly the attributes' values, as before.
    """

    entity: str = ENTITY_DEFAULT
    item: str = ITEM_DEFAULT

    def __post_init__(self) -> None:
        from pydicom.datadict import tag_for_keyword

        for role, keyword in (("SENDIT_ENTITY_ID", self.entity), ("SENDIT_ITEM_ID", self.item)):
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"{role}: not a DICOM attribute keyword")

    def read(self, ds: Dataset) -> tuple[str, str, str | None, str]:
        """(entity value, its source, item value or None, its source); the entity value may be ""."""
        entity, entity_source = _first(ds, self.entity, ENTITY_DEFAULT)
        item, item_source = _first(ds, self.item, ITEM_DEFAULT)
        return entity or "", entity_source, item, item_source


def _first(ds: Dataset, chosen: str, default: str) -> tuple[str | None, str]:
    from pydicom.datadict import tag_for_keyword

    from sendit.deid.plan import text_value

    value = text_value(ds, int(tag_for_keyword(chosen)))  # type: ignore[arg-type]
    if value or chosen == default:
        return value or None, chosen
    fallback = text_value(ds, int(tag_for_keyword(default)))  # type: ignore[arg-type]
    return (f"{default}:{fallback}" if fallback else None), default


@dataclass(frozen=True)
class Identity:
    """What the provider returns for a subject: pseudonyms and the per-patient date shift (days)."""

    patient_id: str
    accession: str | None
    date_shift: int


@runtime_checkable
class IdentityProvider(Protocol):
    """Pluggable source of pseudonyms. Implementations must be thread-safe and deterministic."""

    def identity(self, subject: Subject) -> Identity:
        """Pseudonyms and date shift for one subject."""
        ...

    def uid(self, original: str) -> str:
        """The replacement of one UID (the same input always gives the same output)."""
        ...


class HmacIdentity:
    """Keyed derivation: HMAC-SHA256 under the secret key, one domain label per kind of identifier."""

    def __init__(self, secret_key: bytes | str, date_shift_max_days: int = 365) -> None:
        self._key = check_key(secret_key)
        if date_shift_max_days < 1:
            raise ValueError("date_shift_max_days must be at least 1")
        self.date_shift_max_days = date_shift_max_days

    def _mac(self, domain: str, value: str) -> bytes:
        return hmac.new(self._key, f"{domain}\x00{value}".encode(), hashlib.sha256).digest()

    def patient_pseudonym(self, patient_id: str) -> str:
        return self._mac("patient", patient_id).hex()[:16].upper()

    def accession_pseudonym(self, accession: str) -> str:
        # AccessionNumber is SH: at most 16 characters.
        return self._mac("accession", accession).hex()[:16].upper()

    def date_shift(self, patient_id: str) -> int:
        """A shift in [-N, -1] or [1, N] days, the same for every study of the patient."""
        n = self.date_shift_max_days
        pick = int.from_bytes(self._mac("date-shift", patient_id)[:8], "big") % (2 * n)
        return pick - n if pick < n else pick - n + 1

    def identity(self, subject: Subject) -> Identity:
        return Identity(
            patient_id=self.patient_pseudonym(subject.patient_id),
            accession=self.accession_pseudonym(subject.accession) if subject.accession else None,
            date_shift=self.date_shift(subject.patient_id),
        )

    def uid(self, original: str) -> str:
        return _uid_from_digest(self._mac("uid", original))

    def digest(self, value: str, length: int = 16) -> str:
        return keyed_digest(self._key, value, length)


class HttpIdentity:
    """An honest-broker service (docs/identity.md has the protocol): one POST per new subject to
    ``<url>/identifiers`` with a bearer token, answers cached per process (bounded LRU).

    UIDs are not sent to the broker: they are derived locally with the keyed HMAC, so the secret key is
    still required. The broker keeps the original <-> pseudonym mapping under its own access control;
    this class keeps none beyond its cache. Connection errors, timeouts and 429/5xx answers are retried
    (urllib3 ``Retry``, exponential backoff) and then raise ``IdentityError`` (transient: the file is
    retried); 401/403 is tried once more with a fresh token and then raises ``IdentityRefused``.
    """

    def __init__(
        self,
        url: str,
        secret_key: bytes | str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        cache_size: int = 4096,
        date_shift_max_days: int = 365,
        collection: str = "sendit",
        id_source: IdSource | None = None,
        token: Callable[[bool], str | None] | None = None,
        backoff: float = 0.2,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.collection = collection
        self.id_source = id_source or IdSource()
        self._uids = HmacIdentity(secret_key, date_shift_max_days)
        self._max = date_shift_max_days
        self._cache: OrderedDict[Subject, Identity] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._token = token or (lambda fresh: None)
        self._session = _session(retries, backoff)
        self.tries = retries + 1

    def uid(self, original: str) -> str:
        return self._uids.uid(original)

    def identity(self, subject: Subject) -> Identity:
        with self._lock:
            hit = self._cache.get(subject)
            if hit is not None:
                self._cache.move_to_end(subject)
                return hit
        found = self._ask(subject)
        with self._lock:
            self._cache[subject] = found
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return found

    def request_body(self, subject: Subject) -> dict[str, Any]:
        """The JSON the broker gets for one subject (docs/identity.md)."""
        items = [{"id": subject.accession, "id_source": subject.item_source}] if subject.accession else []
        return {
            "collection": self.collection,
            "id_source": {"entity": self.id_source.entity, "item": self.id_source.item},
            "identifiers": [{"id": subject.patient_id, "id_source": subject.entity_source, "items": items}],
        }

    def _ask(self, subject: Subject) -> Identity:
        body = self.request_body(subject)
        response = self._post(body, fresh=False)
        if response.status_code in (401, 403):
            response = self._post(body, fresh=True)  # an expired token: one more try with a new one
            if response.status_code in (401, 403):
                raise IdentityRefused(
                    f"identity service refused the credentials (HTTP {response.status_code})"
                )
        if response.status_code != 200:
            raise IdentityError(
                f"identity service answered HTTP {response.status_code} after {self.tries} tries"
            )
        try:
            return self._parse(response.json(), subject)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise IdentityError("identity service answered in an unexpected shape") from exc

    def _post(self, body: dict[str, Any], *, fresh: bool) -> requests.Response:
        import requests

        headers = {"Accept": "application/json"}
        try:
            token = self._token(fresh)
        except Exception as exc:  # ADC unavailable, metadata server slow: retry the file later
            raise IdentityError(f"no token for the identity service ({type(exc).__name__})") from exc
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return self._session.post(
                self.url + "/identifiers", json=body, headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            # The exception text may echo the URL, never the identifiers we sent; name the type only.
            raise IdentityError(
                f"identity service unavailable ({_failure(exc)} after {self.tries} tries)"
            ) from exc

    def _parse(self, answer: Any, subject: Subject) -> Identity:
        result = answer["results"][0]
        patient = str(result["suid"])
        shift = int(result["jitter"])
        items = result.get("items") or []
        accession = str(items[0]["suid"]) if subject.accession and items else None
        if not _pseudonym_ok(patient, 64) or (accession is not None and not _pseudonym_ok(accession, 16)):
            raise IdentityError("identity service answered an invalid pseudonym")
        if shift == 0 or abs(shift) > self._max:
            raise IdentityError("identity service answered an invalid date shift")
        return Identity(patient_id=patient, accession=accession, date_shift=shift)


def _failure(exc: Exception) -> str:
    """ "timeout" when the last try timed out (requests wraps urllib3's exhausted retries), else the type."""
    import requests
    from urllib3.exceptions import MaxRetryError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    if isinstance(exc, requests.Timeout):
        return "timeout"
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, MaxRetryError) and isinstance(cause.reason, Urllib3Timeout):
        return "timeout"
    return type(exc).__name__


def _pseudonym_ok(value: str, longest: int) -> bool:
    """A pseudonym fits its VR (LO 64, SH 16) and an object name: printable ASCII, no backslash or slash."""
    return (
        0 < len(value) <= longest and value.isascii() and value.isprintable() and not set(value) & set("\\/")
    )


def _session(retries: int, backoff: float) -> requests.Session:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"POST"}),  # a lookup: the same question always gets the same answer
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


class IdTokenSource:
    """ID tokens for the broker from Application Default Credentials (audience: the broker's URL),
    cached until shortly before they expire; ``fresh=True`` fetches a new one."""

    LIFETIME = 3000.0  # seconds: Google ID tokens live one hour; fetch a new one after 50 minutes

    def __init__(self, audience: str) -> None:
        self.audience = audience
        self._token: str | None = None
        self._until = 0.0
        self._lock = threading.Lock()

    def __call__(self, fresh: bool) -> str | None:
        with self._lock:
            if fresh or self._token is None or time.monotonic() >= self._until:
                import google.auth.transport.requests
                from google.oauth2 import id_token

                request = google.auth.transport.requests.Request()
                self._token = str(id_token.fetch_id_token(request, self.audience))
                self._until = time.monotonic() + self.LIFETIME
            return self._token


def _loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in {"127.0.0.1", "localhost", "::1"}


def provider_from_settings(settings: Any) -> IdentityProvider | None:
    """The configured identity provider (``settings``: a ``sendit.config.Settings``; not imported here,
    config sits above the engine): None for the default keyed one, else the HTTP broker client.

    Raises ``ValueError`` naming the variable when the configuration cannot work (never a value).
    """
    if settings.identity_provider != "http":
        return None
    url = settings.identity_url
    if not url:
        raise ValueError("SENDIT_IDENTITY_URL is required by SENDIT_IDENTITY_PROVIDER=http")
    token: Callable[[bool], str | None]
    if settings.identity_auth == "token":
        static = settings.identity_token
        if not static:
            raise ValueError("SENDIT_IDENTITY_TOKEN is required by SENDIT_IDENTITY_AUTH=token")
        token = lambda fresh: static  # noqa: E731 - the one token there is
    elif settings.identity_auth == "id-token":
        token = IdTokenSource(url)
    else:
        if not _loopback(url):
            raise ValueError("SENDIT_IDENTITY_AUTH=none is allowed for a loopback SENDIT_IDENTITY_URL only")
        token = lambda fresh: None  # noqa: E731
    return HttpIdentity(
        url,
        check_key(settings.secret_key),
        timeout=settings.identity_timeout,
        retries=settings.identity_retries,
        date_shift_max_days=settings.date_shift_max_days,
        collection=settings.collection,
        id_source=id_source_from_settings(settings),
        token=token,
    )


def id_source_from_settings(settings: Any) -> IdSource:
    return IdSource(settings.entity_id, settings.item_id)
