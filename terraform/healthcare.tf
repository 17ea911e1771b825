# Optional Cloud Healthcare API DICOM store as a DICOMweb delivery target (off by default).
# When var.healthcare.enabled: a Healthcare dataset and DICOM store in the deployment's region (CMEK from
# var.encryption_keys.healthcare, like the other services), the deliver function's service account granted
# roles/healthcare.dicomEditor on that one store only, and the store's DICOMweb service root passed to the
# functions (one environment for all; deliver uses it) as SENDIT_DICOMWEB_URL with SENDIT_DELIVERY_TARGETS.
# Optionally (stream_to_bigquery) the Healthcare service agent may write a metadata table in sendit's dataset, for the store's BigQuery
# streaming (set by one API request, docs/send.md: the GA google provider has no stream_configs).
# The variable and outputs live here too, so the whole feature is one file.

variable "healthcare" {
  description = "Optional Cloud Healthcare API DICOM store that deliver stores every instance in over DICOMweb (STOW-RS). delivery_targets: bucket,dicomweb (both) or dicomweb (the store only). stream_to_bigquery: let the Healthcare service agent write bigquery_table in sendit's dataset, for the store's BigQuery streaming (docs/send.md)."
  type = object({
    enabled            = optional(bool, false)
    location           = optional(string)
    dataset            = optional(string, "sendit")
    dicom_store        = optional(string, "sendit-deidentified")
    delivery_targets   = optional(string, "bucket,dicomweb")
    stream_to_bigquery = optional(bool, false)
    bigquery_table     = optional(string, "dicom_store_metadata")
  })
  nullable = false
  default  = {}
  validation {
    condition     = contains(["bucket,dicomweb", "dicomweb"], var.healthcare.delivery_targets)
    error_message = "healthcare.delivery_targets must be bucket,dicomweb or dicomweb."
  }
  validation {
    condition = alltrue([
      can(regex("^[A-Za-z0-9_.-]{1,256}$", var.healthcare.dataset)),
      can(regex("^[A-Za-z0-9_.-]{1,256}$", var.healthcare.dicom_store)),
      can(regex("^[A-Za-z_][A-Za-z0-9_]*$", var.healthcare.bigquery_table)),
      length(var.healthcare.bigquery_table) <= 1024,
    ])
    error_message = "healthcare.dataset and dicom_store: letters, digits, _ . - (1-256); bigquery_table: a BigQuery table id."
  }
}

locals {
  healthcare_count    = var.healthcare.enabled ? 1 : 0
  healthcare_location = coalesce(var.healthcare.location, var.region)
  # The store's resource name and DICOMweb service root (PS3.18 paths such as /studies follow it).
  dicom_store_name = var.healthcare.enabled ? "projects/${var.project_id}/locations/${local.healthcare_location}/datasets/${google_healthcare_dataset.sendit[0].name}/dicomStores/${google_healthcare_dicom_store.sendit[0].name}" : null
  dicomweb_url     = var.healthcare.enabled ? "https://healthcare.googleapis.com/v1/${local.dicom_store_name}/dicomWeb" : null
  # Merged into local.function_env (functions.tf); only deliver's account may use the store.
  dicomweb_env = var.healthcare.enabled ? {
    SENDIT_DICOMWEB_URL     = local.dicomweb_url
    SENDIT_DELIVERY_TARGETS = var.healthcare.delivery_targets
  } : {}
  healthcare_stream = var.healthcare.enabled && var.healthcare.stream_to_bigquery ? 1 : 0
}

resource "google_project_service" "healthcare" {
  count = var.healthcare.enabled && var.enable_apis ? 1 : 0

  project            = var.project_id
  service            = "healthcare.googleapis.com"
  disable_on_destroy = false
}

resource "google_healthcare_dataset" "sendit" {
  count = local.healthcare_count

  project  = var.project_id
  name     = var.healthcare.dataset
  location = local.healthcare_location

  dynamic "encryption_spec" {
    for_each = var.encryption_keys.healthcare == null ? [] : [var.encryption_keys.healthcare]
    content {
      kms_key_name = encryption_spec.value
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.agents, google_project_service.healthcare]
}

resource "google_healthcare_dicom_store" "sendit" {
  count = local.healthcare_count

  name    = var.healthcare.dicom_store
  dataset = google_healthcare_dataset.sendit[0].id
  labels  = local.labels

  # BigQuery streaming (the store's streamConfigs) exists only in the google-beta provider; with
  # stream_to_bigquery this file grants the Healthcare service agent what streaming needs, and the
  # healthcare_stream_table_uri output is what docs/send.md's one PATCH request sets.
}

# The deliver function stores and queries instances in this store only (STOW-RS, QIDO-RS, WADO-RS).
resource "google_healthcare_dicom_store_iam_member" "deliver" {
  count = local.healthcare_count

  dicom_store_id = google_healthcare_dicom_store.sendit[0].id
  role           = "roles/healthcare.dicomEditor"
  member         = google_service_account.functions["deliver"].member
}

# Streaming: the Healthcare service agent writes the metadata table in sendit's dataset and runs the
# load jobs (jobUser exists at project level only).
resource "google_bigquery_dataset_iam_member" "healthcare_streams" {
  count = local.healthcare_stream

  project    = var.project_id
  dataset_id = google_bigquery_dataset.sendit.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = "serviceAccount:${local.service_agents.healthcare}"

  depends_on = [google_project_service.healthcare]
}

resource "google_project_iam_member" "healthcare_stream_jobs" {
  count = local.healthcare_stream

  project = var.project_id
  role    = "roles/bigquery.jobUser"
  member  = "serviceAccount:${local.service_agents.healthcare}"

  depends_on = [google_project_service.healthcare]
}

output "dicomweb_url" {
  description = "DICOMweb service root of the Healthcare API DICOM store (null when var.healthcare.enabled is false). Viewers and QIDO-RS/WADO-RS clients use it with an OAuth token."
  value       = local.dicomweb_url
}

output "healthcare_stream_table_uri" {
  description = "BigQuery table URI for the DICOM store's streamConfigs (docs/send.md), or null unless healthcare.stream_to_bigquery."
  value       = local.healthcare_stream == 1 ? "bq://${var.project_id}.${google_bigquery_dataset.sendit.dataset_id}.${var.healthcare.bigquery_table}" : null
}

output "healthcare_dicom_store" {
  description = "Id of the Healthcare API DICOM store (projects/P/locations/L/datasets/D/dicomStores/S), or null."
  value       = local.dicom_store_name
}
