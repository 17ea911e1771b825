# Identities and grants. Every function runs as its own service account holding only resource-level roles
# on the resources it touches. The exceptions are documented where they are: Firestore and Cloud Build's log
# writing only offer project-level roles (Firestore's grant carries an IAM condition naming sendit's
# database). No public principal appears anywhere: HTTP functions are invoked by var.operators only.

locals {
  bucket_names = {
    staging     = google_storage_bucket.identified["staging"].name
    processing  = google_storage_bucket.identified["processing"].name
    destination = google_storage_bucket.destination.name
  }

  # function -> bucket -> role. objectUser where the function overwrites (idempotent retries) or deletes
  # (cleanup after send); objectViewer where it only reads.
  function_bucket_roles = [
    { function = "anonymize", bucket = "staging", role = "roles/storage.objectViewer" },
    { function = "anonymize", bucket = "processing", role = "roles/storage.objectUser" },
    { function = "deliver", bucket = "staging", role = "roles/storage.objectUser" },
    { function = "deliver", bucket = "processing", role = "roles/storage.objectUser" },
    { function = "deliver", bucket = "destination", role = "roles/storage.objectUser" },
    # reprocess: are the staging originals still there (a metadata read per file; objectViewer is the
    # narrowest predefined role with storage.objects.get that uniform bucket-level access allows).
    { function = "send", bucket = "staging", role = "roles/storage.objectViewer" },
  ]

  # function -> Firestore role on sendit's database (state documents; status only reads).
  function_firestore_roles = {
    anonymize   = "roles/datastore.user"
    deliver     = "roles/datastore.user"
    dead_letter = "roles/datastore.user"
    send        = "roles/datastore.user"
    status      = "roles/datastore.viewer"
    sweep       = "roles/datastore.user" # completion: reads tallies, finalizes batches
  }

  # function -> topic it publishes to. The sweep re-publishes a stalled file's notification to uploads,
  # send (its reprocess route) the notification of each file it reopens.
  # With settings.auto_send a completed batch is queued by the function that completes it.
  function_topic_roles = concat(
    [
      { function = "send", topic = "deliver", role = "roles/pubsub.publisher" },
      { function = "send", topic = "uploads", role = "roles/pubsub.publisher" },
      { function = "sweep", topic = "uploads", role = "roles/pubsub.publisher" },
    ],
    var.settings.auto_send ? [
      { function = "anonymize", topic = "deliver", role = "roles/pubsub.publisher" },
      { function = "sweep", topic = "deliver", role = "roles/pubsub.publisher" },
    ] : [],
  )

  # function -> role on the BigQuery tables (image and study table). Streaming inserts need
  # tables.updateData on the table only; send's reprocess deletes the rows of re-run files (DML).
  function_table_roles = [
    { function = "deliver", role = "roles/bigquery.dataEditor" },
    { function = "send", role = "roles/bigquery.dataEditor" },
  ]

  # Functions that run BigQuery queries: deliver asks which rows are in the tables already, send's
  # reprocess runs DELETE statements. A query is a job of the project, and bigquery.jobs.create exists at
  # project level only (roles/bigquery.jobUser); what a job may read or change is still the table grants.
  function_job_users = ["deliver", "send"]

  # Service agents that must use the optional CMEK keys.
  kms_grants = {
    for service, key in var.encryption_keys : service => {
      key   = key
      agent = service == "bigquery" ? data.google_bigquery_default_service_account.bq.email : local.service_agents[service]
    } if key != null
  }
}

data "google_bigquery_default_service_account" "bq" {
  project = var.project_id

  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------------------------------------- accounts

resource "google_service_account" "functions" {
  for_each = local.topology.functions

  project      = var.project_id
  account_id   = local.function_names[each.key]
  display_name = "sendit ${each.key} function"
  description  = "Runtime identity of the sendit ${each.key} Cloud Function (resource-level roles only)."
}

resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "sendit-push"
  display_name = "sendit Pub/Sub push"
  description  = "Identity in the OIDC token of sendit's push subscriptions; may invoke the event-driven functions only."
}

resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "sendit-build"
  display_name = "sendit function builds"
  description  = "Cloud Build identity that turns the sendit source archive into function images."
}

# ----------------------------------------------------------------------------------- function runtime roles

resource "google_storage_bucket_iam_member" "functions" {
  for_each = { for g in local.function_bucket_roles : "${g.function}/${g.bucket}/${g.role}" => g }

  bucket = local.bucket_names[each.value.bucket]
  role   = each.value.role
  member = google_service_account.functions[each.value.function].member
}

resource "google_project_iam_member" "functions_firestore" {
  # Firestore has no per-database IAM resource: project-level grant, conditioned on sendit's database.
  for_each = local.function_firestore_roles

  project = var.project_id
  role    = each.value
  member  = google_service_account.functions[each.key].member

  condition {
    title       = "sendit-firestore-${replace(each.key, "_", "-")}"
    description = "Only the sendit Firestore database."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${google_firestore_database.sendit.name}\""
  }
}

resource "google_project_iam_member" "functions_bigquery_jobs" {
  # Project-level: BigQuery has no narrower resource for creating query jobs.
  for_each = toset(local.function_job_users)

  project = var.project_id
  role    = "roles/bigquery.jobUser"
  member  = google_service_account.functions[each.value].member
}

resource "google_pubsub_topic_iam_member" "functions" {
  for_each = { for g in local.function_topic_roles : "${g.function}/${g.topic}/${g.role}" => g }

  project = var.project_id
  topic   = google_pubsub_topic.topics[each.value.topic].name
  role    = each.value.role
  member  = google_service_account.functions[each.value.function].member
}

resource "google_bigquery_table_iam_member" "functions" {
  for_each = { for g in local.function_table_roles : "${g.function}/${g.role}" => g }

  project    = var.project_id
  dataset_id = google_bigquery_dataset.sendit.dataset_id
  table_id   = google_bigquery_table.dicom.table_id
  role       = each.value.role
  member     = google_service_account.functions[each.value.function].member
}

# Only the functions that derive pseudonyms (topology.json needs_key: anonymize, dead_letter) may read the key.
resource "google_secret_manager_secret_iam_member" "functions" {
  for_each = { for key, fn in local.topology.functions : key => fn if fn.needs_key }

  project   = var.project_id
  secret_id = google_secret_manager_secret.key.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.functions[each.key].member
}

# ------------------------------------------------------------------------------------------- invokers

# Pub/Sub push (OIDC token of the push account) may invoke the event-driven functions.
resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  for_each = local.pubsub_functions

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.functions[each.key].name
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

# Operators (and only they) may call send and status. There is no unauthenticated invoker.
resource "google_cloud_run_v2_service_iam_member" "operators" {
  for_each = {
    for pair in setproduct(keys(local.http_functions), var.operators) : "${pair[0]}/${pair[1]}" => {
      function = pair[0]
      member   = pair[1]
    }
  }

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.functions[each.value.function].name
  role     = "roles/run.invoker"
  member   = each.value.member
}

# Operators pull the dead-letter keep subscription (`sendit dead-letters`: list, acknowledge what was
# replayed); the replay itself goes through the send function.
resource "google_pubsub_subscription_iam_member" "operators_dead_letters" {
  for_each = toset(var.operators)

  project      = var.project_id
  subscription = google_pubsub_subscription.dead_letter_keep.name
  role         = "roles/pubsub.subscriber"
  member       = each.value
}

# Researchers: upload-only access to the staging bucket (create objects; no read, list or delete).
resource "google_storage_bucket_iam_member" "uploaders" {
  for_each = toset(var.uploaders)

  bucket = google_storage_bucket.identified["staging"].name
  role   = "roles/storage.objectCreator"
  member = each.value
}

# ------------------------------------------------------------------------------------- service agents

# The Cloud Storage service agent publishes the staging bucket's OBJECT_FINALIZE notifications.
resource "google_pubsub_topic_iam_member" "gcs_publishes_uploads" {
  project = var.project_id
  topic   = google_pubsub_topic.topics["uploads"].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${local.service_agents.storage}"
}

# Dead-lettering: the Pub/Sub service agent publishes to the dead-letter topic and acknowledges the
# forwarded message on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.topics["dead_letter"].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${local.service_agents.pubsub}"
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = { for key, sub in local.push_subscriptions : key => sub if sub.dead_letter != null }

  project      = var.project_id
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${local.service_agents.pubsub}"
}

# The Pub/Sub service agent mints the push account's OIDC tokens (needed in projects created before
# April 2021; harmless elsewhere). Granted on that one account, not on the project.
resource "google_service_account_iam_member" "pubsub_mints_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${local.service_agents.pubsub}"
}

resource "google_kms_crypto_key_iam_member" "agents" {
  for_each = local.kms_grants

  crypto_key_id = each.value.key
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${each.value.agent}"
}

# ----------------------------------------------------------------------------------------- builds

resource "google_storage_bucket_iam_member" "build_reads_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

resource "google_artifact_registry_repository_iam_member" "build_writes_images" {
  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.build.member
}

# Cloud Build writes build logs through the project's logging: there is no narrower resource to grant on.
resource "google_project_iam_member" "build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.build.member
}
