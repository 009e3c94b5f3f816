output "bucket_name" {
  description = "The repository bucket: every cluster's repo.bucket."
  value       = aws_s3_bucket.repository.id
}

output "bucket_arn" {
  value = aws_s3_bucket.repository.arn
}

output "region" {
  description = "The bucket's region: repo.region (repo.endpoint is s3.<region>.amazonaws.com)."
  value       = data.aws_region.current.region
}

output "kms_key_arn" {
  description = "The key of the bucket's default encryption (pgBackRest needs no setting for it)."
  value       = local.kms_key_arn
}

output "repository_policies" {
  description = "Each cluster's repository IAM policy (JSON). Attach the same to the database host's instance role when PostgreSQL's archive_command uses it (credentials.postmaster_s3_keys: auto)."
  value       = { for name, document in data.aws_iam_policy_document.repository : name => document.json }
}

output "inventory" {
  description = "What each cluster's inventory entry takes from this module (repo and credentials.vault)."
  value = {
    for name, repo in var.repositories : name => {
      repo = {
        bucket   = aws_s3_bucket.repository.id
        path     = repo.path
        region   = data.aws_region.current.region
        endpoint = "s3.${data.aws_region.current.region}.amazonaws.com"
      }
      credentials = {
        source = "vault"
        vault = {
          aws_mount = var.vault_aws_mount
          aws_role  = vault_aws_secret_backend_role.repository[name].name
        }
      }
    }
  }
}
