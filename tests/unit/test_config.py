"""Settings.from_env: required values, defaults, parsing, and errors that name variables, never values."""

from __future__ import annotations

import dataclasses

import pytest

from sendit.config import ConfigError, Settings
from sendit.resources import bigquery_schema, topology

BASE = {
    "GOOGLE_CLOUD_PROJECT": "proj",
    "SENDIT_STAGING_BUCKET": "stage",
    "SENDIT_PROCESSING_BUCKET": "proc",
    "SENDIT_DESTINATION_BUCKET": "dest",
    "SENDIT_BIGQUERY_TABLE": "proj.sendit.dicom",
    "SENDIT_DELIVER_TOPIC": "sendit-deliver",
    "SENDIT_SECRET_KEY": "  a-secret-key-of-enough-length  ",
}


def test_minimal_environment_gives_documented_defaults() -> None:
    s = Settings.from_env(BASE)
    assert (s.project, s.staging_bucket, s.processing_bucket, s.destination_bucket) == (
        "proj",
        "stage",
        "proc",
        "dest",
    )
    assert s.secret_key == b"a-secret-key-of-enough-length"  # stripped, bytes
    assert s.allowed_modalities == ("CT", "MR") and s.max_attempts == 5 and s.date_shift_max_days == 365
    assert s.identity_provider == "hmac" and s.delivery_layout == "instance" and s.cleanup == "after-send"
    assert s.pixel_cleaning is False and s.recipe_path is None and s.firestore_database == "(default)"
    assert (s.batches_collection, s.files_collection) == ("batches", "files")
    assert "secret" not in repr(s)  # the key is kept out of repr
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.project = "other"  # type: ignore[misc]


def test_optional_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            **BASE,
            "SENDIT_ALLOWED_MODALITIES": " ct, mr ,US,",
            "SENDIT_MAX_ATTEMPTS": "9",
            "SENDIT_PIXEL_CLEANING": "Yes",
            "SENDIT_DELIVERY_LAYOUT": "TAR",
            "SENDIT_IDENTITY_PROVIDER": "http",
            "SENDIT_IDENTITY_URL": "https://broker.example/api",
            "SENDIT_FIRESTORE_DATABASE": "sendit-db",
        }
    )
    assert s.allowed_modalities == ("CT", "MR", "US") and s.max_attempts == 9 and s.pixel_cleaning is True
    assert (
        s.delivery_layout == "tar" and s.identity_provider == "http" and s.firestore_database == "sendit-db"
    )


def test_every_missing_variable_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"GOOGLE_CLOUD_PROJECT": "proj"})
    message = str(info.value)
    for name in (
        "SENDIT_STAGING_BUCKET",
        "SENDIT_PROCESSING_BUCKET",
        "SENDIT_DESTINATION_BUCKET",
        "SENDIT_BIGQUERY_TABLE",
        "SENDIT_DELIVER_TOPIC",
        "SENDIT_SECRET_KEY",
    ):
        assert name in message
    assert "GOOGLE_CLOUD_PROJECT" not in message


def test_malformed_values_are_named_without_echoing_secrets() -> None:
    env = {
        **BASE,
        "SENDIT_SECRET_KEY": "short-secret",
        "SENDIT_BIGQUERY_TABLE": "dataset.table",
        "SENDIT_MAX_ATTEMPTS": "0",
        "SENDIT_DATE_SHIFT_MAX_DAYS": "0",
        "SENDIT_CLEANUP": "sometimes",
        "SENDIT_IDENTITY_PROVIDER": "http",
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    for name in (
        "SENDIT_SECRET_KEY (at least 16 characters)",
        "SENDIT_BIGQUERY_TABLE: expected project.dataset.table",
        "SENDIT_MAX_ATTEMPTS: must be at least 1",
        "SENDIT_DATE_SHIFT_MAX_DAYS: must be at least 1",
        "SENDIT_CLEANUP: expected after-send or never",
        "SENDIT_IDENTITY_URL",
    ):
        assert name in message
    assert "short-secret" not in message


def test_malformed_flag_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(ConfigError, match="SENDIT_PIXEL_CLEANING"):
        Settings.from_env({**BASE, "SENDIT_PIXEL_CLEANING": "perhaps"})


def test_malformed_number_is_named_without_its_value() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, "SENDIT_MAX_ATTEMPTS": "value-7734981"})
    assert "SENDIT_MAX_ATTEMPTS" in str(info.value) and "7734981" not in str(info.value)


def test_key_may_be_optional_for_tools_that_do_not_deidentify() -> None:
    env = {k: v for k, v in BASE.items() if k != "SENDIT_SECRET_KEY"}
    assert Settings.from_env(env, require_key=False).secret_key == b""


def test_topology_and_schema_are_consistent() -> None:
    topo = topology()
    assert set(topo["buckets"]) == {"staging", "processing", "destination"}
    for sub in topo["subscriptions"].values():
        assert sub["topic"] in topo["topics"] and sub["function"] in topo["functions"]
    names = {field["name"] for field in bigquery_schema()}
    assert {"instance_uid", "batch_id", "uri", "header"} <= names


def test_completion_settings_defaults_and_parsing() -> None:
    s = Settings.from_env(BASE)
    assert (s.stable_age_seconds, s.manifest_timeout_seconds, s.tally_shards, s.sweep_seconds) == (
        60,
        3600,
        16,
        60,
    )
    assert s.auto_send is False and s.status_names == "shown"
    assert (s.redrive_seconds, s.upload_topic) == (900, topology()["topics"]["uploads"])
    t = Settings.from_env(
        {
            **BASE,
            "SENDIT_STABLE_AGE_SECONDS": "5",
            "SENDIT_MANIFEST_TIMEOUT_SECONDS": "120",
            "SENDIT_TALLY_SHARDS": "4",
            "SENDIT_SWEEP_SECONDS": "2",
            "SENDIT_AUTO_SEND": "true",
            "SENDIT_STATUS_NAMES": "Hidden",
            "SENDIT_REDRIVE_SECONDS": "30",
            "SENDIT_UPLOAD_TOPIC": "uploads-2",
        }
    )
    assert (t.redrive_seconds, t.upload_topic) == (30, "uploads-2")
    assert (t.stable_age_seconds, t.manifest_timeout_seconds, t.tally_shards, t.sweep_seconds) == (
        5,
        120,
        4,
        2,
    )
    assert t.auto_send is True and t.status_names == "hidden"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("SENDIT_STABLE_AGE_SECONDS", "0", "SENDIT_STABLE_AGE_SECONDS: must be between 1 and 86400"),
        ("SENDIT_STABLE_AGE_SECONDS", "soon", "SENDIT_STABLE_AGE_SECONDS: expected a whole number"),
        ("SENDIT_MANIFEST_TIMEOUT_SECONDS", "-1", "SENDIT_MANIFEST_TIMEOUT_SECONDS: must be between"),
        ("SENDIT_TALLY_SHARDS", "1000", "SENDIT_TALLY_SHARDS: must be between 1 and 256"),
        ("SENDIT_SWEEP_SECONDS", "0", "SENDIT_SWEEP_SECONDS: must be between 1 and 3600"),
        ("SENDIT_REDRIVE_SECONDS", "2", "SENDIT_REDRIVE_SECONDS: must be between 5 and 86400"),
        ("SENDIT_AUTO_SEND", "sometimes", "SENDIT_AUTO_SEND: expected true/false"),
        ("SENDIT_STATUS_NAMES", "partial", "SENDIT_STATUS_NAMES: expected shown or hidden"),
    ],
)
def test_completion_settings_fail_fast_naming_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, name: value})
    assert says in str(caught.value) and value not in str(caught.value).replace(says, "")


def test_log_level_defaults_to_info_and_accepts_any_case() -> None:
    assert Settings.from_env(BASE).log_level == "INFO"
    assert Settings.from_env({**BASE, "SENDIT_LOG_LEVEL": " debug "}).log_level == "DEBUG"
    assert Settings.from_env({**BASE, "SENDIT_LOG_LEVEL": "Error"}).log_level == "ERROR"


def test_invalid_log_level_fails_fast_naming_the_variable_not_the_value() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, "SENDIT_LOG_LEVEL": "chatty-7734981"})
    message = str(info.value)
    assert "SENDIT_LOG_LEVEL" in message and "DEBUG, INFO, WARNING, ERROR, CRITICAL" in message
    assert "7734981" not in message


def test_processing_retention_defaults_to_the_terraform_default_and_is_parsed() -> None:
    assert Settings.from_env(BASE).processing_retention_days == 30
    assert (
        Settings.from_env({**BASE, "SENDIT_PROCESSING_RETENTION_DAYS": " 90 "}).processing_retention_days
        == 90
    )
    # The longest stable age (a day) plus a sweep needs more than one day of retention.
    long_wait = {"SENDIT_STABLE_AGE_SECONDS": "86400", "SENDIT_PROCESSING_RETENTION_DAYS": "2"}
    assert Settings.from_env({**BASE, **long_wait}).processing_retention_days == 2


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SENDIT_PROCESSING_RETENTION_DAYS": "0"}, "must be between 1 and 36500"),
        ({"SENDIT_PROCESSING_RETENTION_DAYS": "36501"}, "must be between 1 and 36500"),
        ({"SENDIT_PROCESSING_RETENTION_DAYS": "2.5"}, "expected a whole number"),
        ({"SENDIT_PROCESSING_RETENTION_DAYS": "a month"}, "expected a whole number"),
        (
            {"SENDIT_PROCESSING_RETENTION_DAYS": "1", "SENDIT_STABLE_AGE_SECONDS": "86400"},
            "must be longer than the stable age or manifest timeout plus the sweep interval",
        ),
        (
            {"SENDIT_PROCESSING_RETENTION_DAYS": "7", "SENDIT_MANIFEST_TIMEOUT_SECONDS": "604800"},
            "must be longer than the stable age or manifest timeout plus the sweep interval",
        ),
    ],
)
def test_processing_retention_fails_fast_naming_the_variable(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, **env})
    message = str(caught.value)
    assert f"SENDIT_PROCESSING_RETENTION_DAYS: {says}" in message
    assert env["SENDIT_PROCESSING_RETENTION_DAYS"] not in message.replace("36500", "")
