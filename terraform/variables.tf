variable "bucket_name" {
  description = "The repository bucket (the inventory's repo.bucket), which this module creates with Object Lock enabled. An existing bucket: enable versioning and Object Lock on it first (irreversible), then import it (README.md)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name (3-63 lower-case letters, digits, dots and hyphens)."
  }
}

variable "repositories" {
  description = "One entry per Rewind cluster whose pgBackRest repository lives in this bucket, keyed by cluster name: path is the inventory's repo.path (e.g. /pgbackrest/ledger), vault_role the Vault AWS role Rewind leases its keys from (credentials.vault.aws_role; default rewind-<cluster>)."
  type = map(object({
    path       = string
    vault_role = optional(string)
  }))

  validation {
    condition     = alltrue([for repo in values(var.repositories) : can(regex("^(/[A-Za-z0-9_.-]+)+$", repo.path))])
    error_message = "Each repositories[*].path must be an absolute path below the bucket root without a trailing slash, e.g. /pgbackrest/ledger."
  }
}

variable "kms_key_arn" {
  description = "ARN of an existing KMS key for the bucket's default SSE-KMS encryption. Null: the module creates a key (with rotation) and an alias."
  type        = string
  default     = null
}

variable "kms_key_alias" {
  description = "Alias of the key the module creates when kms_key_arn is null. Null: alias/<bucket_name>."
  type        = string
  default     = null
}

variable "object_lock_days" {
  description = "Default Object Lock retention (GOVERNANCE mode) of every new object version, in days. Keep it below the recovery window: a locked version cannot be removed before it ends."
  type        = number
  default     = 14

  validation {
    condition     = var.object_lock_days >= 1 && var.object_lock_days <= 36500
    error_message = "object_lock_days must be between 1 and 36500."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which a non-current version (what pgBackRest's expire leaves behind a delete marker) is removed by the lifecycle rule. Must exceed object_lock_days, else the rule waits for the lock anyway."
  type        = number
  default     = 35

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which the parts of an unfinished multipart upload (a pgBackRest process killed mid-upload) are removed."
  type        = number
  default     = 7
}

variable "access_log_bucket" {
  description = "An existing bucket that receives this bucket's server access logs (under <bucket_name>/). Null: no server access logs (CloudTrail data events, if the account records them, still do)."
  type        = string
  default     = null
}

variable "vault_aws_mount" {
  description = "Path of Vault's AWS secrets engine (the inventory's credentials.vault.aws_mount)."
  type        = string
  default     = "aws"
}

variable "vault_credential_type" {
  description = "What a lease is: iam_user (a new IAM user with the repository policy, deleted on revocation) or assumed_role (an STS session of an IAM role this module creates with the repository policy)."
  type        = string
  default     = "iam_user"

  validation {
    condition     = contains(["iam_user", "assumed_role"], var.vault_credential_type)
    error_message = "vault_credential_type must be iam_user or assumed_role."
  }
}

variable "vault_aws_principal_arn" {
  description = "assumed_role only: the IAM principal whose credentials Vault's AWS engine uses; it alone may assume the repository roles."
  type        = string
  default     = null
}

variable "vault_sts_ttl_seconds" {
  description = "assumed_role only: lifetime of a leased STS session. Set it just above pgbackrest.backup_timeout_s: revocation cannot end an STS session early."
  type        = number
  default     = 3600
}

variable "tags" {
  description = "Tags for every AWS resource the module creates."
  type        = map(string)
  default     = {}
}
