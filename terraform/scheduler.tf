# The completion sweep's clock: Cloud Scheduler publishes a tick to the sweep topic (var.sweep_schedule,
# every minute by default); the topic's push subscription (pubsub.tf, from topology.json) runs the sweep
# function, which evaluates every open batch: the stable-age rule and overdue manifests
# (docs/state.md, "Completion"). The local stack runs the same tick from a small scheduler process.
# The job publishes as Cloud Scheduler's service agent, which Pub/Sub authorises on this topic only.

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
