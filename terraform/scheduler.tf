# The completion sweep's clock: Cloud Scheduler publishes a tick to the sweep topic (var.sweep_schedule,
# every minute by default); the topic's push subscription (pubsub.tf, from topology.json) runs the sweep
# function, which evaluates every open batch: the stable-age rule and overdue manifests
# (docs/state.md, "Completion"). The local stack runs the same tick from a small scheduler process.
# The job publishes as Cloud Scheduler's service agent, which Pub/Sub authorises on this topic only.

locals {
  # An upper bound of the time between two sweep ticks, read from which fields of the cron expression
  # (minute hour day-of-month month day-of-week) are restricted: none after the minute -> at least hourly;
  # the hour -> daily; the day of week -> weekly; the day of month or the month -> taken as yearly. Used to
  # check that the processing lifecycle outlasts a batch's completion (variables.tf, var.storage).
  sweep_cron = concat(split(" ", trimspace(var.sweep_schedule)), ["*", "*", "*", "*", "*"])
  sweep_interval_max_seconds = (
    local.sweep_cron[2] != "*" || local.sweep_cron[3] != "*" ? 366 * 86400 :
    local.sweep_cron[4] != "*" ? 7 * 86400 :
    local.sweep_cron[1] != "*" ? 86400 : 3600
  )
}

resource "google_cloud_scheduler_job" "sweep" {
  project     = var.project_id
  region      = var.region
  name        = "sendit-sweep"
  description = "Tick for the sendit completion sweep (stable age, manifest timeouts)."
  schedule    = var.sweep_schedule
  time_zone   = var.sweep_time_zone

  # A missed tick is harmless (the next one does the same work): no retries pile up.
  retry_config {
    retry_count = 0
  }

  pubsub_target {
    topic_name = google_pubsub_topic.topics["sweep"].id
    data       = base64encode(jsonencode({ tick = "sweep" }))
    attributes = { kind = "sweep" }
  }

  depends_on = [google_project_service.apis, google_pubsub_topic_iam_member.scheduler_publisher]
}

# Cloud Scheduler's service agent publishes the tick.
resource "google_pubsub_topic_iam_member" "scheduler_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.topics["sweep"].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${local.service_agents.scheduler}"
}
