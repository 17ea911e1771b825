"""Settings: read once from the environment into one frozen, typed object.

Every value a function or the CLI needs comes from here. ``Settings.from_env()`` fails fast with a
``ConfigError`` that names every missing or malformed variable (never its value: a key is a secret).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any


class ConfigError(ValueError):
    """A required setting is missing or malformed."""


@cache
def topology() -> dict[str, Any]:
    """The one declaration of buckets, topics, subscriptions, table and functions (shared with Terraform)."""
    text = resources.files("sendit").joinpath("topology.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def bigquery_schema() -> list[dict[str, Any]]:
    """The BigQuery table schema (the same JSON file Terraform uses)."""
    text = resources.files("sendit").joinpath("schema/dicom.json").read_text(encoding="utf-8")
    schema: list[dict[str, Any]] = json.loads(text)
    return schema


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true/false")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip().upper() for part in value.split(",") if part.strip())


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
    allowed_modalities: tuple[str, ...] = ("CT", "MR")  # SENDIT_ALLOWED_MODALITIES (comma separated)
    date_shift_max_days: int = 365  # SENDIT_DATE_SHIFT_MAX_DAYS (shift in [-N, N], never 0)
    identity_provider: str = "hmac"  # SENDIT_IDENTITY_PROVIDER: hmac | http
    identity_url: str | None = None  # SENDIT_IDENTITY_URL (for the http provider)
    pixel_cleaning: bool = False  # SENDIT_PIXEL_CLEANING
    delivery_layout: str = "instance"  # SENDIT_DELIVERY_LAYOUT: instance | tar
    cleanup: str = "after-send"  # SENDIT_CLEANUP: after-send | never
    max_attempts: int = 5  # SENDIT_MAX_ATTEMPTS (then FAILED, message acked)
    # SENDIT_LEASE_SECONDS: a claim older than this is presumed dead and may be taken over. Keep it
    # shorter than the Pub/Sub retry window (backoffs over max deliveries), or a file whose instance died
    # is dead-lettered before its lease frees; a lease shorter than a file's processing time only costs a
    # duplicate run (outputs are deterministic, the terminal write is preconditioned).
    lease_seconds: int = 60
    firestore_database: str = "(default)"  # SENDIT_FIRESTORE_DATABASE
    batches_collection: str = "batches"  # SENDIT_BATCHES_COLLECTION
    files_collection: str = "files"  # SENDIT_FILES_COLLECTION
    # Completion (docs/state.md): a batch without a manifest is complete once no file has arrived for
    # SENDIT_STABLE_AGE_SECONDS and none is in flight; a manifest-listed object not received within
    # SENDIT_MANIFEST_TIMEOUT_SECONDS of its manifest ends FAILED. SENDIT_TALLY_SHARDS: counter shards
    # per batch; SENDIT_SWEEP_SECONDS: the local stack's sweep interval (the cloud: var.sweep_schedule).
    stable_age_seconds: int = 60
    manifest_timeout_seconds: int = 3600
    tally_shards: int = 16
    sweep_seconds: int = 60
    auto_send: bool = False  # SENDIT_AUTO_SEND: queue a batch for delivery as soon as it is complete
    status_names: str = "shown"  # SENDIT_STATUS_NAMES: shown | hidden (folder/object names in the status API)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_key: bool = True) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); raise ConfigError naming every problem."""
        source = os.environ if env is None else env
        missing: list[str] = []
        problems: list[str] = []

        def need(name: str) -> str:
            value = source.get(name, "").strip()
            if not value:
                missing.append(name)
            return value

        def conv(name: str, default: Any, parse: Any) -> Any:
            raw = source.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return parse(raw)
            except ValueError as exc:
                # Our own parsers say what they expect; int()'s message would quote the value.
                problems.append(f"{name}: {exc if parse is not int else 'expected a whole number'}")
                return default

        project = need("GOOGLE_CLOUD_PROJECT")
        staging = need("SENDIT_STAGING_BUCKET")
        processing = need("SENDIT_PROCESSING_BUCKET")
        destination = need("SENDIT_DESTINATION_BUCKET")
        table = need("SENDIT_BIGQUERY_TABLE")
        deliver_topic = need("SENDIT_DELIVER_TOPIC")
        key = source.get("SENDIT_SECRET_KEY", "")
        if require_key and len(key.strip()) < 16:
            missing.append("SENDIT_SECRET_KEY (at least 16 characters)")
        if table and table.count(".") != 2:
            problems.append("SENDIT_BIGQUERY_TABLE: expected project.dataset.table")

        identity = conv("SENDIT_IDENTITY_PROVIDER", "hmac", lambda v: v.strip().lower())
        if identity not in {"hmac", "http"}:
            problems.append("SENDIT_IDENTITY_PROVIDER: expected hmac or http")
        identity_url = source.get("SENDIT_IDENTITY_URL") or None
        if identity == "http" and not identity_url:
            missing.append("SENDIT_IDENTITY_URL (required by SENDIT_IDENTITY_PROVIDER=http)")
        layout = conv("SENDIT_DELIVERY_LAYOUT", "instance", lambda v: v.strip().lower())
        if layout not in {"instance", "tar"}:
            problems.append("SENDIT_DELIVERY_LAYOUT: expected instance or tar")
        cleanup = conv("SENDIT_CLEANUP", "after-send", lambda v: v.strip().lower())
        if cleanup not in {"after-send", "never"}:
            problems.append("SENDIT_CLEANUP: expected after-send or never")
        shift = conv("SENDIT_DATE_SHIFT_MAX_DAYS", 365, int)
        if shift < 1:
            problems.append("SENDIT_DATE_SHIFT_MAX_DAYS: must be at least 1")
        attempts = conv("SENDIT_MAX_ATTEMPTS", 5, int)
        if attempts < 1:
            problems.append("SENDIT_MAX_ATTEMPTS: must be at least 1")
        lease = conv("SENDIT_LEASE_SECONDS", 60, int)
        if lease < 5:
            problems.append("SENDIT_LEASE_SECONDS: must be at least 5")
        pixel_cleaning = conv("SENDIT_PIXEL_CLEANING", False, _flag)
        modalities = conv("SENDIT_ALLOWED_MODALITIES", ("CT", "MR"), _csv)
        completion = _completion_settings(conv, problems)

        if missing or problems:
            parts = []
            if missing:
                parts.append("missing: " + ", ".join(missing))
            if problems:
                parts.append("invalid: " + "; ".join(problems))
            raise ConfigError("sendit configuration error - " + " | ".join(parts))

        return cls(
            project=project,
            staging_bucket=staging,
            processing_bucket=processing,
            destination_bucket=destination,
            bigquery_table=table,
            deliver_topic=deliver_topic,
            secret_key=key.strip().encode("utf-8"),
            collection=source.get("SENDIT_COLLECTION", "").strip() or "sendit",
            recipe_path=source.get("SENDIT_RECIPE") or None,
            allowed_modalities=modalities,
            date_shift_max_days=shift,
            identity_provider=identity,
            identity_url=identity_url,
            pixel_cleaning=pixel_cleaning,
            delivery_layout=layout,
            cleanup=cleanup,
            max_attempts=attempts,
            lease_seconds=lease,
            firestore_database=source.get("SENDIT_FIRESTORE_DATABASE", "").strip() or "(default)",
            batches_collection=topology()["firestore"]["batches"],
            files_collection=topology()["firestore"]["files"],
            **completion,
        )


def _completion_settings(conv: Any, problems: list[str]) -> dict[str, Any]:
    """The completion, sweep, auto-send and status-name settings (validated; problems appended)."""
    ranges = {
        "SENDIT_STABLE_AGE_SECONDS": ("stable_age_seconds", 60, 1, 86_400),
        "SENDIT_MANIFEST_TIMEOUT_SECONDS": ("manifest_timeout_seconds", 3600, 1, 7 * 86_400),
        "SENDIT_TALLY_SHARDS": ("tally_shards", 16, 1, 256),
        "SENDIT_SWEEP_SECONDS": ("sweep_seconds", 60, 1, 3600),
    }
    values: dict[str, Any] = {}
    for name, (attr, default, low, high) in ranges.items():
        value = conv(name, default, int)
        if not low <= value <= high:
            problems.append(f"{name}: must be between {low} and {high}")
        values[attr] = value
    values["auto_send"] = conv("SENDIT_AUTO_SEND", False, _flag)
    names = conv("SENDIT_STATUS_NAMES", "shown", lambda v: v.strip().lower())
    if names not in {"shown", "hidden"}:
        problems.append("SENDIT_STATUS_NAMES: expected shown or hidden")
    values["status_names"] = names
    return values
