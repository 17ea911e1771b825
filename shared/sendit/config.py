"""Settings: read once from the environment into one frozen, typed object.

Every value a function or the CLI needs comes from here. ``Settings.from_env()`` fails fast with a
``ConfigError`` that names every missing or malformed variable (never its value: a key is a secret).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sendit.errors import ConfigError
from sendit.resources import topology

__all__ = ["ConfigError", "Settings"]


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true/false")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError("expected one of " + ", ".join(LOG_LEVELS))
    return level


DELIVERY_TARGETS = ("bucket", "dicomweb")
DICOMWEB_MAX_REQUEST_BYTES = 32 * 1024 * 1024
IDENTITY_AUTH = ("id-token", "token", "none")
RETENTION = "SENDIT_PROCESSING_RETENTION_DAYS"
MAX_RETENTION_DAYS = 36_500  # also the bound of var.storage.processing_retention_days


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("expected seconds in (0, 300]") from None
    if not 0 < seconds <= 300:
        raise ValueError("expected seconds in (0, 300]")
    return seconds


_KEYWORD = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")  # a DICOM keyword (the engine checks the dictionary)
_SECRET_VERSION = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")


def _targets(value: str) -> tuple[str, ...]:
    targets = tuple(dict.fromkeys(part.strip().lower() for part in value.split(",") if part.strip()))
    if not targets or any(t not in DELIVERY_TARGETS for t in targets):
        raise ValueError("expected bucket, dicomweb or bucket,dicomweb")
    return targets


def dicomweb_problems(url: str | None, secret: str | None) -> list[str]:
    """What is wrong with a DICOMweb service root and its auth secret (never quoting either value)."""
    if not url:
        return []
    parsed = urlsplit(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        return ["SENDIT_DICOMWEB_URL: expected an http(s) service root"]
    problems = []
    loopback = parsed.hostname in {"localhost", "127.0.0.1", "::1"}
    if not loopback and parsed.scheme != "https":
        problems.append("SENDIT_DICOMWEB_URL: a server off loopback must use https")
    healthcare = parsed.hostname == "healthcare.googleapis.com"
    if secret and not _SECRET_VERSION.match(secret):
        problems.append("SENDIT_DICOMWEB_AUTH_SECRET: expected projects/P/secrets/S/versions/V")
    if not loopback and not healthcare and not secret:
        problems.append("SENDIT_DICOMWEB_AUTH_SECRET: required for a DICOMweb server off loopback")
    return problems


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip().upper() for part in value.split(",") if part.strip())


PROFILE_OPTIONS = frozenset({"clean_descriptors"})  # PS3.15 options switchable at run time


def _profile_options(value: str) -> tuple[str, ...]:
    """Comma-separated PS3.15 profile options (SENDIT_PROFILE_OPTIONS), each one we implement."""
    names = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    unknown = sorted(set(names) - PROFILE_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(PROFILE_OPTIONS))}"
        )
    return names


def _modalities(value: str) -> tuple[str, ...] | None:
    """Comma-separated modalities, or ALL (None: every modality, as in ``sendit anonymize --modalities``)."""
    return None if value.strip().upper() == "ALL" else _csv(value)


class _Reader:
    """Reads variables from one mapping and collects what is missing or malformed (never a value)."""

    def __init__(self, source: Mapping[str, str]) -> None:
        self.source = source
        self.missing: list[str] = []
        self.problems: list[str] = []

    def need(self, name: str) -> str:
        value = self.source.get(name, "").strip()
        if not value:
            self.missing.append(name)
        return value

    def conv(self, name: str, default: Any, parse: Any) -> Any:
        raw = self.source.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            # Our own parsers say what they expect; int()'s message would quote the value.
            self.problems.append(f"{name}: {exc if parse is not int else 'expected a whole number'}")
            return default

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = str(self.conv(name, default, lambda v: v.strip().lower()))
        if value not in allowed:
            self.problems.append(f"{name}: expected {' or '.join(allowed)}")
        return value

    def at_least(self, name: str, default: int, minimum: int) -> int:
        value = int(self.conv(name, default, int))
        if value < minimum:
            self.problems.append(f"{name}: must be at least {minimum}")
        return value

    def between(self, name: str, default: int, low: int, high: int) -> int:
        value = int(self.conv(name, default, int))
        if not low <= value <= high:
            self.problems.append(f"{name}: must be between {low} and {high}")
        return value

    def raise_if_any(self) -> None:
        if self.missing or self.problems:
            parts = []
            if self.missing:
                parts.append("missing: " + ", ".join(self.missing))
            if self.problems:
                parts.append("invalid: " + "; ".join(self.problems))
            raise ConfigError("sendit configuration error - " + " | ".join(parts))


@dataclass(frozen=True)
class Settings:
    """Runtime configuration of sendit. Field docs name the environment variable."""

    project: str  # GOOGLE_CLOUD_PROJECT
    staging_bucket: str  # SENDIT_STAGING_BUCKET
    processing_bucket: str  # SENDIT_PROCESSING_BUCKET
    destination_bucket: str  # SENDIT_DESTINATION_BUCKET
    bigquery_table: str  # SENDIT_BIGQUERY_TABLE  (project.dataset.table)
    deliver_topic: str  # SENDIT_DELIVER_TOPIC (topic id, not path)
    secret_key: bytes = field(repr=False, default=b"")  # SENDIT_SECRET_KEY
    collection: str = "sendit"  # SENDIT_COLLECTION
    recipe_path: str | None = None  # SENDIT_RECIPE (None: the shipped PS3.15 default recipe)
    # SENDIT_ALLOWED_MODALITIES (comma separated; ALL -> None: every modality)
    allowed_modalities: tuple[str, ...] | None = ("CT", "MR")
    date_shift_max_days: int = 365  # SENDIT_DATE_SHIFT_MAX_DAYS (shift in [-N, N], never 0)
    identity_provider: str = "hmac"  # SENDIT_IDENTITY_PROVIDER: hmac | http
    identity_url: str | None = None  # SENDIT_IDENTITY_URL (for the http provider)
    pixel_cleaning: bool = False  # SENDIT_PIXEL_CLEANING
    profile_options: tuple[str, ...] = ()  # SENDIT_PROFILE_OPTIONS (comma separated: clean_descriptors)
    delivery_layout: str = "instance"  # SENDIT_DELIVERY_LAYOUT: instance | tar
    cleanup: str = "after-send"  # SENDIT_CLEANUP: after-send | never
    max_attempts: int = 5  # SENDIT_MAX_ATTEMPTS (then FAILED, message acked)
    # SENDIT_LEASE_SECONDS: a claim older than this is presumed dead and may be taken over. Keep it
    # shorter than the Pub/Sub retry window (backoffs over max deliveries), or a file whose instance died
    # is dead-lettered before its lease frees; a lease shorter than a file's processing time only costs a
    # duplicate run (outputs are deterministic, the terminal write is preconditioned).
    lease_seconds: int = 60
    firestore_database: str = "(default)"  # SENDIT_FIRESTORE_DATABASE
    log_level: str = "INFO"  # SENDIT_LOG_LEVEL: DEBUG | INFO | WARNING | ERROR | CRITICAL (sendit.logs.setup)
    batches_collection: str = "batches"  # SENDIT_BATCHES_COLLECTION
    files_collection: str = "files"  # SENDIT_FILES_COLLECTION
    # Delivery targets (SENDIT_DELIVERY_TARGETS: bucket | bucket,dicomweb | dicomweb) and the DICOMweb
    # server: its service root (SENDIT_DICOMWEB_URL), the Secret Manager secret version holding
    # "user:password" for HTTP basic auth (SENDIT_DICOMWEB_AUTH_SECRET; only for a server that is neither
    # the Healthcare API nor loopback) and the largest STOW-RS request (SENDIT_DICOMWEB_MAX_REQUEST_BYTES).
    delivery_targets: tuple[str, ...] = ("bucket",)
    dicomweb_url: str | None = None
    dicomweb_auth_secret: str | None = field(default=None, repr=False)
    dicomweb_max_request_bytes: int = DICOMWEB_MAX_REQUEST_BYTES
    # The study table (SENDIT_STUDY_TABLE, project.dataset.table; default: topology.json's study_table in
    # the image table's dataset) and the identity attributes (SENDIT_ENTITY_ID / SENDIT_ITEM_ID: the DICOM
    # keywords that define the patient entity and the item; docs/identity.md).
    study_table: str = ""
    entity_id: str = "PatientID"
    item_id: str = "AccessionNumber"
    # The http identity provider: SENDIT_IDENTITY_AUTH id-token (an ID token from Application Default
    # Credentials, audience = the URL) | token (SENDIT_IDENTITY_TOKEN, a Secret Manager secret environment
    # variable) | none (loopback only); SENDIT_IDENTITY_TIMEOUT seconds per request and
    # SENDIT_IDENTITY_RETRIES retries of a connection error, timeout or 429/5xx answer.
    identity_auth: str = "id-token"
    identity_token: str = field(default="", repr=False)
    identity_timeout: float = 10.0
    identity_retries: int = 3
    # Completion (docs/state.md): a batch without a manifest is complete once no file has arrived for
    # SENDIT_STABLE_AGE_SECONDS and none is in flight; a manifest-listed object not received within
    # SENDIT_MANIFEST_TIMEOUT_SECONDS of its manifest ends FAILED. SENDIT_TALLY_SHARDS: counter shards
    # per batch; SENDIT_SWEEP_SECONDS: the local stack's sweep interval (the cloud: var.sweep_schedule).
    stable_age_seconds: int = 60
    manifest_timeout_seconds: int = 3600
    tally_shards: int = 16
    sweep_seconds: int = 60
    # The sweep's re-drive (docs/reliability.md): a file still RECEIVED whose lease expired more than
    # SENDIT_REDRIVE_SECONDS ago (and not re-driven within as long) has its notification re-published to
    # SENDIT_UPLOAD_TOPIC (topic id; default topology.json's uploads topic).
    redrive_seconds: int = 900
    upload_topic: str = ""
    auto_send: bool = False  # SENDIT_AUTO_SEND: queue a batch for delivery as soon as it is complete
    # SENDIT_PROCESSING_RETENTION_DAYS: the processing bucket's lifecycle (Terraform passes the value of
    # var.storage.processing_retention_days that sets it): clean files of a batch left unsent are deleted
    # this many days after they were written; the status API shows when (sendit.expiry).
    processing_retention_days: int = 30
    status_names: str = "shown"  # SENDIT_STATUS_NAMES: shown | hidden (folder/object names in the status API)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_key: bool = True) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); raise ConfigError naming every problem."""
        read = _Reader(os.environ if env is None else env)
        values = {**_required(read, require_key), **_options(read), **_delivery(read), **_completion(read)}
        values.update(_metadata(read, values["bigquery_table"]))
        read.raise_if_any()
        return cls(
            **values,
            batches_collection=topology()["firestore"]["batches"],
            files_collection=topology()["firestore"]["files"],
        )


def _required(read: _Reader, require_key: bool) -> dict[str, Any]:
    """Where the pipeline's data lives, and the key (only the functions marked needs_key get it)."""
    values = {
        "project": read.need("GOOGLE_CLOUD_PROJECT"),
        "staging_bucket": read.need("SENDIT_STAGING_BUCKET"),
        "processing_bucket": read.need("SENDIT_PROCESSING_BUCKET"),
        "destination_bucket": read.need("SENDIT_DESTINATION_BUCKET"),
        "bigquery_table": read.need("SENDIT_BIGQUERY_TABLE"),
        "deliver_topic": read.need("SENDIT_DELIVER_TOPIC"),
    }
    key = read.source.get("SENDIT_SECRET_KEY", "")
    if require_key and len(key.strip()) < 16:
        read.missing.append("SENDIT_SECRET_KEY (at least 16 characters)")
    table = values["bigquery_table"]
    if table and table.count(".") != 2:
        read.problems.append("SENDIT_BIGQUERY_TABLE: expected project.dataset.table")
    return {**values, "secret_key": key.strip().encode("utf-8")}


def _options(read: _Reader) -> dict[str, Any]:
    """De-identification, retries, layout, cleanup and logging: everything with a default."""
    source = read.source
    identity = read.choice("SENDIT_IDENTITY_PROVIDER", "hmac", ("hmac", "http"))
    identity_url = source.get("SENDIT_IDENTITY_URL") or None
    if identity == "http" and not identity_url:
        read.missing.append("SENDIT_IDENTITY_URL (required by SENDIT_IDENTITY_PROVIDER=http)")
    return {
        "collection": source.get("SENDIT_COLLECTION", "").strip() or "sendit",
        "recipe_path": source.get("SENDIT_RECIPE") or None,
        "allowed_modalities": read.conv("SENDIT_ALLOWED_MODALITIES", ("CT", "MR"), _modalities),
        "profile_options": read.conv("SENDIT_PROFILE_OPTIONS", (), _profile_options),
        "date_shift_max_days": read.at_least("SENDIT_DATE_SHIFT_MAX_DAYS", 365, 1),
        "identity_provider": identity,
        "identity_url": identity_url,
        "pixel_cleaning": read.conv("SENDIT_PIXEL_CLEANING", False, _flag),
        "delivery_layout": read.choice("SENDIT_DELIVERY_LAYOUT", "instance", ("instance", "tar")),
        "cleanup": read.choice("SENDIT_CLEANUP", "after-send", ("after-send", "never")),
        "max_attempts": read.at_least("SENDIT_MAX_ATTEMPTS", 5, 1),
        "lease_seconds": read.at_least("SENDIT_LEASE_SECONDS", 60, 5),
        "firestore_database": source.get("SENDIT_FIRESTORE_DATABASE", "").strip() or "(default)",
        "log_level": read.conv("SENDIT_LOG_LEVEL", "INFO", _log_level),
    }


def _delivery(read: _Reader) -> dict[str, Any]:
    """The delivery targets and the DICOMweb server."""
    targets = read.conv("SENDIT_DELIVERY_TARGETS", ("bucket",), _targets)
    dicomweb_url = read.source.get("SENDIT_DICOMWEB_URL", "").strip().rstrip("/") or None
    dicomweb_secret = read.source.get("SENDIT_DICOMWEB_AUTH_SECRET", "").strip() or None
    if "dicomweb" in targets and not dicomweb_url:
        read.missing.append("SENDIT_DICOMWEB_URL (required by SENDIT_DELIVERY_TARGETS=dicomweb)")
    read.problems.extend(dicomweb_problems(dicomweb_url, dicomweb_secret))
    return {
        "delivery_targets": targets,
        "dicomweb_url": dicomweb_url,
        "dicomweb_auth_secret": dicomweb_secret,
        "dicomweb_max_request_bytes": read.at_least(
            "SENDIT_DICOMWEB_MAX_REQUEST_BYTES", DICOMWEB_MAX_REQUEST_BYTES, 64 * 1024
        ),
    }


def _metadata(read: _Reader, image_table: str) -> dict[str, Any]:
    """The study table and the identity attributes (issue 15)."""
    study_table = read.source.get("SENDIT_STUDY_TABLE", "").strip()
    if not study_table and image_table.count(".") == 2:
        study_table = image_table.rsplit(".", 1)[0] + "." + topology()["bigquery"]["study_table"]
    if study_table and study_table.count(".") != 2:
        read.problems.append("SENDIT_STUDY_TABLE: expected project.dataset.table")
    chosen = {}
    for name, default in (("SENDIT_ENTITY_ID", "PatientID"), ("SENDIT_ITEM_ID", "AccessionNumber")):
        value = read.source.get(name, "").strip() or default
        if not _KEYWORD.match(value):
            read.problems.append(f"{name}: expected a DICOM attribute keyword (e.g. {default})")
        chosen[name] = value
    auth = read.choice("SENDIT_IDENTITY_AUTH", "id-token", IDENTITY_AUTH)
    timeout = read.conv("SENDIT_IDENTITY_TIMEOUT", 10.0, _seconds)
    return {
        "study_table": study_table,
        "entity_id": chosen["SENDIT_ENTITY_ID"],
        "item_id": chosen["SENDIT_ITEM_ID"],
        "identity_auth": auth,
        "identity_token": read.source.get("SENDIT_IDENTITY_TOKEN", "").strip(),
        "identity_timeout": timeout,
        "identity_retries": read.at_least("SENDIT_IDENTITY_RETRIES", 3, 0),
    }


def _completion(read: _Reader) -> dict[str, Any]:
    """The completion, sweep, auto-send, status-name and retention settings (docs/state.md)."""
    values = {
        "stable_age_seconds": read.between("SENDIT_STABLE_AGE_SECONDS", 60, 1, 86_400),
        "manifest_timeout_seconds": read.between("SENDIT_MANIFEST_TIMEOUT_SECONDS", 3600, 1, 7 * 86_400),
        "tally_shards": read.between("SENDIT_TALLY_SHARDS", 16, 1, 256),
        "sweep_seconds": read.between("SENDIT_SWEEP_SECONDS", 60, 1, 3600),
        "redrive_seconds": read.between("SENDIT_REDRIVE_SECONDS", 900, 5, 86_400),
        "upload_topic": read.source.get("SENDIT_UPLOAD_TOPIC", "").strip() or topology()["topics"]["uploads"],
        "auto_send": read.conv("SENDIT_AUTO_SEND", False, _flag),
        "status_names": read.choice("SENDIT_STATUS_NAMES", "shown", ("shown", "hidden")),
        "processing_retention_days": read.between(RETENTION, 30, 1, MAX_RETENTION_DAYS),
    }
    # Clean files must outlive the time a batch takes to complete (terraform/variables.tf checks the same).
    longest = max(values["stable_age_seconds"], values["manifest_timeout_seconds"]) + values["sweep_seconds"]
    if 0 < values["processing_retention_days"] * 86_400 <= longest:
        read.problems.append(
            f"{RETENTION}: must be longer than the stable age or manifest timeout plus the sweep interval"
        )
    return values
