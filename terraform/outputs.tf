# Outputs: what an operator and a researcher need. The pseudonymization key is never an output (only the
# secret's name, so an operator knows where it lives).

output "buckets" {
  description = "Bucket names: staging (uploads), processing, destination and the function sources."
  value = {
    staging     = google_storage_bucket.identified["staging"].name
    processing  = google_storage_bucket.identified["processing"].name
    destination = google_storage_bucket.destination.name
    sources     = google_storage_bucket.sources.name
  }
}

output "topics" {
  description = "Pub/Sub topic ids (uploads, deliver, dead_letter)."
  value       = { for key, topic in google_pubsub_topic.topics : key => topic.name }
}

output "dead_letter_subscription" {
  description = "Pull subscription that keeps dead letters for inspection and replay."
  value       = google_pubsub_subscription.dead_letter_keep.name
}

output "send_url" {
  description = "URL of the send function (POST, IAM-authenticated: operators only)."
  value       = google_cloudfunctions2_function.functions["send"].service_config[0].uri
}

output "status_url" {
  description = "URL of the status function (GET, IAM-authenticated: operators only)."
  value       = google_cloudfunctions2_function.functions["status"].service_config[0].uri
}

output "function_service_accounts" {
  description = "Runtime service account of each function."
  value       = { for key, sa in google_service_account.functions : key => sa.email }
}

output "bigquery_table" {
  description = "BigQuery table receiving one row per delivered image (project.dataset.table)."
  value       = local.bigquery_table_id
}

output "firestore_database" {
  description = "Firestore database holding batch and file state."
  value       = google_firestore_database.sendit.name
}

output "secret_id" {
  description = "Secret Manager secret holding the pseudonymization key (its name only, never its value)."
  value       = google_secret_manager_secret.key.id
}

output "function_source" {
  description = "Object name of the deployed source archive (carries its content hash)."
  value       = google_storage_bucket_object.bundle.name
}

output "upload_command" {
  description = "How a researcher uploads one batch (one top-level folder = one batch)."
  value       = "gcloud storage cp --recursive LOCAL_FOLDER gs://${google_storage_bucket.identified["staging"].name}/"
}

output "log_metrics" {
  description = "Log-based metrics of the alerts and the dashboard (metric types logging.googleapis.com/user/NAME), by key."
  value       = { for key, m in google_logging_metric.metrics : key => m.name }
}

output "alert_policies" {
  description = "Alert policy ids (failed files, dead letters, function errors); empty when alerts.enabled is false."
  value       = { for key, p in google_monitoring_alert_policy.alerts : key => p.name }
}

output "notification_channels" {
  description = "Notification channels every alert notifies: var.notification_channels plus the alert_email channel."
  value       = local.notification_channels
}

output "dashboard" {
  description = "Cloud Monitoring dashboard of files/s, failures and latencies (its id)."
  value       = google_monitoring_dashboard.sendit.id
}
