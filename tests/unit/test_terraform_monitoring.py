"""terraform/monitoring.tf and the log level, checked against the code (parsed with python-hcl2)."""

from __future__ import annotations

import re

from test_terraform import blocks, first, locals_, resource, variables

from sendit.config import LOG_LEVELS, Settings


def test_every_function_gets_the_log_level_variable_and_it_accepts_what_settings_accepts() -> None:
    assert locals_()["settings_env"]["SENDIT_LOG_LEVEL"] == "${var.log_level}"
    var = variables()["log_level"]
    assert var["default"] == Settings.log_level == "INFO"
    condition = first(var["validation"])["condition"]
    assert set(re.findall(r'"([A-Z]+)"', condition)) == set(LOG_LEVELS)


def test_one_alert_policy_per_alerting_metric_each_documented_and_notifying_the_channels() -> None:
    policies = locals_()["alert_policies"]
    assert set(policies) == {"failed_files", "dead_letters", "function_errors"}
    assert set(policies) <= set(locals_()["log_metrics"])
    for key, policy in policies.items():
        doc = policy["doc"]
        assert "**What fired:**" in doc and "**What to do:**" in doc, key
        assert f"alerts.{key}_threshold" in policy["threshold"], key
    alerts = resource("google_monitoring_alert_policy", "alerts")
    assert alerts["notification_channels"] == "${local.notification_channels}"
    assert "local.labels" in alerts["user_labels"]
    condition = first(first(alerts["conditions"])["condition_threshold"])
    assert "google_logging_metric.metrics[each.key].name" in condition["filter"]
    assert first(alerts["documentation"])["mime_type"] == "text/markdown"


def test_email_channel_only_when_an_address_is_given_and_added_to_the_channels() -> None:
    email = resource("google_monitoring_notification_channel", "email")
    assert email["count"] == '${var.alert_email == "" ? 0 : 1}'
    assert email["type"] == "email" and "local.labels" in email["user_labels"]
    assert variables()["alert_email"]["default"] == ""
    assert variables()["notification_channels"]["default"] == []
    channels = locals_()["notification_channels"]
    assert "var.notification_channels" in channels
    assert "google_monitoring_notification_channel.email" in channels


def test_dashboard_and_metrics_exist() -> None:
    assert resource("google_monitoring_dashboard", "sendit")["dashboard_json"]
    assert set(blocks("resource", "google_logging_metric")) == {"metrics"}
    metrics = locals_()["log_metrics"]
    assert {"file_outcomes", "delivery_seconds", "file_processing_ms"} <= set(metrics)
    assert {m["kind"] for m in metrics.values()} == {"counter", "distribution"}
