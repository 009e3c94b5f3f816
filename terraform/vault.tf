# The Vault AWS secrets engine role of each repository: what Rewind leases per task from
# <vault_aws_mount>/creds/<role> (the inventory's credentials.vault.aws_mount / aws_role).
resource "vault_aws_secret_backend_role" "repository" {
  for_each        = var.repositories
  backend         = var.vault_aws_mount
  name            = local.vault_roles[each.key]
  credential_type = var.vault_credential_type

  # iam_user: every lease is a new IAM user with this inline policy, deleted when the lease is revoked.
  policy_document = var.vault_credential_type == "iam_user" ? data.aws_iam_policy_document.repository[each.key].json : null

  # assumed_role: every lease is an STS session of the repository role (same policy, iam.tf).
  role_arns       = var.vault_credential_type == "assumed_role" ? [aws_iam_role.repository[each.key].arn] : null
  default_sts_ttl = var.vault_credential_type == "assumed_role" ? var.vault_sts_ttl_seconds : null
  max_sts_ttl     = var.vault_credential_type == "assumed_role" ? var.vault_sts_ttl_seconds : null
}
