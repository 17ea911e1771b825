# Topics and the push subscriptions that trigger the event-driven functions.
#
# Trigger design: staging OBJECT_FINALIZE -> google_storage_notification -> uploads topic -> a push
# subscription sendit owns -> the anonymize function (authenticated with an OIDC token of the push service
# account). This is exactly the local stack's wiring, and - unlike an Eventarc-managed subscription - it lets
# Terraform declare the retry policy (exponential backoff) and the dead-letter policy with
# max_delivery_attempts from topology.json. functions-framework turns the push envelope into the same
# google.cloud.pubsub.topic.v1.messagePublished CloudEvent an Eventarc trigger delivers.
# A handler that raises (transient error) answers 5xx: Pub/Sub redelivers with backoff; after
# max_delivery_attempts the message is forwarded to the dead-letter topic, whose own push subscription runs
# the dead_letter function (marks the file or batch FAILED); a pull subscription keeps dead letters for
# inspection and replay.

locals {
  push_subscriptions = {
    for key, sub in local.topology.subscriptions : key => merge(sub, {
      name = "sendit-${key}"
      # The dead-letter topic's own subscription is the end of the line: no dead-letter policy there.
      dead_letter = sub.topic == "dead_letter" ? null : local.topics.dead_letter
    })
  }
  dead_letter_keep = "${local.topics.dead_letter}-keep"
}

resource "google_pubsub_topic" "topics" {
  #checkov:skip=CKV_GCP_83:CMEK is optional (var.encryption_keys.pubsub); messages carry object names and batch ids only, never image data.
  for_each = local.topics

  project                    = var.project_id
  name                       = each.value
  kms_key_name               = var.encryption_keys.pubsub
  message_retention_duration = var.pubsub.message_retention_duration
  labels                     = local.labels

  depends_on = [google_kms_crypto_key_iam_member.agents, google_project_service.apis]
}

resource "google_pubsub_subscription" "push" {
  for_each = local.push_subscriptions

  project = var.project_id
  name    = each.value.name
  topic   = google_pubsub_topic.topics[each.value.topic].id
  labels  = local.labels

  # Up to the function's timeout (Pub/Sub allows at most 600 s): a message is not redelivered while the
  # function still works on it.
  ack_deadline_seconds       = min(600, max(10, local.function_sizing[each.value.function].timeout_seconds))
  message_retention_duration = var.pubsub.message_retention_duration

  push_config {
    # The path only sets the CloudEvent source functions-framework derives (as in the local stack).
    push_endpoint = "${google_cloudfunctions2_function.functions[each.value.function].service_config[0].uri}/projects/${var.project_id}/topics/${google_pubsub_topic.topics[each.value.topic].name}"
    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloudfunctions2_function.functions[each.value.function].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = var.pubsub.minimum_backoff
    maximum_backoff = var.pubsub.maximum_backoff
  }

  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter == null ? [] : [each.value.dead_letter]
    content {
      dead_letter_topic     = google_pubsub_topic.topics["dead_letter"].id
      max_delivery_attempts = each.value.max_delivery_attempts
    }
  }

  expiration_policy {
    ttl = "" # never expires, even when idle for weeks
  }

  depends_on = [
    google_cloud_run_v2_service_iam_member.push_invoker,
    google_pubsub_topic_iam_member.dead_letter_publisher,
  ]
}

# Dead letters are kept here for inspection and replay (pull; nothing consumes it automatically).
resource "google_pubsub_subscription" "dead_letter_keep" {
  project = var.project_id
  name    = local.dead_letter_keep
  topic   = google_pubsub_topic.topics["dead_letter"].id
  labels  = local.labels

  ack_deadline_seconds       = 60
  message_retention_duration = var.pubsub.message_retention_duration
  retain_acked_messages      = true

  expiration_policy {
    ttl = ""
  }
}
