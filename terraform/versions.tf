# Provider ranges are pinned: a minor google provider release may change defaults of the resources below.
# Terraform >= 1.11 for write-only arguments (the generated key never reaches the state or the plan).

terraform {
  required_version = ">= 1.11.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.30.0, < 8.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.7.1, < 4.0.0"
    }
  }

  # Partial configuration: the state bucket is the user's, given at init time, e.g.
  #   terraform init -backend-config=bucket=MY_STATE_BUCKET -backend-config=prefix=sendit
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = local.labels
}
