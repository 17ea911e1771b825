# One row per delivered image. The schema is the project's single JSON file (shared/sendit/schema), the same
# one the deliver code and the local stack use; the dataset and table names come from topology.json.

resource "google_bigquery_dataset" "sendit" {
  #checkov:skip=CKV_GCP_81:CMEK is optional (var.encryption_keys.bigquery); rows hold pseudonymized metadata only.
  project       = var.project_id
  dataset_id    = local.topology.bigquery.dataset
  friendly_name = "sendit"
  description   = "De-identified DICOM metadata delivered by sendit (one row per image)."
  location      = coalesce(var.bigquery.location, var.region)
  labels        = local.labels

  delete_contents_on_destroy = false

  dynamic "default_encryption_configuration" {
    for_each = var.encryption_keys.bigquery == null ? [] : [var.encryption_keys.bigquery]
    content {
      kms_key_name = default_encryption_configuration.value
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.agents, google_project_service.apis]
}

resource "google_bigquery_table" "dicom" {
  #checkov:skip=CKV_GCP_80:CMEK is optional (var.encryption_keys.bigquery); rows hold pseudonymized metadata only.
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.sendit.dataset_id
  table_id            = local.topology.bigquery.table
  description         = "One row per delivered, de-identified DICOM instance."
  labels              = local.labels
  deletion_protection = var.deletion_protection

  schema = file("${path.module}/../shared/sendit/${local.topology.bigquery.schema}")

  time_partitioning {
    type  = "DAY"
    field = "sent_at"
  }
  clustering = ["collection", "batch_id"]

  dynamic "encryption_configuration" {
    for_each = var.encryption_keys.bigquery == null ? [] : [var.encryption_keys.bigquery]
    content {
      kms_key_name = encryption_configuration.value
    }
  }
}

# One row per delivered study and delivery (shared/sendit/schema/study.json, the file the deliver code and
# the local stack use; docs/send.md "The study table").
locals {
  study_table_id = "${var.project_id}.${local.topology.bigquery.dataset}.${local.topology.bigquery.study_table}"
}

resource "google_bigquery_table" "studies" {
  #checkov:skip=CKV_GCP_80:CMEK is optional (var.encryption_keys.bigquery); rows hold pseudonymized metadata only.
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.sendit.dataset_id
  table_id            = local.topology.bigquery.study_table
  description         = "One row per delivered, de-identified study and delivery (series summary, counts, links)."
  labels              = local.labels
  deletion_protection = var.deletion_protection

  schema = file("${path.module}/../shared/sendit/${local.topology.bigquery.study_schema}")

  time_partitioning {
    type  = "DAY"
    field = "sent_at"
  }
  clustering = ["collection", "batch_id"]

  dynamic "encryption_configuration" {
    for_each = var.encryption_keys.bigquery == null ? [] : [var.encryption_keys.bigquery]
    content {
      kms_key_name = encryption_configuration.value
    }
  }
}

resource "google_bigquery_table_iam_member" "studies" {
  for_each = { for g in local.function_table_roles : "${g.function}/${g.role}" => g }

  project    = var.project_id
  dataset_id = google_bigquery_dataset.sendit.dataset_id
  table_id   = google_bigquery_table.studies.table_id
  role       = each.value.role
  member     = google_service_account.functions[each.value.function].member
}

output "study_table" {
  description = "BigQuery table receiving one row per delivered study and delivery (project.dataset.table)."
  value       = local.study_table_id
}
