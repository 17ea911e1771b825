# sendit on Google Cloud: staging bucket -> Pub/Sub -> anonymize -> Firestore state -> send (HTTP) ->
# deliver -> destination bucket + BigQuery. Resource names come from the one shared declaration,
# shared/sendit/topology.json, which the local stack reads too; only bucket names get a prefix
# (bucket names are global).

locals {
  topology = jsondecode(file("${path.module}/../shared/sendit/topology.json"))

  prefix = var.name_prefix == "" ? var.project_id : var.name_prefix
  labels = merge(var.labels, { app = "sendit" })

  bucket_location = coalesce(var.storage.location, var.region)
  buckets = {
    for key, name in local.topology.buckets : key => "${local.prefix}-${name}"
  }
  sources_bucket = "${local.prefix}-sendit-sources"

  topics = local.topology.topics

  # Function key (topology.json) -> Cloud Functions / service-account-friendly name.
  function_names = {
    for key, fn in local.topology.functions : key => "sendit-${replace(key, "_", "-")}"
  }
  pubsub_functions = { for key, fn in local.topology.functions : key => fn if fn.trigger == "pubsub" }
  http_functions   = { for key, fn in local.topology.functions : key => fn if fn.trigger == "http" }

  function_sizing = {
    for key in keys(local.topology.functions) : key => merge(
      { memory = "512M", cpu = "1", timeout_seconds = 300, max_instances = 10, min_instances = 0, concurrency = 1 },
      try(var.functions[key], {}),
    )
  }

  bigquery_table_id = "${var.project_id}.${local.topology.bigquery.dataset}.${local.topology.bigquery.table}"

  project_number = data.google_project.project.number
  # Google-managed service agents that act on sendit's resources.
  service_agents = {
    pubsub     = "service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
    storage    = data.google_storage_project_service_account.gcs.email_address
    bigquery   = "bq-${local.project_number}@bigquery-encryption.iam.gserviceaccount.com"
    firestore  = "service-${local.project_number}@gcp-sa-firestore.iam.gserviceaccount.com"
    secret     = "service-${local.project_number}@gcp-sa-secretmanager.iam.gserviceaccount.com"
    healthcare = "service-${local.project_number}@gcp-sa-healthcare.iam.gserviceaccount.com"
    scheduler  = "service-${local.project_number}@gcp-sa-cloudscheduler.iam.gserviceaccount.com"
  }

  apis = [
    "artifactregistry.googleapis.com",
    "bigquery.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudfunctions.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]
}

data "google_project" "project" {
  project_id = var.project_id
}

data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [google_project_service.apis]
}

resource "google_project_service" "apis" {
  for_each = var.enable_apis ? toset(local.apis) : toset([])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
