# Alerting and a dashboard, from the functions' structured logs (docs/operations.md says what each alert
# means and what to do). A 2nd gen function runs as the Cloud Run service of its name, so its stdout JSON
# lines arrive as entries of resource.type "cloud_run_revision" with resource.labels.service_name = the
# function name, jsonPayload = the line without the fields Cloud Logging lifts out (severity, time,
# logging.googleapis.com/labels). Every filter is scoped to exactly this deployment's services (equality on
# each name: ":" would be a substring match and could catch another service whose name contains ours).
# tests/integration/test_log_metrics.py evaluates these filters on real function log lines.

locals {
  # resource.labels.service_name="sendit-anonymize" OR ... : one equality per function of topology.json.
  log_services = join(" OR ", [for key in sort(keys(local.function_names)) : "resource.labels.service_name=\"${local.function_names[key]}\""])
  log_scope    = "resource.type=\"cloud_run_revision\" AND (${local.log_services})"

  # Log-based metrics, by key (the metric's name is sendit-<key with - for _>).
  log_metrics = {
    # Every file that reached a terminal state (anonymize, and dead_letter for dead-lettered uploads).
    file_outcomes = {
      description = "Files that reached a terminal state (ANONYMIZED, SKIPPED, FAILED), by state."
      kind        = "counter"
      state_label = true
      field       = null
      unit        = "1"
      scale       = null
      filter      = <<-EOT
        ${local.log_scope}
        AND jsonPayload.event="file_outcome"
      EOT
    }
    # "file FAILED": the file_outcome lines of anonymize and dead_letter, the give-up line of anonymize
    # (which carries no event field) and deliver's line for a file it could not deliver (event
    # delivery_failure, e.g. refused by the DICOMweb server). A duplicate notification of a failed file
    # logs "duplicate: file already FAILED" with state FAILED: not counted again.
    failed_files = {
      description = "Files marked FAILED (not DICOM, corrupt, gone, given up after retries, dead-lettered)."
      kind        = "counter"
      state_label = false
      field       = null
      unit        = "1"
      scale       = null
      filter      = <<-EOT
        ${local.log_scope}
        AND jsonPayload.state="FAILED"
        AND (jsonPayload.event="file_outcome" OR jsonPayload.message="file FAILED")
      EOT
    }
    # One line per message the dead_letter function settles (not its own retries).
    dead_letters = {
      description = "Messages that exhausted their Pub/Sub deliveries and reached the dead-letter topic."
      kind        = "counter"
      state_label = false
      field       = null
      unit        = "1"
      scale       = null
      filter      = <<-EOT
        ${local.log_scope}
        AND (
          (jsonPayload.event="file_outcome" AND jsonPayload.reason:"dead-lettered")
          OR jsonPayload.message="deliver: message dead-lettered"
          OR jsonPayload.message="dead letter for a file already terminal, acked"
          OR jsonPayload.message="dead letter of an unknown kind, acked"
          OR jsonPayload.message="dead-lettered notification ignored"
          OR jsonPayload.message:"not understood"
        )
      EOT
    }
    # ERROR and worse from any of the services (our own error lines, uncaught exceptions, platform
    # errors such as out-of-memory or a timeout), except the lines of a planned retry: the
    # functions-framework "Exception on ..." line for RetryableError, BatchBusy and BatchReopened, and the
    # request log's 500 answer that goes with it. A retry is normal (at least once); its cause is logged
    # at WARNING (transient) or ERROR (unexpected: counted), and one that never succeeds dead-letters.
    function_errors = {
      description = "Log entries of severity ERROR or worse from the sendit functions (planned retries excluded)."
      kind        = "counter"
      state_label = false
      field       = null
      unit        = "1"
      scale       = null
      filter      = <<-EOT
        ${local.log_scope}
        AND severity>=ERROR
        AND NOT jsonPayload.exception="RetryableError"
        AND NOT jsonPayload.exception="BatchBusy"
        AND NOT jsonPayload.exception="BatchReopened"
        AND NOT (logName:"run.googleapis.com%2Frequests" AND httpRequest.status=500)
      EOT
    }
    # deliver's "batch delivered" line: seconds the invocation took for the batch.
    delivery_seconds = {
      description = "Seconds one deliver invocation took to deliver a batch (copy, rows, state)."
      kind        = "distribution"
      state_label = false
      field       = "jsonPayload.seconds"
      unit        = "s"
      scale       = 0.05
      filter      = <<-EOT
        ${local.log_scope}
        AND jsonPayload.message="deliver: batch delivered"
        AND jsonPayload.seconds>=0
      EOT
    }
    # anonymize's file_outcome line: milliseconds from claim to terminal state of one file.
    file_processing_ms = {
      description = "Milliseconds the anonymize function took for one file, claim to terminal state."
      kind        = "distribution"
      state_label = false
      field       = "jsonPayload.total_ms"
      unit        = "ms"
      scale       = 5
      filter      = <<-EOT
        ${local.log_scope}
        AND jsonPayload.event="file_outcome"
        AND jsonPayload.total_ms>=0
      EOT
    }
  }

  alert_policies = {
    failed_files = {
      title     = "files FAILED"
      severity  = "ERROR"
      threshold = var.alerts.failed_files_threshold
      doc       = <<-EOT
        **What fired:** more than ${var.alerts.failed_files_threshold} file(s) of a sendit batch ended FAILED within ${var.alerts.window_seconds} s (log-based metric sendit-failed-files: not DICOM, corrupt, object gone, given up after retries, or dead-lettered).

        **What to do:** open the status dashboard (`sendit status`): the batch shows `has_error` and each failed file's reason. A reason naming the input (not DICOM, corrupt) goes back to the uploader; "dead-lettered" or "gave up" means a fault that outlasted the retries: check the function-errors alert and the dead-letter subscription, fix the cause, then reprocess (docs/operations.md). Logs: Logs Explorer, `jsonPayload.state="FAILED"` on the sendit services.
      EOT
    }
    dead_letters = {
      title     = "messages dead-lettered"
      severity  = "ERROR"
      threshold = var.alerts.dead_letters_threshold
      doc       = <<-EOT
        **What fired:** more than ${var.alerts.dead_letters_threshold} message(s) exhausted their Pub/Sub deliveries within ${var.alerts.window_seconds} s and reached the dead-letter topic (metric sendit-dead-letters). An upload's file is now FAILED ("dead-lettered after N deliveries"); a deliver message put its batch back to DONEPROCESSING with has_error.

        **What to do:** find the cause first: the function-errors alert and the ERROR/WARNING lines of the sendit services just before (Logs Explorer, the batch_id of the dead-letter line). The messages are kept in the pull subscription `${local.topics.dead_letter}-keep`. After the fix, send a put-back batch again (`sendit send`), or replay/reprocess (docs/operations.md).
      EOT
    }
    function_errors = {
      title     = "function errors"
      severity  = "CRITICAL"
      threshold = var.alerts.function_errors_threshold
      doc       = <<-EOT
        **What fired:** more than ${var.alerts.function_errors_threshold} log entries of severity ERROR or worse from the sendit functions within ${var.alerts.window_seconds} s (metric sendit-function-errors): unexpected exceptions, out-of-memory, timeouts, events not understood, dead-lettered deliveries. Planned retries (RetryableError, BatchBusy, BatchReopened) are not counted.

        **What to do:** Logs Explorer: `severity>=ERROR` on `resource.type="cloud_run_revision"`, grouped by `resource.labels.service_name`. The lines name the step and the error type, never object names. Memory limit exceeded or timeout: raise the function's sizing (`var.functions`). Repeated unexpected errors of one step: a bug or a dependency down; files keep being retried, then dead-letter (separate alert). Nothing is lost meanwhile: every file ends in a terminal state.
      EOT
    }
  }

  notification_channels = concat(var.notification_channels, google_monitoring_notification_channel.email[*].id)
}

resource "google_project_service" "monitoring" {
  for_each = var.enable_apis ? toset(["logging.googleapis.com", "monitoring.googleapis.com"]) : toset([])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

resource "google_logging_metric" "metrics" {
  for_each = local.log_metrics

  project     = var.project_id
  name        = "sendit-${replace(each.key, "_", "-")}"
  description = each.value.description
  filter      = trimspace(each.value.filter)

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = each.value.kind == "distribution" ? "DISTRIBUTION" : "INT64"
    unit         = each.value.unit
    display_name = "sendit ${replace(each.key, "_", " ")}"

    dynamic "labels" {
      for_each = each.value.state_label ? ["state"] : []
      content {
        key         = labels.value
        value_type  = "STRING"
        description = "Terminal state of the file (ANONYMIZED, SKIPPED, FAILED)."
      }
    }
  }

  label_extractors = each.value.state_label ? { state = "EXTRACT(jsonPayload.state)" } : null
  value_extractor  = each.value.kind == "distribution" ? "EXTRACT(${each.value.field})" : null

  dynamic "bucket_options" {
    for_each = each.value.kind == "distribution" ? [each.value.scale] : []
    content {
      exponential_buckets {
        num_finite_buckets = 24
        growth_factor      = 2
        scale              = bucket_options.value
      }
    }
  }

  depends_on = [google_project_service.monitoring]
}

resource "google_monitoring_notification_channel" "email" {
  count = var.alert_email == "" ? 0 : 1

  project      = var.project_id
  display_name = "sendit alerts (email)"
  type         = "email"
  labels       = { email_address = var.alert_email }
  user_labels  = local.labels

  depends_on = [google_project_service.monitoring]
}

resource "google_monitoring_alert_policy" "alerts" {
  for_each = var.alerts.enabled ? local.alert_policies : {}

  project               = var.project_id
  display_name          = "sendit: ${each.value.title}"
  combiner              = "OR"
  severity              = each.value.severity
  notification_channels = local.notification_channels
  user_labels           = local.labels

  documentation {
    subject   = "sendit: ${each.value.title}"
    content   = trimspace(each.value.doc)
    mime_type = "text/markdown"
  }

  conditions {
    display_name = "sendit ${each.value.title} > ${each.value.threshold} in ${var.alerts.window_seconds} s"
    condition_threshold {
      filter                  = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.metrics[each.key].name}\""
      comparison              = "COMPARISON_GT"
      threshold_value         = each.value.threshold
      duration                = "0s"
      evaluation_missing_data = "EVALUATION_MISSING_DATA_INACTIVE"
      aggregations {
        alignment_period     = "${var.alerts.window_seconds}s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "${var.alerts.auto_close_seconds}s"
  }
}

locals {
  # Dashboard query of one log-based metric (sendit-<key>), aligned per minute.
  metric_filter = { for key, m in google_logging_metric.metrics : key => "metric.type=\"logging.googleapis.com/user/${m.name}\" AND resource.type=\"cloud_run_revision\"" }

  dashboard_tiles = [
    {
      title = "Files per second, by outcome"
      sets = [{
        filter  = local.metric_filter.file_outcomes, aligner = "ALIGN_RATE", reducer = "REDUCE_SUM"
        groupBy = ["metric.label.state"], legend = "$${metric.label.state}", plot = "STACKED_AREA"
      }]
    },
    {
      title = "Failures per minute"
      sets = [for key in ["failed_files", "dead_letters", "function_errors"] : {
        filter  = local.metric_filter[key], aligner = "ALIGN_DELTA", reducer = "REDUCE_SUM"
        groupBy = [], legend = replace(key, "_", " "), plot = "STACKED_BAR"
      }]
    },
    {
      title = "Delivery latency per batch (s), p50 and p95"
      sets = [for p in ["50", "95"] : {
        filter  = local.metric_filter.delivery_seconds, aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_${p}"
        groupBy = [], legend = "p${p}", plot = "LINE"
      }]
    },
    {
      title = "Processing time per file (ms), p50 and p95"
      sets = [for p in ["50", "95"] : {
        filter  = local.metric_filter.file_processing_ms, aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_${p}"
        groupBy = [], legend = "p${p}", plot = "LINE"
      }]
    },
  ]
}

resource "google_monitoring_dashboard" "sendit" {
  project = var.project_id
  dashboard_json = jsonencode({
    displayName = "sendit"
    mosaicLayout = {
      columns = 48
      tiles = [for i, tile in local.dashboard_tiles : {
        xPos   = (i % 2) * 24
        yPos   = floor(i / 2) * 16
        width  = 24
        height = 16
        widget = {
          title = tile.title
          xyChart = {
            dataSets = [for set in tile.sets : {
              plotType           = set.plot
              legendTemplate     = set.legend
              minAlignmentPeriod = "60s"
              timeSeriesQuery = {
                timeSeriesFilter = {
                  filter = set.filter
                  aggregation = {
                    alignmentPeriod    = "60s"
                    perSeriesAligner   = set.aligner
                    crossSeriesReducer = set.reducer
                    groupByFields      = set.groupBy
                  }
                }
              }
            }]
          }
        }
      }]
    }
  })

  depends_on = [google_project_service.monitoring]
}
