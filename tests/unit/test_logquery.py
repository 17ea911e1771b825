"""The Logging-query evaluator the log-metric tests rely on: precedence, operators, missing fields, errors."""

from __future__ import annotations

from typing import Any

import pytest
from support.log_metrics import function_names, metric_filters
from support.logquery import QueryError, cloud_run_entry, compile_filter, matches

ENTRY: dict[str, Any] = {
    "logName": "projects/p/logs/run.googleapis.com%2Fstdout",
    "resource": {"type": "cloud_run_revision", "labels": {"service_name": "sendit-anonymize"}},
    "severity": "WARNING",
    "jsonPayload": {
        "message": "file FAILED",
        "event": "file_outcome",
        "state": "FAILED",
        "reason": "Dead-Lettered after 5 deliveries",
        "total_ms": 12.5,
        "attempts": 2,
        "late": False,
        "ids": {"patient_id": "P1"},
        "none": None,
    },
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('jsonPayload.state="FAILED"', True),
        ('jsonPayload.state="failed"', False),  # = is exact here (stricter than Cloud Logging)
        ('jsonPayload.state!="FAILED"', False),
        ('jsonPayload.state!="SENT"', True),
        ('jsonPayload.reason:"dead-lettered"', True),  # has: case-insensitive substring
        ('jsonPayload.reason:"replayed"', False),
        ('jsonPayload.ids:"p1"', True),  # has on an object: any value inside
        ("jsonPayload.total_ms>=0", True),
        ("jsonPayload.total_ms>12.5", False),
        ("jsonPayload.total_ms<=12.5", True),
        ("jsonPayload.attempts=2", True),
        ('jsonPayload.attempts="2"', True),
        ("jsonPayload.late=false", True),
        ("severity>=WARNING", True),
        ("severity>=ERROR", False),
        ("severity<ERROR", True),
        ('severity="WARNING"', True),
        ('resource.labels.service_name="sendit-anonymize"', True),
        ('logName:"run.googleapis.com%2Fstdout"', True),
        ('logName:"run.googleapis.com%2Frequests"', False),
    ],
)
def test_comparisons(text: str, expected: bool) -> None:
    assert matches(text, ENTRY) is expected


@pytest.mark.parametrize(
    "text",
    [
        'jsonPayload.absent="x"',
        "jsonPayload.absent>=0",
        'jsonPayload.absent:"x"',
        'jsonPayload.none="x"',
        "jsonPayload.message>=0",  # a string does not compare with a number as a number
        "httpRequest.status=500",
        'jsonPayload.ids="P1"',  # = on an object
    ],
)
def test_a_comparison_on_a_missing_or_mismatched_field_is_false(text: str) -> None:
    assert matches(text, ENTRY) is False
    assert matches(f"NOT {text}", ENTRY) is True


def test_not_binds_tightest_then_or_then_and() -> None:
    true, false = 'jsonPayload.state="FAILED"', 'jsonPayload.state="SENT"'
    # Logging language: OR binds tighter than AND, so this is false AND (true OR true) = false...
    assert matches(f"{false} AND {true} OR {true}", ENTRY) is False
    # ...where the usual precedence would have said (false AND true) OR true = true.
    assert matches(f"({false} AND {true}) OR {true}", ENTRY) is True
    assert matches(f"NOT {false} AND {true}", ENTRY) is True
    assert matches(f"NOT ({true} OR {false})", ENTRY) is False
    assert matches(f"NOT NOT {true}", ENTRY) is True
    assert matches(f"{true}\nAND (\n  {false}\n  OR {true}\n)", ENTRY) is True


def test_quoted_strings_keep_spaces_colons_and_escaped_quotes() -> None:
    entry = {"jsonPayload": {"message": 'deliver: said "hi" (twice)'}}
    assert matches(r'jsonPayload.message="deliver: said \"hi\" (twice)"', entry)
    assert matches('jsonPayload.message:"(twice)"', entry)


@pytest.mark.parametrize(
    "text",
    [
        "",
        'jsonPayload.a="x" jsonPayload.b="y"',  # implicit AND
        'jsonPayload.a=("x" OR "y")',  # value lists
        '"free text"',
        "robot",
        'jsonPayload.a=~"x.*"',
        '(jsonPayload.a="x"',
        'jsonPayload.a="x")',
        'jsonPayload.a="x" AND',
        "jsonPayload.a=",
        'jsonPayload.a="x" and jsonPayload.b="y"',  # keywords are upper case
        'jsonPayload.a="unterminated',
        "severity>=LOUD",
    ],
)
def test_outside_the_subset_is_an_error_not_a_guess(text: str) -> None:
    with pytest.raises(QueryError):
        compile_filter(text)(ENTRY)


def test_cloud_run_entry_lifts_the_special_fields_out_of_the_payload() -> None:
    line = {
        "severity": "ERROR",
        "message": "Exception on / [POST]",
        "time": "2026-12-02T17:20:05+00:00",
        "logger": "deliver",
        "exception": "VerifyError",
        "logging.googleapis.com/labels": {"execution_id": "abc"},
        "logging.googleapis.com/trace": "projects/p/traces/t",
    }
    entry = cloud_run_entry(line, "sendit-deliver", project="p")
    assert entry["severity"] == "ERROR" and entry["timestamp"] == line["time"]
    assert entry["jsonPayload"] == {
        "message": line["message"],
        "logger": "deliver",
        "exception": "VerifyError",
    }
    assert entry["labels"] == {"execution_id": "abc"}
    assert entry["resource"]["type"] == "cloud_run_revision"
    assert entry["resource"]["labels"]["service_name"] == "sendit-deliver"
    assert entry["logName"] == "projects/p/logs/run.googleapis.com%2Fstdout"
    assert cloud_run_entry({"message": "plain"}, "s")["severity"] == "DEFAULT"


def test_every_terraform_metric_filter_is_in_the_subset_and_scoped_to_the_deployment() -> None:
    filters = metric_filters()
    assert set(filters) >= {"failed_files", "dead_letters", "function_errors", "file_outcomes"}
    services = set(function_names().values())
    assert services == {
        "sendit-anonymize",
        "sendit-deliver",
        "sendit-dead-letter",
        "sendit-sweep",
        "sendit-send",
        "sendit-status",
    }
    for key, text in filters.items():
        predicate = compile_filter(text)
        for service in services:
            assert f'resource.labels.service_name="{service}"' in text, key
        assert "service_name:" not in text, f"{key}: a substring match would catch other services"
        # Nothing of another service or another resource type matches, whatever the payload.
        stranger = cloud_run_entry({"severity": "CRITICAL", "event": "file_outcome"}, "sendit-anonymize-x")
        assert not predicate(stranger), key
        function = cloud_run_entry({"severity": "CRITICAL", "event": "file_outcome"}, "sendit-anonymize")
        function["resource"]["type"] = "cloud_function"
        assert not predicate(function), key


def _request_log(service: str, status: int, severity: str) -> dict[str, Any]:
    """A Cloud Run request log entry (the platform writes one per request; no local twin exists)."""
    entry = cloud_run_entry({"severity": severity}, service, log="run.googleapis.com%2Frequests")
    entry.pop("jsonPayload")
    entry["httpRequest"] = {"requestMethod": "POST", "status": status}
    return entry


def test_function_errors_counts_platform_errors_but_not_the_500_of_a_planned_retry() -> None:
    errors = compile_filter(metric_filters()["function_errors"])
    assert not errors(_request_log("sendit-anonymize", 500, "ERROR"))  # a retry: its cause is logged
    assert errors(_request_log("sendit-anonymize", 504, "ERROR"))  # timeout
    assert errors(_request_log("sendit-deliver", 503, "ERROR"))  # instance crashed mid-request
    oom = cloud_run_entry({}, "sendit-deliver", log="run.googleapis.com%2Fvarlog%2Fsystem")
    oom["severity"] = "ERROR"
    oom.pop("jsonPayload")
    oom["textPayload"] = "Memory limit of 2048 MiB exceeded with 2101 MiB used."
    assert errors(oom)
