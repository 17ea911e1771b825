# The one function source archive. It is built outside Terraform by `python -m sendit.bundle OUT_DIR`
# (the same archive the integration test unpacks and runs with functions-framework) and handed in as
# var.bundle_path. Its name carries the sha256 of its bytes, so the object name - and with it every
# function - only changes when the code does.

locals {
  bundle_object = basename(var.bundle_path)
}

resource "google_storage_bucket" "sources" {
  #checkov:skip=CKV_GCP_62:Access is audited with Cloud Audit Logs (data access logs), not legacy usage-log buckets.
  #checkov:skip=CKV_GCP_78:Archives are immutable and content-addressed (the name is their hash); versioning adds nothing.
  project                     = var.project_id
  name                        = local.sources_bucket
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = merge(local.labels, { role = "sources" })

  versioning {
    enabled = false
  }

  lifecycle_rule {
    condition {
      age = 90
    }
    action {
      type = "Delete"
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

resource "google_storage_bucket_object" "bundle" {
  bucket       = google_storage_bucket.sources.name
  name         = local.bundle_object
  source       = var.bundle_path
  content_type = "application/zip"

  lifecycle {
    precondition {
      condition     = substr(filesha256(var.bundle_path), 0, 12) == trimsuffix(trimprefix(local.bundle_object, "sendit-functions-"), ".zip")
      error_message = "The archive's name does not match its content hash: rebuild it with python -m sendit.bundle OUT_DIR."
    }
  }
}

# Images built from the archive live in a repository sendit owns (so the build service account writes to
# this repository only), with a cleanup policy so old builds do not pile up.
resource "google_artifact_registry_repository" "functions" {
  #checkov:skip=CKV_GCP_84:Holds container images built from the public source archive only, never image data; Google-managed encryption.
  project       = var.project_id
  location      = var.region
  repository_id = "sendit-functions"
  description   = "Container images built from the sendit function source archive."
  format        = "DOCKER"
  labels        = local.labels

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.apis]
}
