"""terraform/ (the repository bucket as code), checked without Terraform: every .tf file parsed
with python-hcl2, the bucket's settings and the repository policy asserted, the policy evaluated
against what pgBackRest does (and what it must not do), and the module scanned with checkov."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest

from devstack.s3tls import TerraformModule, evaluate_identity_policies, terraform_bucket_posture, terraform_repository_policy

TERRAFORM = Path(__file__).resolve().parents[2] / "terraform"
BUCKET, REPO_PATH, PREFIX = "acme-pg-backups", "/pgbackrest/ledger", "pgbackrest/ledger"
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/0c3a7e52-6f1e-4c43-9a45-2b4f1d2d7a10"

# What pgBackRest needs on S3, per statement: list below the repository prefix, read/write/delete
# the repository's objects (multipart uploads are s3:PutObject; pgBackRest never aborts one, the
# lifecycle does), and the bucket's key through S3 (GenerateDataKey to write, Decrypt to read and
# to complete a multipart upload).
NEEDED = {
    "ListRepository": {"s3:ListBucket"},
    "ReadWriteRepository": {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"},
    "UseRepositoryKeyThroughS3": {"kms:Decrypt", "kms:GenerateDataKey"},
}


@pytest.fixture(scope="module")
def module() -> TerraformModule:
    return TerraformModule(TERRAFORM)


@pytest.fixture(scope="module")
def policy(module) -> dict:
    return terraform_repository_policy(BUCKET, REPO_PATH, kms_key_arn=KEY_ARN, region="eu-west-1", module=module)


def least_privilege_violations(policy: dict, *, bucket_arn: str, prefix: str, key_arn: str) -> list[str]:
    """Everything in `policy` that is more than pgBackRest's repository needs (empty: none)."""
    problems = []
    statements = policy["Statement"]
    sids = [s.get("Sid") for s in statements]
    if sorted(sids) != sorted(NEEDED):
        problems.append(f"statements {sids}, expected exactly {sorted(NEEDED)}")
    for statement in statements:
        sid = statement.get("Sid")
        actions, resources = statement.get("Action", []), statement.get("Resource", [])
        if statement.get("Effect") != "Allow" or {"NotAction", "NotResource", "Principal"} & set(statement):
            problems.append(f"{sid}: only plain Allow statements with Action and Resource")
        if any("*" in action or "?" in action for action in actions):
            problems.append(f"{sid}: wildcard action in {actions}")
        if sid in NEEDED and set(actions) != NEEDED[sid]:
            problems.append(f"{sid}: actions {sorted(actions)}, pgBackRest needs {sorted(NEEDED[sid])}")
        if "*" in resources:
            problems.append(f"{sid}: resource *")
        if sid == "ListRepository":
            if resources != [bucket_arn]:
                problems.append(f"{sid}: resources {resources}, expected the bucket only")
            if statement.get("Condition") != {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}:
                problems.append(f"{sid}: listing must be conditioned on s3:prefix {prefix}/*, is {statement.get('Condition')}")
        if sid == "ReadWriteRepository":
            if resources != [f"{bucket_arn}/{prefix}/*"]:
                problems.append(f"{sid}: resources {resources}, expected {bucket_arn}/{prefix}/*")
            if "Condition" in statement:
                problems.append(f"{sid}: unexpected condition")
        if sid == "UseRepositoryKeyThroughS3":
            if resources != [key_arn]:
                problems.append(f"{sid}: resources {resources}, expected the bucket's key only")
            conditions = statement.get("Condition", {}).get("StringEquals", {})
            if conditions.get("kms:EncryptionContext:aws:s3:arn") != [bucket_arn] or not all(
                re.fullmatch(r"s3\.[a-z0-9-]+\.amazonaws\.com", v) for v in conditions.get("kms:ViaService", ["-"])
            ):
                problems.append(f"{sid}: the key must be usable through S3 and for this bucket only, is {statement.get('Condition')}")
    return problems


# ---- parsing ---------------------------------------------------------------------------------------


def test_every_tf_file_parses_and_the_module_has_the_resources_the_guide_lists(module):
    files = sorted(TERRAFORM.glob("*.tf"))
    assert {f.name for f in files} >= {"versions.tf", "variables.tf", "main.tf", "iam.tf", "vault.tf", "outputs.tf"}
    for path in files:
        with path.open() as handle:
            assert hcl2.load(handle), path
    for type_name in (
        "aws_s3_bucket",
        "aws_s3_bucket_versioning",
        "aws_s3_bucket_object_lock_configuration",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_lifecycle_configuration",
        "aws_s3_bucket_public_access_block",
        "aws_s3_bucket_ownership_controls",
        "aws_s3_bucket_policy",
        "vault_aws_secret_backend_role",
    ):
        assert "repository" in module.resources[type_name], type_name
    assert "repository" in module.data["aws_iam_policy_document"]
    with (TERRAFORM / "versions.tf").open() as handle:
        providers = hcl2.load(handle, serialization_options=hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False))
    required = providers["terraform"][0]["required_providers"][0]
    assert {name: spec["source"] for name, spec in required.items()} == {"aws": "hashicorp/aws", "vault": "hashicorp/vault"}


def test_the_variables_and_their_defaults(module):
    defaults = {name: body.get("default", "(required)") for name, body in module.variables.items()}
    assert defaults["bucket_name"] == defaults["repositories"] == "(required)"
    assert defaults["object_lock_days"] == 14
    assert defaults["noncurrent_version_expiration_days"] == 35
    assert defaults["object_lock_days"] < defaults["noncurrent_version_expiration_days"]
    assert defaults["kms_key_arn"] is None  # null: the module creates the key
    assert defaults["vault_aws_mount"] == "aws" and defaults["vault_credential_type"] == "iam_user"
    assert defaults["tags"] == {}
    for name, body in module.variables.items():
        assert body.get("description"), f"variable {name} has no description"


# ---- the bucket -----------------------------------------------------------------------------------


def test_the_bucket_is_locked_versioned_encrypted_with_a_bucket_key_expired_by_lifecycle_and_private(module):
    resources = module.resources
    assert resources["aws_s3_bucket"]["repository"]["object_lock_enabled"] is True
    assert resources["aws_s3_bucket_versioning"]["repository"]["versioning_configuration"] == [{"status": "Enabled"}]
    lock = resources["aws_s3_bucket_object_lock_configuration"]["repository"]
    assert lock["rule"] == [{"default_retention": [{"mode": "GOVERNANCE", "days": "${var.object_lock_days}"}]}]
    assert lock["depends_on"] == ["${aws_s3_bucket_versioning.repository}"]
    [sse] = resources["aws_s3_bucket_server_side_encryption_configuration"]["repository"]["rule"]
    assert sse["apply_server_side_encryption_by_default"] == [{"sse_algorithm": "aws:kms", "kms_master_key_id": "${local.kms_key_arn}"}]
    assert sse["bucket_key_enabled"] is True
    [rule] = resources["aws_s3_bucket_lifecycle_configuration"]["repository"]["rule"]
    assert rule["status"] == "Enabled" and rule["filter"] == [{}]  # the whole bucket
    assert rule["noncurrent_version_expiration"] == [{"noncurrent_days": "${var.noncurrent_version_expiration_days}"}]
    assert rule["abort_incomplete_multipart_upload"] == [{"days_after_initiation": "${var.abort_incomplete_multipart_upload_days}"}]
    assert rule["expiration"] == [{"expired_object_delete_marker": True}]
    public = resources["aws_s3_bucket_public_access_block"]["repository"]
    assert all(public[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"))
    assert resources["aws_s3_bucket_ownership_controls"]["repository"]["rule"] == [{"object_ownership": "BucketOwnerEnforced"}]
    [deny] = module.data["aws_iam_policy_document"]["bucket"]["statement"]
    assert deny["effect"] == "Deny" and deny["condition"] == [{"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]}]
    key = resources["aws_kms_key"]["repository"]
    assert key["enable_key_rotation"] is True and key["count"] == "${local.create_kms_key ? 1 : 0}"


def test_the_posture_the_test_stack_applies_is_derived_from_the_module(module):
    posture = terraform_bucket_posture(kms_key_arn=KEY_ARN, module=module)
    assert posture["ObjectLockEnabledForBucket"] is True
    assert posture["VersioningConfiguration"] == {"Status": "Enabled"}
    assert posture["ObjectLockConfiguration"]["Rule"]["DefaultRetention"] == {"Mode": "GOVERNANCE", "Days": 14}
    assert posture["ServerSideEncryptionConfiguration"]["Rules"] == [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": KEY_ARN}, "BucketKeyEnabled": True}
    ]
    [rule] = posture["LifecycleConfiguration"]["Rules"]
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 35}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert set(posture["PublicAccessBlockConfiguration"].values()) == {True}
    with pytest.raises(ValueError, match="SSE-KMS"):
        terraform_bucket_posture(kms_key_arn=None, module=module)


def test_a_setting_the_test_stack_would_not_apply_is_refused_not_ignored(module):
    changed = copy.deepcopy(module)
    changed.resources["aws_s3_bucket_lifecycle_configuration"]["repository"]["rule"][0]["transition"] = [{"days": 30}]
    with pytest.raises(ValueError, match="transition"):
        terraform_bucket_posture(kms_key_arn=KEY_ARN, module=changed)


# ---- the repository policy --------------------------------------------------------------------------


def test_the_policy_document_is_written_against_the_inventory_path(module):
    # repo_prefixes turns the inventory's repo.path (/pgbackrest/ledger) into the key prefix.
    assert module.locals["repo_prefixes"] == '${{for name, repo in var.repositories : name => trim(repo.path, "/")}}'
    assert module.locals["vault_roles"] == '${{for name, repo in var.repositories : name => coalesce(repo.vault_role, "rewind-${name}")}}'
    assert module.data["aws_iam_policy_document"]["repository"]["for_each"] == "${var.repositories}"


def test_the_policy_grants_exactly_what_pgbackrest_needs(policy):
    assert least_privilege_violations(policy, bucket_arn=BUCKET_ARN, prefix=PREFIX, key_arn=KEY_ARN) == []
    assert policy["Statement"] == [
        {
            "Sid": "ListRepository",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [BUCKET_ARN],
            "Condition": {"StringLike": {"s3:prefix": [f"{PREFIX}/*"]}},
        },
        {
            "Sid": "ReadWriteRepository",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": [f"{BUCKET_ARN}/{PREFIX}/*"],
        },
        {
            "Sid": "UseRepositoryKeyThroughS3",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": [KEY_ARN],
            "Condition": {
                "StringEquals": {"kms:ViaService": ["s3.eu-west-1.amazonaws.com"], "kms:EncryptionContext:aws:s3:arn": [BUCKET_ARN]}
            },
        },
    ]


@pytest.mark.parametrize(
    "widen, complaint",
    [
        (lambda p: p["Statement"][1]["Action"].append("s3:DeleteObjectVersion"), "ReadWriteRepository: actions"),
        (lambda p: p["Statement"][1].update(Action=["s3:*"]), "wildcard action"),
        (lambda p: p["Statement"][1].update(Resource=[f"{BUCKET_ARN}/*"]), "expected arn:aws:s3:::acme-pg-backups/pgbackrest/ledger/*"),
        (lambda p: p["Statement"][0].pop("Condition"), "listing must be conditioned"),
        (lambda p: p["Statement"][0]["Condition"]["StringLike"]["s3:prefix"].append("*"), "listing must be conditioned"),
        (lambda p: p["Statement"][2].update(Resource=["*"]), "resource *"),
        (
            lambda p: p["Statement"].append({"Sid": "More", "Effect": "Allow", "Action": ["s3:ListAllMyBuckets"], "Resource": ["*"]}),
            "statements",
        ),
    ],
)
def test_the_least_privilege_check_fails_on_a_wider_policy(policy, widen, complaint):
    wider = copy.deepcopy(policy)
    widen(wider)
    problems = least_privilege_violations(wider, bucket_arn=BUCKET_ARN, prefix=PREFIX, key_arn=KEY_ARN)
    assert any(complaint in problem for problem in problems), problems


def allowed(policy: dict, action: str, resource: str, **context: str) -> bool:
    return (
        evaluate_identity_policies([policy], action, resource, {f"s3:{k.replace('_', '-')}": v for k, v in context.items()})[0] == "Allow"
    )


@pytest.mark.parametrize(
    "action, resource, context",
    [  # requests pgBackRest 2.45 makes (tests/integration/test_bucket_as_code.py records them all)
        ("s3:ListBucket", BUCKET_ARN, {"prefix": f"{PREFIX}/archive/ledger/", "delimiter": "/"}),
        (
            "s3:ListBucket",
            BUCKET_ARN,
            {"prefix": f"{PREFIX}/archive/ledger/15-1/0000000100000000/000000010000000000000002", "delimiter": "/"},
        ),
        ("s3:ListBucket", BUCKET_ARN, {"prefix": f"{PREFIX}/backup/ledger/20261127-172050F/"}),
        ("s3:ListBucket", BUCKET_ARN, {"prefix": f"{PREFIX}/"}),
        ("s3:GetObject", f"{BUCKET_ARN}/{PREFIX}/backup/ledger/backup.info", {}),
        ("s3:PutObject", f"{BUCKET_ARN}/{PREFIX}/archive/ledger/15-1/0000000100000000/000000010000000000000002-abc.zst", {}),
        ("s3:DeleteObject", f"{BUCKET_ARN}/{PREFIX}/backup/ledger/20261127-172050F/pg_data/base/1/1259.zst", {}),
    ],
)
def test_what_pgbackrest_does_is_allowed(policy, action, resource, context):
    assert allowed(policy, action, resource, **context)


@pytest.mark.parametrize(
    "action, resource, context",
    [
        ("s3:ListBucket", BUCKET_ARN, {}),  # the whole bucket
        ("s3:ListBucket", BUCKET_ARN, {"prefix": ""}),
        ("s3:ListBucket", BUCKET_ARN, {"prefix": PREFIX, "delimiter": "/"}),  # sibling names (ledger-old/)
        ("s3:ListBucket", BUCKET_ARN, {"prefix": "pgbackrest/", "delimiter": "/"}),
        ("s3:ListBucket", BUCKET_ARN, {"prefix": "pgbackrest/crm/"}),  # another cluster's repository
        ("s3:ListBucket", BUCKET_ARN, {"prefix": f"{PREFIX}-old/"}),
        ("s3:ListBucket", "arn:aws:s3:::another-bucket", {"prefix": f"{PREFIX}/"}),
        ("s3:ListBucketVersions", BUCKET_ARN, {"prefix": f"{PREFIX}/"}),
        ("s3:GetObject", f"{BUCKET_ARN}/pgbackrest/crm/backup/crm/backup.info", {}),
        ("s3:GetObject", f"{BUCKET_ARN}/{PREFIX}-old/backup.info", {}),
        ("s3:PutObject", f"{BUCKET_ARN}/{PREFIX}", {}),
        ("s3:PutObject", f"arn:aws:s3:::another-bucket/{PREFIX}/x", {}),
        ("s3:DeleteObject", f"{BUCKET_ARN}/pgbackrest/crm/x", {}),
        # history is out of reach: versions, retention, legal holds, the lock's bypass
        ("s3:GetObjectVersion", f"{BUCKET_ARN}/{PREFIX}/backup/ledger/backup.info", {}),
        ("s3:DeleteObjectVersion", f"{BUCKET_ARN}/{PREFIX}/backup/ledger/backup.info", {}),
        ("s3:PutObjectRetention", f"{BUCKET_ARN}/{PREFIX}/backup/ledger/backup.info", {}),
        ("s3:PutObjectLegalHold", f"{BUCKET_ARN}/{PREFIX}/backup/ledger/backup.info", {}),
        ("s3:BypassGovernanceRetention", f"{BUCKET_ARN}/{PREFIX}/backup/ledger/backup.info", {}),
        # and the bucket itself
        ("s3:ListAllMyBuckets", "arn:aws:s3:::*", {}),
        ("s3:PutBucketPolicy", BUCKET_ARN, {}),
        ("s3:PutLifecycleConfiguration", BUCKET_ARN, {}),
        ("s3:PutBucketVersioning", BUCKET_ARN, {}),
        ("s3:PutBucketObjectLockConfiguration", BUCKET_ARN, {}),
        ("s3:DeleteBucket", BUCKET_ARN, {}),
        ("s3:PutObjectAcl", f"{BUCKET_ARN}/{PREFIX}/x", {}),
    ],
)
def test_nothing_outside_the_repository_prefix_is_allowed(policy, action, resource, context):
    assert not allowed(policy, action, resource, **context)


def test_the_vault_role_gives_its_leases_the_repository_policy(module):
    role = module.resources["vault_aws_secret_backend_role"]["repository"]
    assert role["for_each"] == "${var.repositories}"
    assert role["backend"] == "${var.vault_aws_mount}"
    assert role["name"] == "${local.vault_roles[each.key]}"
    assert role["credential_type"] == "${var.vault_credential_type}"
    assert "data.aws_iam_policy_document.repository[each.key].json" in role["policy_document"]
    assert "aws_iam_role.repository[each.key].arn" in role["role_arns"]
    # assumed_role: the role Vault assumes holds the same document, and only Vault may assume it.
    assert module.resources["aws_iam_role_policy"]["repository"]["policy"] == "${data.aws_iam_policy_document.repository[each.key].json}"
    [trust] = module.data["aws_iam_policy_document"]["vault_assumes"]["statement"]
    assert trust["actions"] == ["sts:AssumeRole"] and trust["principals"] == [
        {"type": "AWS", "identifiers": ["${var.vault_aws_principal_arn}"]}
    ]
    # The inventory output: each cluster's repo.bucket/path and credentials.vault.aws_mount/aws_role.
    inventory = module.outputs["inventory"]["value"]
    for binding in (
        "bucket = aws_s3_bucket.repository.id",
        "path = repo.path",
        "aws_mount = var.vault_aws_mount",
        "aws_role = vault_aws_secret_backend_role.repository[name].name",
    ):
        assert binding in inventory, binding


def test_the_vault_simulator_leases_keys_with_the_module_s_policy(module):
    from devstack.vault_sim import VaultState, configure_cluster, s3_bucket_policy

    state = VaultState()
    name = configure_cluster(state, cluster="ledger", bucket=BUCKET, cipher_pass="x", repo_path=REPO_PATH, kms_key_arn=KEY_ARN)
    expected = terraform_repository_policy(BUCKET, REPO_PATH, kms_key_arn=KEY_ARN, module=module)
    assert state.aws_mounts["aws"][name].policy_document == expected
    # The demo stack's layout (/rewind/<cluster>) by default, and without a key no key statement.
    assert s3_bucket_policy("rewind-repo") == terraform_repository_policy("rewind-repo", "/rewind/demo", module=module)
    assert [s["Sid"] for s in s3_bucket_policy("rewind-repo")["Statement"]] == ["ListRepository", "ReadWriteRepository"]


# ---- checkov -----------------------------------------------------------------------------------------


def checkov_binary() -> Path:
    """scripts/install.sh puts checkov in a venv of its own inside the test venv (see
    terraform/requirements-checkov.txt for why)."""
    found = Path(os.environ.get("REWIND_CHECKOV") or Path(sys.prefix) / "checkov" / "bin" / "checkov")
    if not found.exists():
        pytest.fail(f"checkov is not installed at {found}: run scripts/install.sh (or set REWIND_CHECKOV)")
    return found


def test_checkov_finds_no_failed_check_and_every_skip_is_justified_inline(tmp_path):
    result = subprocess.run(
        [str(checkov_binary()), "--directory", str(TERRAFORM), "--framework", "terraform", "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        # --skip-download and no API key: checkov talks to no server (its guidelines and policies
        # would otherwise be fetched from Prisma Cloud).
        env={k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))} | {"BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    results, summary = report["results"], report["summary"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}" for c in results["failed_checks"]]
    assert failed == [] and summary["failed"] == 0
    assert result.returncode == 0
    assert summary["passed"] >= 40 and summary["parsing_errors"] == 0

    inline = {}
    for path in TERRAFORM.glob("*.tf"):
        for check_id, reason in re.findall(r"#checkov:skip=([A-Z0-9_]+):(.*)", path.read_text()):
            inline[check_id] = reason.strip()
    skipped = {c["check_id"]: c["check_result"].get("suppress_comment", "") for c in results["skipped_checks"]}
    assert set(skipped) == set(inline)  # no skip that suppresses nothing, none from elsewhere
    for check_id, reason in inline.items():
        assert len(reason) >= 40 and skipped[check_id] == reason, (check_id, reason)
