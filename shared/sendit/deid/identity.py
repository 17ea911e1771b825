"""Pseudonymous identities: keyed (HMAC-SHA256) by default, or an honest-broker HTTP service.

Everything here is deterministic for a given secret key: parallel function instances, separate processes
and uploads months apart derive the same patient pseudonym, accession pseudonym, UIDs and date shift, with
no coordination and no stored mapping. Without the key, the pseudonyms cannot be linked back to the
originals (unlike an unkeyed hash, which anyone holding a list of candidate identifiers can reverse).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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
    """The identity provider could not answer (e.g. the honest broker is unreachable)."""


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
    """The original identifiers one file is filed under (PHI: never log it)."""

    patient_id: str
    accession: str | None = None
    study_uid: str | None = None


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
    """An honest-broker service in the style of Stanford DASHER (see docs/deidentification.md).

    One POST per new subject to ``<url>/identifiers``; answers are cached per process (bounded LRU). UIDs
    are not sent to the broker: they are derived locally with the keyed HMAC, so the secret key is still
    required. The broker keeps the original <-> pseudonym mapping under its own access control.
    """

    def __init__(
        self,
        url: str,
        secret_key: bytes | str,
        *,
        timeout: float = 10.0,
        cache_size: int = 4096,
        date_shift_max_days: int = 365,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._uids = HmacIdentity(secret_key, date_shift_max_days)
        self._max = date_shift_max_days
        self._cache: OrderedDict[Subject, Identity] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

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

    def _ask(self, subject: Subject) -> Identity:
        item = [{"id": subject.accession, "id_source": "AccessionNumber"}] if subject.accession else []
        body = {"identifiers": [{"id": subject.patient_id, "id_source": "PatientID", "items": item}]}
        request = urllib.request.Request(
            self.url + "/identifiers",
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            # The exception text may echo the URL, never the identifiers we sent.
            raise IdentityError(f"identity service unavailable ({type(exc).__name__})") from exc
        try:
            result = answer["results"][0]
            patient = str(result["suid"])
            shift = int(result["jitter"])
            items = result.get("items") or []
            accession = str(items[0]["suid"]) if subject.accession and items else None
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise IdentityError("identity service answered in an unexpected shape") from exc
        if not patient or shift == 0 or abs(shift) > self._max:
            raise IdentityError("identity service answered an invalid pseudonym or date shift")
        return Identity(patient_id=patient, accession=accession, date_shift=shift)
