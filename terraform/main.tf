# The repository bucket: versioned, Object Lock (GOVERNANCE), SSE-KMS with a bucket key, a lifecycle
# that removes what pgBackRest's expire left as non-current versions, no public access, no ACLs,
# TLS only. See README.md beside this file.

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  tags           = merge({ "rewind:component" = "pgbackrest-repository" }, var.tags)
  create_kms_key = var.kms_key_arn == null
  kms_key_arn    = local.create_kms_key ? aws_kms_key.repository[0].arn : var.kms_key_arn
  # The inventory's repo.path as an S3 key prefix: pgBackRest stores /pgbackrest/ledger/... as
  # the keys pgbackrest/ledger/...
  repo_prefixes = { for name, repo in var.repositories : name => trim(repo.path, "/") }
  vault_roles   = { for name, repo in var.repositories : name => coalesce(repo.vault_role, "rewind-${name}") }
}

resource "aws_s3_bucket" "repository" {
  #checkov:skip=CKV_AWS_144:A second copy of the repository is a separate decision this module does not make: a second pgBackRest repository (repo2) gets its own retention and credentials, and a replica needs a second Object-Lock bucket in another region.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket event notifications: Rewind learns about backups from pgBackRest itself (the backup asset), not from S3 events.
  bucket              = var.bucket_name
  object_lock_enabled = true
  tags                = local.tags
}

# Server access logs, when the account has a log bucket (access_log_bucket).
resource "aws_s3_bucket_logging" "repository" {
  count         = var.access_log_bucket == null ? 0 : 1
  bucket        = aws_s3_bucket.repository.id
  target_bucket = var.access_log_bucket
  target_prefix = "${var.bucket_name}/"
}

resource "aws_s3_bucket_versioning" "repository" {
  bucket = aws_s3_bucket.repository.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "repository" {
  bucket = aws_s3_bucket.repository.id

  rule {
    default_retention {
      mode = "GOVERNANCE"
      days = var.object_lock_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.repository]
}

resource "aws_s3_bucket_server_side_encryption_configuration" "repository" {
  bucket = aws_s3_bucket.repository.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = local.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "repository" {
  bucket = aws_s3_bucket.repository.id

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  depends_on = [aws_s3_bucket_versioning.repository]
}

resource "aws_s3_bucket_public_access_block" "repository" {
  bucket                  = aws_s3_bucket.repository.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "repository" {
  bucket = aws_s3_bucket.repository.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.repository.arn,
      "${aws_s3_bucket.repository.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "repository" {
  bucket = aws_s3_bucket.repository.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.repository]
}

# The key, unless the caller brings one (kms_key_arn).
data "aws_iam_policy_document" "kms_key" {
  # A key policy, not an identity policy: its "*" resource is this key alone, and kms:* for the
  # account root is AWS's default key policy, which delegates every use of the key to IAM (the
  # repository policies in iam.tf grant kms:Decrypt/GenerateDataKey through S3 only).
  #checkov:skip=CKV_AWS_109:Key policy: "*" is this key only; the account root must administer its own key or the key becomes unmanageable.
  #checkov:skip=CKV_AWS_111:Key policy: "*" is this key only; write access to it is delegated to IAM, where iam.tf constrains it.
  #checkov:skip=CKV_AWS_356:Key policy: a key policy's resource must be "*" (it means this key).
  statement {
    sid       = "AccountAdministersTheKeyThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "repository" {
  count                   = local.create_kms_key ? 1 : 0
  description             = "SSE-KMS key of the pgBackRest repository bucket ${var.bucket_name}"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms_key.json
  tags                    = local.tags
}

resource "aws_kms_alias" "repository" {
  count         = local.create_kms_key ? 1 : 0
  name          = coalesce(var.kms_key_alias, "alias/${var.bucket_name}")
  target_key_id = aws_kms_key.repository[0].key_id
}
