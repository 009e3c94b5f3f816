# The least-privilege IAM policy of one repository (what a leased key may do), per cluster.
#
# This document is the single source of truth: Rewind's test stack parses it from this file and
# applies it to the keys its Vault simulator leases (devstack/vault_sim.py), and
# tests/unit/test_terraform.py asserts it grants exactly what pgBackRest needs:
#   - list the bucket only below the repository prefix: every listing pgBackRest makes names a
#     prefix under <prefix>/ (archive/<stanza>/..., backup/<stanza>/...). pgBackRest's user guide
#     also allows listing "" and "<prefix>" with the "/" delimiter (from its 2018 Perl driver);
#     pgBackRest 2.45 and 2.55 never list above <prefix>/ (the S3 driver always lists
#     "<repo path>/<sub path>/"), so that grant, which would show the bucket's top-level names, is
#     left out,
#   - read, write and delete objects below the prefix (no version-level actions: pgBackRest never
#     reads or deletes a specific version, and without s3:DeleteObjectVersion a leased key cannot
#     destroy history: its deletes only add delete markers),
#   - use the bucket's KMS key through S3 only, for this bucket only.
data "aws_iam_policy_document" "repository" {
  for_each = var.repositories

  statement {
    sid       = "ListRepository"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.repository.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.repo_prefixes[each.key]}/*"]
    }
  }

  statement {
    sid       = "ReadWriteRepository"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.repository.arn}/${local.repo_prefixes[each.key]}/*"]
  }

  statement {
    sid       = "UseRepositoryKeyThroughS3"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [local.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${data.aws_region.current.region}.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:aws:s3:arn"
      values   = [aws_s3_bucket.repository.arn]
    }
  }
}

# assumed_role: one IAM role per repository, holding the same policy, that only Vault may assume.
locals {
  assumed_role_repositories = var.vault_credential_type == "assumed_role" ? var.repositories : {}
}

data "aws_iam_policy_document" "vault_assumes" {
  count = var.vault_credential_type == "assumed_role" ? 1 : 0

  statement {
    sid     = "VaultAssumesTheRepositoryRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = [var.vault_aws_principal_arn]
    }
  }
}

resource "aws_iam_role" "repository" {
  for_each             = local.assumed_role_repositories
  name                 = local.vault_roles[each.key]
  description          = "pgBackRest repository ${var.repositories[each.key].path} in ${var.bucket_name}, leased by Vault"
  assume_role_policy   = data.aws_iam_policy_document.vault_assumes[0].json
  max_session_duration = max(3600, var.vault_sts_ttl_seconds)
  tags                 = local.tags

  lifecycle {
    precondition {
      condition     = var.vault_aws_principal_arn != null
      error_message = "vault_credential_type = assumed_role needs vault_aws_principal_arn: the principal Vault's AWS engine runs as."
    }
  }
}

resource "aws_iam_role_policy" "repository" {
  for_each = local.assumed_role_repositories
  name     = "pgbackrest-repository"
  role     = aws_iam_role.repository[each.key].id
  policy   = data.aws_iam_policy_document.repository[each.key].json
}
