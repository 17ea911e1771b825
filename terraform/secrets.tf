# The pseudonymization key: HMAC key of the keyed pseudonyms, UIDs and date shifts. It reaches the functions
# only as the secret environment variable SENDIT_SECRET_KEY. It is never a plain environment variable and
# never an output.
#
# With secret.create_version = true (default), Terraform generates the key as an ephemeral value and writes
# it through the write-only argument secret_data_wo: it is in neither the state nor the plan. Bumping
# secret.version writes a new key version (rotation, see README); the old version is disabled, not
# destroyed, so a study pseudonymized under it can still be re-linked by an operator who re-enables it.

locals {
  secret_version = (
    var.secret.create_version
    ? google_secret_manager_secret_version.key[0].version
    : var.secret.existing_version
  )
}

resource "google_secret_manager_secret" "key" {
  # CMEK is optional (var.encryption_keys.secret); Google-managed encryption otherwise.
  project   = var.project_id
  secret_id = "sendit-pseudonymization-key"
  labels    = local.labels

  replication {
    user_managed {
      replicas {
        location = var.region
        dynamic "customer_managed_encryption" {
          for_each = var.encryption_keys.secret == null ? [] : [var.encryption_keys.secret]
          content {
            kms_key_name = customer_managed_encryption.value
          }
        }
      }
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.agents, google_project_service.apis]
}

ephemeral "random_password" "key" {
  count = var.secret.create_version ? 1 : 0

  length  = var.secret.length
  special = false
}

resource "google_secret_manager_secret_version" "key" {
  count = var.secret.create_version ? 1 : 0

  secret                 = google_secret_manager_secret.key.id
  secret_data_wo         = ephemeral.random_password.key[0].result
  secret_data_wo_version = var.secret.version
  deletion_policy        = "DISABLE"

  lifecycle {
    create_before_destroy = true
  }
}
