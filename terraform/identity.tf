# Identity configuration (docs/identity.md): which attributes define the patient entity and the item, and
# how the http identity provider (an honest broker) is reached: an ID token from the functions' service
# account (default), or a static bearer token kept in Secret Manager and given only to the functions that
# derive pseudonyms (topology needs_key) as a secret environment variable. The variable lives here too, so
# the whole feature is one file.

variable "identity" {
  description = "Identity attributes (entity_id, item_id: DICOM keywords) and the http identity provider's auth (id-token | token | none), the Secret Manager secret id of its static token (auth = token), timeout and retries."
  type = object({
    entity_id       = optional(string, "PatientID")
    item_id         = optional(string, "AccessionNumber")
    auth            = optional(string, "id-token")
    token_secret    = optional(string)
    timeout_seconds = optional(number, 10)
    retries         = optional(number, 3)
  })
  nullable = false
  default  = {}
  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9]{0,63}$", var.identity.entity_id)) && can(regex("^[A-Za-z][A-Za-z0-9]{0,63}$", var.identity.item_id))
    error_message = "identity.entity_id and item_id must be DICOM attribute keywords (e.g. PatientID, AccessionNumber)."
  }
  validation {
    condition     = contains(["id-token", "token", "none"], var.identity.auth) && (var.identity.auth != "token" || var.identity.token_secret != null)
    error_message = "identity.auth must be id-token, token or none; token needs identity.token_secret."
  }
  validation {
    condition     = var.identity.timeout_seconds > 0 && var.identity.timeout_seconds <= 300 && var.identity.retries >= 0
    error_message = "identity.timeout_seconds must be in (0, 300]; identity.retries at least 0."
  }
}

locals {
  # Merged into local.function_env (functions.tf).
  identity_env = {
    SENDIT_STUDY_TABLE      = local.study_table_id
    SENDIT_ENTITY_ID        = var.identity.entity_id
    SENDIT_ITEM_ID          = var.identity.item_id
    SENDIT_IDENTITY_AUTH    = var.identity.auth
    SENDIT_IDENTITY_TIMEOUT = tostring(var.identity.timeout_seconds)
    SENDIT_IDENTITY_RETRIES = tostring(var.identity.retries)
  }
  identity_token = var.identity.auth == "token" ? { for key, fn in local.topology.functions : key => var.identity.token_secret if fn.needs_key } : {}
}

# Only the functions that derive pseudonyms may read the broker's token.
resource "google_secret_manager_secret_iam_member" "identity_token" {
  for_each = local.identity_token

  project   = var.project_id
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.functions[each.key].member
}
