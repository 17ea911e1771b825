# Inputs of the sendit deployment. Every variable is described, typed and validated; objects use
# optional(type, default) so a caller sets only what differs from the defaults.

variable "project_id" {
  description = "Project that hosts sendit (every resource is created in it)."
  type        = string
  nullable    = false
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a valid Google Cloud project id."
  }
}

variable "region" {
  description = "Region for the functions, buckets (unless overridden) and Firestore (unless overridden)."
  type        = string
  nullable    = false
  default     = "europe-west1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1."
  }
}

variable "name_prefix" {
  description = "Prefix of the bucket names (bucket names are global). Empty: the project id is used."
  type        = string
  nullable    = false
  default     = ""
  validation {
    condition     = var.name_prefix == "" || can(regex("^[a-z0-9][a-z0-9-]{0,28}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 2-30 lowercase letters, digits or hyphens, not starting or ending with a hyphen."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels (on top of app=sendit)."
  type        = map(string)
  nullable    = false
  default     = {}
  validation {
    condition = alltrue([
      for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))
    ])
    error_message = "Label keys and values must be lowercase letters, digits, underscores or hyphens."
  }
}

variable "bundle_path" {
  description = "Path of the function source archive built by `python -m sendit.bundle OUT_DIR` (its name carries its content hash: sendit-functions-<sha256[:12]>.zip)."
  type        = string
  nullable    = false
  validation {
    condition     = can(regex("(^|/)sendit-functions-[0-9a-f]{12}\\.zip$", var.bundle_path))
    error_message = "bundle_path must point at an archive named sendit-functions-<sha256[:12]>.zip (python -m sendit.bundle OUT_DIR)."
  }
}

variable "operators" {
  description = "IAM principals allowed to invoke the send and status functions (e.g. group:imaging-ops@example.org)."
  type        = list(string)
  nullable    = false
  default     = []
  validation {
    condition     = alltrue([for m in var.operators : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):.+", m))])
    error_message = "operators must be user:, group:, serviceAccount:, domain:, principal: or principalSet: members; public principals are not accepted."
  }
}

variable "uploaders" {
  description = "IAM principals given upload-only access (roles/storage.objectCreator) to the staging bucket."
  type        = list(string)
  nullable    = false
  default     = []
  validation {
    condition     = alltrue([for m in var.uploaders : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):.+", m))])
    error_message = "uploaders must be user:, group:, serviceAccount:, domain:, principal: or principalSet: members; public principals are not accepted."
  }
}

variable "http_ingress" {
  description = "Ingress of the HTTP functions (send, status): ALLOW_INTERNAL_AND_GCLB (VPC + an external HTTPS load balancer, e.g. with IAP) or ALLOW_INTERNAL_ONLY (VPC only)."
  type        = string
  nullable    = false
  default     = "ALLOW_INTERNAL_AND_GCLB"
  validation {
    condition     = contains(["ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.http_ingress)
    error_message = "http_ingress must be ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB (never ALLOW_ALL)."
  }
}

variable "functions" {
  description = "Per-function runtime sizing, keyed by the function names of topology.json (anonymize, deliver, dead_letter, send, status)."
  type = map(object({
    memory          = optional(string, "512M")
    cpu             = optional(string, "1")
    timeout_seconds = optional(number, 300)
    max_instances   = optional(number, 10)
    min_instances   = optional(number, 0)
    concurrency     = optional(number, 1)
  }))
  nullable = false
  default = {
    anonymize   = { memory = "2Gi", cpu = "1", timeout_seconds = 540, max_instances = 50 }
    deliver     = { memory = "2Gi", cpu = "1", timeout_seconds = 540, max_instances = 10 }
    dead_letter = { memory = "512M", timeout_seconds = 60, max_instances = 5 }
    send        = { memory = "512M", timeout_seconds = 60, max_instances = 3, concurrency = 4 }
    status      = { memory = "512M", timeout_seconds = 60, max_instances = 3, concurrency = 8 }
  }
  validation {
    condition = alltrue([
      for k, f in var.functions : f.timeout_seconds >= 1 && f.timeout_seconds <= 540 && f.max_instances >= 1 && f.min_instances >= 0 && f.concurrency >= 1
    ])
    error_message = "Each function needs 1 <= timeout_seconds <= 540 (event-driven limit), max_instances >= 1, min_instances >= 0 and concurrency >= 1."
  }
}

variable "runtime" {
  description = "Cloud Functions (2nd gen) Python runtime."
  type        = string
  nullable    = false
  default     = "python312"
  validation {
    condition     = can(regex("^python3[0-9]+$", var.runtime))
    error_message = "runtime must be a Python runtime id such as python312."
  }
}

variable "settings" {
  description = "Optional sendit settings, passed to every function as the SENDIT_* environment variables of sendit.config.Settings."
  type = object({
    collection          = optional(string, "sendit")
    recipe              = optional(string)
    allowed_modalities  = optional(list(string), ["CT", "MR"])
    date_shift_max_days = optional(number, 365)
    identity_provider   = optional(string, "hmac")
    identity_url        = optional(string)
    pixel_cleaning      = optional(bool, false)
    profile_options     = optional(list(string), [])
    delivery_layout     = optional(string, "instance")
    cleanup             = optional(string, "after-send")
    lease_seconds       = optional(number, 60)
    # Completion (docs/state.md): stable age for uploads without a manifest, how long a manifest-listed
    # object may take to arrive, tally shards per batch, auto-send, folder/object names in the status API.
    stable_age_seconds       = optional(number, 60)
    manifest_timeout_seconds = optional(number, 3600)
    tally_shards             = optional(number, 16)
    # The sweep re-publishes the notification of a file still RECEIVED this long after its lease expired
    # (docs/reliability.md); longer than the subscription's maximum backoff, so Pub/Sub had its turn.
    redrive_seconds = optional(number, 900)
    auto_send       = optional(bool, false)
    status_names    = optional(string, "shown")
  })
  nullable = false
  default  = {}
  validation {
    condition     = contains(["hmac", "http"], var.settings.identity_provider) && (var.settings.identity_provider != "http" || var.settings.identity_url != null)
    error_message = "settings.identity_provider must be hmac or http; http needs settings.identity_url."
  }
  validation {
    condition     = contains(["instance", "tar"], var.settings.delivery_layout) && contains(["after-send", "never"], var.settings.cleanup)
    error_message = "settings.delivery_layout must be instance or tar; settings.cleanup must be after-send or never."
  }
  validation {
    condition     = alltrue([for option in var.settings.profile_options : contains(["clean_descriptors"], option)])
    error_message = "settings.profile_options may name clean_descriptors (the PS3.15 Clean Descriptors option) only."
  }
  validation {
    condition     = var.settings.date_shift_max_days >= 1
    error_message = "settings.date_shift_max_days must be at least 1."
  }
  validation {
    # The claim lease must free before Pub/Sub's retries run out (10 s + 20 s + 40 s + 80 s with the
    # subscription's 10..600 s backoff), or a file whose instance died is dead-lettered instead of retried.
    condition     = var.settings.lease_seconds >= 5 && var.settings.lease_seconds <= 120
    error_message = "settings.lease_seconds must be between 5 and 120 (shorter than the Pub/Sub retry window)."
  }
  validation {
    # The sweep runs every minute: a stable age below it only adds sweeps, one above a day holds uploads.
    condition     = var.settings.stable_age_seconds >= 1 && var.settings.stable_age_seconds <= 86400 && floor(var.settings.stable_age_seconds) == var.settings.stable_age_seconds
    error_message = "settings.stable_age_seconds must be a whole number between 1 and 86400."
  }
  validation {
    condition     = var.settings.manifest_timeout_seconds >= 60 && var.settings.manifest_timeout_seconds <= 604800 && floor(var.settings.manifest_timeout_seconds) == var.settings.manifest_timeout_seconds
    error_message = "settings.manifest_timeout_seconds must be a whole number between 60 and 604800 (7 days)."
  }
  validation {
    condition     = var.settings.redrive_seconds >= 60 && var.settings.redrive_seconds <= 86400 && floor(var.settings.redrive_seconds) == var.settings.redrive_seconds
    error_message = "settings.redrive_seconds must be a whole number between 60 and 86400."
  }
  validation {
    condition     = var.settings.tally_shards >= 1 && var.settings.tally_shards <= 256 && floor(var.settings.tally_shards) == var.settings.tally_shards
    error_message = "settings.tally_shards must be a whole number between 1 and 256."
  }
  validation {
    condition     = contains(["shown", "hidden"], var.settings.status_names)
    error_message = "settings.status_names must be shown or hidden."
  }
}

variable "sweep_schedule" {
  description = "Cron schedule (Cloud Scheduler, in sweep_time_zone) of the completion sweep: every open batch's stable age and manifest timeout are checked at each tick."
  type        = string
  nullable    = false
  default     = "* * * * *"
  validation {
    condition     = length(split(" ", trimspace(var.sweep_schedule))) == 5
    error_message = "sweep_schedule must be a five-field cron expression such as \"* * * * *\"."
  }
}

variable "sweep_time_zone" {
  description = "Time zone of sweep_schedule (an IANA name)."
  type        = string
  nullable    = false
  default     = "Etc/UTC"
}

variable "storage" {
  description = "Bucket options: location (default: region), retention of identified data in staging/processing, versioning of the destination."
  type = object({
    location                       = optional(string)
    staging_retention_days         = optional(number, 30)
    processing_retention_days      = optional(number, 30)
    identified_soft_delete_seconds = optional(number, 0)
    force_destroy                  = optional(bool, false)
  })
  nullable = false
  default  = {}
  validation {
    condition     = var.storage.staging_retention_days >= 1 && var.storage.processing_retention_days >= 1
    error_message = "Retention days must be at least 1."
  }
  validation {
    # The processing lifecycle deletes clean files of a batch left unsent (docs/operations.md, "Expiry"); it
    # is also SENDIT_PROCESSING_RETENTION_DAYS, bounded alike in sendit.config.
    condition     = floor(var.storage.processing_retention_days) == var.storage.processing_retention_days && var.storage.processing_retention_days <= 36500
    error_message = "storage.processing_retention_days must be a whole number of days, at most 36500."
  }
  validation {
    # A batch must be able to complete before its clean files expire: after its stable age or manifest
    # timeout, at the next sweep (local.sweep_interval_max_seconds, scheduler.tf).
    condition     = var.storage.processing_retention_days * 86400 > max(var.settings.stable_age_seconds, var.settings.manifest_timeout_seconds) + local.sweep_interval_max_seconds
    error_message = "storage.processing_retention_days must be longer than settings.stable_age_seconds and settings.manifest_timeout_seconds plus the sweep interval (sweep_schedule)."
  }
  validation {
    condition     = var.storage.identified_soft_delete_seconds == 0 || (var.storage.identified_soft_delete_seconds >= 604800 && var.storage.identified_soft_delete_seconds <= 7776000)
    error_message = "identified_soft_delete_seconds must be 0 (off) or between 7 and 90 days (GCS limits)."
  }
}

variable "firestore" {
  description = "Firestore database: name (a named database avoids clashing with an existing (default)), location (default: region), point-in-time recovery."
  type = object({
    database               = optional(string, "sendit")
    location               = optional(string)
    point_in_time_recovery = optional(bool, true)
  })
  nullable = false
  default  = {}
  validation {
    condition     = var.firestore.database == "(default)" || can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.firestore.database))
    error_message = "firestore.database must be (default) or 4-63 lowercase letters, digits or hyphens."
  }
}

variable "bigquery" {
  description = "BigQuery options: dataset location (default: region)."
  type = object({
    location = optional(string)
  })
  nullable = false
  default  = {}
}

variable "pubsub" {
  description = "Pub/Sub delivery options for the push subscriptions that trigger anonymize, deliver and dead_letter."
  type = object({
    minimum_backoff            = optional(string, "10s")
    maximum_backoff            = optional(string, "600s")
    message_retention_duration = optional(string, "604800s")
  })
  nullable = false
  default  = {}
  validation {
    condition     = alltrue([for d in values(var.pubsub) : can(regex("^[0-9]+s$", d))])
    error_message = "Durations are in seconds with an s suffix, e.g. 600s."
  }
}

variable "secret" {
  description = "Pseudonymization key. create_version=true: Terraform generates a random key (ephemeral, write-only: never in state, plan or outputs); bump version to rotate. create_version=false: add versions yourself (gcloud secrets versions add) and pin existing_version."
  type = object({
    create_version   = optional(bool, true)
    version          = optional(number, 1)
    length           = optional(number, 48)
    existing_version = optional(string, "latest")
  })
  nullable = false
  default  = {}
  validation {
    condition     = var.secret.length >= 32 && var.secret.version >= 1
    error_message = "secret.length must be at least 32 and secret.version at least 1."
  }
}

variable "encryption_keys" {
  description = "Optional Cloud KMS keys (CMEK), one per service (a key must sit in the location of what it encrypts). Unset: Google-managed encryption."
  type = object({
    storage   = optional(string)
    bigquery  = optional(string)
    pubsub    = optional(string)
    firestore = optional(string)
    secret    = optional(string)
    # the Cloud Healthcare API dataset (healthcare.tf), when var.healthcare.enabled
    healthcare = optional(string)
  })
  nullable = false
  default  = {}
  validation {
    condition = alltrue([
      for k in values(var.encryption_keys) : k == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", k))
    ])
    error_message = "Each key must be a full Cloud KMS key id: projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "enable_apis" {
  description = "Enable the Google APIs sendit uses (set false when a platform team manages services)."
  type        = bool
  nullable    = false
  default     = true
}

variable "deletion_protection" {
  description = "Protect the state database (Firestore) and the BigQuery table from deletion by Terraform. Set false only to tear a test deployment down."
  type        = bool
  nullable    = false
  default     = true
}

variable "destination_versioning" {
  description = "Keep noncurrent versions of delivered objects in the destination bucket (protects deliveries from accidental overwrite)."
  type        = bool
  nullable    = false
  default     = true
}

variable "log_level" {
  description = "Log level of every function (SENDIT_LOG_LEVEL): DEBUG, INFO, WARNING, ERROR or CRITICAL. Third-party client libraries stay at WARNING or stricter whatever the level."
  type        = string
  nullable    = false
  default     = "INFO"
  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL."
  }
}

variable "notification_channels" {
  description = "Existing Cloud Monitoring notification channels (ids projects/P/notificationChannels/N) that every sendit alert notifies, on top of the alert_email channel."
  type        = list(string)
  nullable    = false
  default     = []
  validation {
    condition     = alltrue([for c in var.notification_channels : can(regex("^projects/[^/]+/notificationChannels/[^/]+$", c))])
    error_message = "notification_channels must be channel ids of the form projects/PROJECT/notificationChannels/ID."
  }
}

variable "alert_email" {
  description = "Address that gets the sendit alerts by email (an email notification channel is created for it). Empty: no email channel."
  type        = string
  nullable    = false
  default     = ""
  validation {
    condition     = var.alert_email == "" || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alert_email))
    error_message = "alert_email must be empty or one email address."
  }
}

variable "alerts" {
  description = "Alert policies on the log-based metrics (docs/operations.md): enabled, the window they count over, how many events in it are tolerated before an alert fires (0: the first one fires), and when a quiet incident closes."
  type = object({
    enabled                   = optional(bool, true)
    window_seconds            = optional(number, 300)
    failed_files_threshold    = optional(number, 0)
    dead_letters_threshold    = optional(number, 0)
    function_errors_threshold = optional(number, 0)
    auto_close_seconds        = optional(number, 86400)
  })
  nullable = false
  default  = {}
  validation {
    condition     = var.alerts.window_seconds >= 60 && var.alerts.window_seconds <= 86400 && var.alerts.window_seconds % 60 == 0
    error_message = "alerts.window_seconds must be a whole number of minutes between 60 and 86400."
  }
  validation {
    condition     = min(var.alerts.failed_files_threshold, var.alerts.dead_letters_threshold, var.alerts.function_errors_threshold) >= 0
    error_message = "Alert thresholds must be 0 or more."
  }
  validation {
    condition     = var.alerts.auto_close_seconds >= 1800 && var.alerts.auto_close_seconds <= 604800
    error_message = "alerts.auto_close_seconds must be between 1800 (30 min) and 604800 (7 days)."
  }
}
