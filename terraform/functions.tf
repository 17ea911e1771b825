# The five Cloud Functions (2nd gen), all deployed from the one source archive (bundle.tf), each with its
# own service account (iam.tf). Entry points and triggers come from topology.json:
#   anonymize, deliver, dead_letter, sweep  CloudEvent functions, pushed to by their Pub/Sub subscription
#                                    (pubsub.tf); ingress ALLOW_INTERNAL_ONLY (Pub/Sub push is internal).
#   send, status                     HTTP functions; IAM-authenticated (operators only), ingress
#                                    var.http_ingress (internal + optional HTTPS load balancer, never all).

locals {
  # Every variable sendit.config.Settings.from_env reads, set explicitly on every function. The key
  # (SENDIT_SECRET_KEY) is not here: it comes from Secret Manager as a secret environment variable.
  settings_env = {
    GOOGLE_CLOUD_PROJECT       = var.project_id
    SENDIT_STAGING_BUCKET      = local.buckets.staging
    SENDIT_PROCESSING_BUCKET   = local.buckets.processing
    SENDIT_DESTINATION_BUCKET  = local.buckets.destination
    SENDIT_BIGQUERY_TABLE      = local.bigquery_table_id
    SENDIT_DELIVER_TOPIC       = local.topics.deliver
    SENDIT_UPLOAD_TOPIC        = local.topics.uploads
    SENDIT_FIRESTORE_DATABASE  = var.firestore.database
    SENDIT_COLLECTION          = var.settings.collection
    SENDIT_ALLOWED_MODALITIES  = join(",", var.settings.allowed_modalities)
    SENDIT_DATE_SHIFT_MAX_DAYS = tostring(var.settings.date_shift_max_days)
    SENDIT_IDENTITY_PROVIDER   = var.settings.identity_provider
    SENDIT_PIXEL_CLEANING      = tostring(var.settings.pixel_cleaning)
    SENDIT_PROFILE_OPTIONS     = join(",", var.settings.profile_options)
    SENDIT_DELIVERY_LAYOUT     = var.settings.delivery_layout
    SENDIT_CLEANUP             = var.settings.cleanup
    SENDIT_MAX_ATTEMPTS        = tostring(local.topology.subscriptions.anonymize.max_delivery_attempts)
    SENDIT_LEASE_SECONDS       = tostring(var.settings.lease_seconds)
    SENDIT_LOG_LEVEL           = var.log_level
    # Completion and the status API (docs/state.md).
    SENDIT_STABLE_AGE_SECONDS       = tostring(var.settings.stable_age_seconds)
    SENDIT_MANIFEST_TIMEOUT_SECONDS = tostring(var.settings.manifest_timeout_seconds)
    SENDIT_TALLY_SHARDS             = tostring(var.settings.tally_shards)
    SENDIT_REDRIVE_SECONDS          = tostring(var.settings.redrive_seconds)
    SENDIT_AUTO_SEND                = tostring(var.settings.auto_send)
    SENDIT_STATUS_NAMES             = var.settings.status_names
    # The processing bucket's lifecycle (storage.tf), from the same variable: the status API shows when
    # an unsent batch's clean files expire.
    SENDIT_PROCESSING_RETENTION_DAYS = tostring(var.storage.processing_retention_days)
    # functions-framework adds execution ids to JSON log lines; deid's own logger stays quiet.
    LOG_EXECUTION_ID = "true"
    MESSAGELEVEL     = "QUIET"
  }
  function_env = merge(
    local.settings_env,
    var.settings.recipe == null ? {} : { SENDIT_RECIPE = var.settings.recipe },
    var.settings.identity_url == null ? {} : { SENDIT_IDENTITY_URL = var.settings.identity_url },
    local.dicomweb_env, # healthcare.tf: the DICOM store as a delivery target (empty when off)
    local.identity_env, # identity.tf: study table, identity attributes, the identity provider's auth
  )
}

resource "google_cloudfunctions2_function" "functions" {
  for_each = local.topology.functions

  project     = var.project_id
  location    = var.region
  name        = local.function_names[each.key]
  description = "sendit ${each.key} (${each.value.trigger} trigger), source ${local.bundle_object}"
  labels      = merge(local.labels, { function = replace(each.key, "_", "-") })

  build_config {
    runtime           = var.runtime
    entry_point       = each.value.entry_point
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.bundle.name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.functions[each.key].email
    ingress_settings                 = each.value.trigger == "http" ? var.http_ingress : "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    available_memory                 = local.function_sizing[each.key].memory
    available_cpu                    = local.function_sizing[each.key].cpu
    timeout_seconds                  = local.function_sizing[each.key].timeout_seconds
    max_instance_count               = local.function_sizing[each.key].max_instances
    min_instance_count               = local.function_sizing[each.key].min_instances
    max_instance_request_concurrency = local.function_sizing[each.key].concurrency

    environment_variables = local.function_env

    # Only the functions that derive pseudonyms (topology needs_key) get the key.
    dynamic "secret_environment_variables" {
      for_each = each.value.needs_key ? [local.secret_version] : []
      content {
        key        = "SENDIT_SECRET_KEY"
        project_id = var.project_id
        secret     = google_secret_manager_secret.key.secret_id
        # A pinned version: every instance of a revision uses the same key (pseudonyms stay consistent);
        # rotation is a deliberate redeploy (see README).
        version = secret_environment_variables.value
      }
    }
    # identity.tf: the honest broker's static bearer token (identity.auth = token), same functions.
    dynamic "secret_environment_variables" {
      for_each = contains(keys(local.identity_token), each.key) ? [local.identity_token[each.key]] : []
      content {
        key        = "SENDIT_IDENTITY_TOKEN"
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.functions,
    google_secret_manager_secret_iam_member.identity_token,
    google_storage_bucket_iam_member.build_reads_sources,
    google_artifact_registry_repository_iam_member.build_writes_images,
    google_project_iam_member.build_logs,
  ]
}
