# Buckets: staging (identified uploads), processing (de-identified, before delivery), destination
# (delivered studies), sources (the function archive). All with uniform access and public access
# prevention enforced. Staging and processing hold data only as long as the pipeline needs it.

locals {
  identified_buckets = {
    staging    = var.storage.staging_retention_days
    processing = var.storage.processing_retention_days
  }
}

# Staging and processing hold identified or not-yet-delivered images: lifecycle deletion, no versioning,
# no soft delete by default (a deleted identified image must not linger).
resource "google_storage_bucket" "identified" {
  #checkov:skip=CKV_GCP_62:Access is audited with Cloud Audit Logs (data access logs), not legacy usage-log buckets.
  #checkov:skip=CKV_GCP_78:Versioning would keep identified images after the pipeline deletes them; these buckets are transient by design.
  for_each = local.identified_buckets

  project                     = var.project_id
  name                        = local.buckets[each.key]
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.storage.force_destroy
  labels                      = merge(local.labels, { role = each.key })

  versioning {
    enabled = false
  }

  soft_delete_policy {
    retention_duration_seconds = var.storage.identified_soft_delete_seconds
  }

  lifecycle_rule {
    condition {
      age = each.value
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  dynamic "encryption" {
    for_each = var.encryption_keys.storage == null ? [] : [var.encryption_keys.storage]
    content {
      default_kms_key_name = encryption.value
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.agents, google_project_service.apis]
}

resource "google_storage_bucket" "destination" {
  #checkov:skip=CKV_GCP_62:Access is audited with Cloud Audit Logs (data access logs), not legacy usage-log buckets.
  project                     = var.project_id
  name                        = local.buckets.destination
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.storage.force_destroy
  labels                      = merge(local.labels, { role = "destination" })

  versioning {
    enabled = var.destination_versioning
  }

  dynamic "encryption" {
    for_each = var.encryption_keys.storage == null ? [] : [var.encryption_keys.storage]
    content {
      default_kms_key_name = encryption.value
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.agents, google_project_service.apis]
}

# OBJECT_FINALIZE of every staged file -> the uploads topic (payload JSON_API_V1) -> anonymize.
resource "google_storage_notification" "staging_uploads" {
  bucket         = google_storage_bucket.identified["staging"].name
  payload_format = "JSON_API_V1"
  topic          = google_pubsub_topic.topics["uploads"].id
  event_types    = ["OBJECT_FINALIZE"]

  depends_on = [google_pubsub_topic_iam_member.gcs_publishes_uploads]
}
