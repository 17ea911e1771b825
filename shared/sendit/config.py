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


PROFILE_OPTIONS = frozenset({"clean_descriptors"})  # PS3.15 options switchable at run time


def _options(value: str) -> tuple[str, ...]:
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
    allowed_modalities: tuple[str, ...] | None = (
        "CT",
        "MR",
    )  # SENDIT_ALLOWED_MODALITIES (comma sep.; ALL: None)
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
    batches_collection: str = "batches"  # SENDIT_BATCHES_COLLECTION
    files_collection: str = "files"  # SENDIT_FILES_COLLECTION

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
        profile_options = conv("SENDIT_PROFILE_OPTIONS", (), _options)
        modalities = conv("SENDIT_ALLOWED_MODALITIES", ("CT", "MR"), _modalities)

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
            profile_options=profile_options,
            delivery_layout=layout,
            cleanup=cleanup,
            max_attempts=attempts,
            lease_seconds=lease,
            firestore_database=source.get("SENDIT_FIRESTORE_DATABASE", "").strip() or "(default)",
            batches_collection=topology()["firestore"]["batches"],
            files_collection=topology()["firestore"]["files"],
        )
