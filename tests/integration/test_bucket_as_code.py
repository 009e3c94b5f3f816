"""pgBackRest against the bucket terraform/ declares, with a key holding the policy terraform/
declares: a real PostgreSQL + pgBackRest stack whose S3 bucket (moto over TLS) is created with the
module's settings (Object Lock GOVERNANCE, versioning, SSE-KMS with a bucket key, the lifecycle,
the public access block), and a key leased through the Vault simulator's AWS role, which gives it
the module's repository policy. Backup, archiving, expire and restore work with that key; the same
key is refused outside its prefix; expire on the locked bucket leaves delete markers over locked
versions, never destroying one."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions
import pytest

from devstack.demo import DemoStack
from devstack.net import free_port
from devstack.s3tls import terraform_bucket_posture
from devstack.vault_sim import VaultState, configure_cluster, s3_bucket_policy
from rewind.credentials import CIPHER_PASS, S3_KEY, S3_KEY_SECRET
from rewind.pgbackrest.client import PgBackRest
from rewind.postgres import start_argv
from rewind.runner import CommandRunner
from rewind.scratch import ScratchCluster

pytestmark = pytest.mark.integration

SNAPSHOT_SQL = "select count(*) || ' ' || md5(string_agg(id::text, ',' order by id)) from ledger_entry"


@dataclass
class Rehearsal:
    stack: DemoStack
    leased_key: str
    leased_secret: str
    pgbackrest: PgBackRest  # runs with the leased key
    decisions: list[dict]  # moto's authorization of every request pgBackRest made with the leased key
    expired: list[str]  # labels expire removed
    kept: list[str]
    snapshot: str  # the ledger when the kept full backup was taken
    restored: str  # the ledger in the scratch cluster restored from it
    started_at: dt.datetime

    @property
    def prefix(self) -> str:
        return self.stack.cluster.repo.path.strip("/")

    def leased_s3(self):
        return self.stack.s3.client(access_key=self.leased_key, secret_key=self.leased_secret)

    def admin_s3(self):
        return self.stack.s3.client()


def write(stack, first: int, rows: int) -> str:
    stack.psql(f"insert into ledger_entry select g, 'posted' from generate_series({first}, {first + rows - 1}) g")
    return stack.psql(SNAPSHOT_SQL)


@pytest.fixture(scope="module")
def rehearsal():
    """One stack for the module: its bucket created as terraform/ declares, its repository policy
    leased through Vault's AWS role, and a full, an incremental and a second full backup taken,
    expired (retention_full=1) and restored with the leased key."""
    base = Path(tempfile.mkdtemp(prefix="rewind-stack-", dir="/tmp"))
    stack = DemoStack(base, name="coded", repo_settings={"retention_full": 1}, s3_as_code=True)
    try:
        stack.start()
        vault = VaultState(iam=stack.s3.client("iam"))
        role = configure_cluster(
            vault,
            cluster="coded",
            bucket=stack.s3.bucket,
            cipher_pass=stack.cipher_pass,
            repo_path=stack.cluster.repo.path,
            kms_key_arn=stack.s3.kms_key_arn,
        )
        issued = vault.issue_aws_credentials("aws", role)
        [lease] = vault.leases.values()
        principal = f":user/{lease.user_name}"
        key, secret = issued["data"]["access_key"], issued["data"]["secret_key"]
        runner = CommandRunner(os_user=stack.os_user, secrets={S3_KEY: key, S3_KEY_SECRET: secret, CIPHER_PASS: stack.cipher_pass})
        pgbackrest = PgBackRest(stack.cluster, runner)
        started_at = dt.datetime.now(dt.timezone.utc)

        # PostgreSQL's own archive-push runs with the leased key too (an instance role with the
        # same policy, in production).
        stack.stop_postgres()
        runner.run(start_argv(stack.cluster), timeout=120, log_stdout=False)
        stack.psql("create table ledger_entry (id bigint primary key, status text)")
        write(stack, 1, 1000)
        pgbackrest.backup("full", annotations={"airflow_run_id": "coded-1"})
        write(stack, 1001, 1000)
        pgbackrest.backup("incr", annotations={"airflow_run_id": "coded-2"})
        pgbackrest.check()
        snapshot = write(stack, 2001, 1000)
        pgbackrest.backup("full", annotations={"airflow_run_id": "coded-3"})
        before = [b.label for b in pgbackrest.info().backup]
        pgbackrest.expire()
        kept = [b.label for b in pgbackrest.info().backup]

        scratch_dir = Path(tempfile.mkdtemp(prefix="rewind-scratch-", dir="/tmp"))
        scratch_dir.chmod(0o755)
        scratch = ScratchCluster(pgbackrest, scratch_dir / "pg", port=free_port())
        try:
            scratch.restore(backup_set=kept[-1], restore_type="immediate")
            scratch.start()
            restored = scratch.psql(SNAPSHOT_SQL)
        finally:
            scratch.remove()
            shutil.rmtree(scratch_dir, ignore_errors=True)
        yield Rehearsal(
            stack=stack,
            leased_key=key,
            leased_secret=secret,
            pgbackrest=pgbackrest,
            decisions=stack.s3.iam_decisions(principal),
            expired=[label for label in before if label not in kept],
            kept=kept,
            snapshot=snapshot,
            restored=restored,
            started_at=started_at,
        )
        vault.revoke(lease.lease_id)
    finally:
        stack.remove()


def test_backup_expire_and_restore_work_with_the_leased_key_on_the_locked_bucket(rehearsal):
    assert len(rehearsal.expired) == 2 and len(rehearsal.kept) == 1  # the first full and its incr
    assert rehearsal.snapshot.startswith("3000 ")
    assert rehearsal.restored == rehearsal.snapshot
    info = rehearsal.pgbackrest.info()  # (the restore read every file of the kept backup with its checksum)
    assert info.status.code == 0 and [b.label for b in info.backup] == rehearsal.kept


def test_every_request_pgbackrest_made_was_allowed_and_needed_every_s3_statement(rehearsal):
    made = rehearsal.decisions
    assert len(made) > 100
    assert [d for d in made if d["decision"] != "Allow"] == []
    assert {d["action"] for d in made} == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    # Both S3 statements of the module's policy were needed: nothing granted that pgBackRest did not use.
    policy = s3_bucket_policy(rehearsal.stack.s3.bucket, rehearsal.stack.cluster.repo.path, kms_key_arn=rehearsal.stack.s3.kms_key_arn)
    s3_statements = {s["Sid"] for s in policy["Statement"] if s["Action"][0].startswith("s3:")}
    assert {d["sid"] for d in made} == s3_statements == {"ListRepository", "ReadWriteRepository"}
    prefix = rehearsal.prefix
    assert all(d["context"]["s3:prefix"].startswith(f"{prefix}/") for d in made if d["action"] == "s3:ListBucket")
    bucket_arn = f"arn:aws:s3:::{rehearsal.stack.s3.bucket}"
    assert all(d["resource"] == bucket_arn for d in made if d["action"] == "s3:ListBucket")
    assert all(d["resource"].startswith(f"{bucket_arn}/{prefix}/") for d in made if d["action"] != "s3:ListBucket")


def denied(call) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call()
    return raised.value.response["Error"]["Code"]


def test_the_leased_key_is_refused_outside_its_prefix(rehearsal):
    s3, admin, bucket, prefix = rehearsal.leased_s3(), rehearsal.admin_s3(), rehearsal.stack.s3.bucket, rehearsal.prefix
    # Another cluster's repository in the same bucket, a sibling prefix, and another bucket.
    for key in ("rewind/other/backup.info", f"{prefix}-old/backup.info"):
        admin.put_object(Bucket=bucket, Key=key, Body=b"not yours", ChecksumAlgorithm="SHA256")
    admin.create_bucket(Bucket="rewind-elsewhere")
    admin.put_object(Bucket="rewind-elsewhere", Key=f"{prefix}/backup.info", Body=b"not yours")

    assert s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/backup/")["KeyCount"] > 0  # its own: allowed
    for listing in (
        {},  # the whole bucket
        {"Prefix": ""},
        {"Prefix": "rewind/other/"},
        {"Prefix": "rewind/", "Delimiter": "/"},
        {"Prefix": prefix, "Delimiter": "/"},  # would name the sibling prefix
        {"Prefix": f"{prefix}-old/"},
    ):
        assert denied(lambda listing=listing: s3.list_objects_v2(Bucket=bucket, **listing)) == "AccessDenied", listing
    for key in ("rewind/other/backup.info", f"{prefix}-old/backup.info"):
        assert denied(lambda key=key: s3.get_object(Bucket=bucket, Key=key)) == "AccessDenied"
        assert denied(lambda key=key: s3.put_object(Bucket=bucket, Key=key, Body=b"x", ChecksumAlgorithm="SHA256")) == "AccessDenied"
        assert denied(lambda key=key: s3.delete_object(Bucket=bucket, Key=key)) == "AccessDenied"
        errors = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key}]}).get("Errors", [])
        assert [e["Code"] for e in errors] == ["AccessDenied"]
        assert admin.get_object(Bucket=bucket, Key=key)["Body"].read() == b"not yours"
    assert denied(lambda: s3.list_objects_v2(Bucket="rewind-elsewhere", Prefix=f"{prefix}/")) == "AccessDenied"
    assert denied(lambda: s3.get_object(Bucket="rewind-elsewhere", Key=f"{prefix}/backup.info")) == "AccessDenied"
    assert denied(lambda: s3.put_object(Bucket="rewind-elsewhere", Key=f"{prefix}/x", Body=b"x")) == "AccessDenied"
    assert denied(lambda: s3.list_buckets()) == "AccessDenied"
    # Inside its prefix, history is out of reach too: no version reads, no version deletes.
    info_key = f"{prefix}/backup/coded/backup.info"
    version = admin.head_object(Bucket=bucket, Key=info_key)["VersionId"]
    assert denied(lambda: s3.get_object(Bucket=bucket, Key=info_key, VersionId=version)) == "AccessDenied"
    assert denied(lambda: s3.delete_object(Bucket=bucket, Key=info_key, VersionId=version)) == "AccessDenied"
    assert denied(lambda: s3.list_object_versions(Bucket=bucket, Prefix=f"{prefix}/")) == "AccessDenied"
    assert denied(lambda: s3.get_bucket_versioning(Bucket=bucket)) == "AccessDenied"
    # ... while a write, read and delete of its own are allowed (a delete marker is all a delete leaves).
    probe = f"{prefix}/coded-probe.txt"
    s3.put_object(Bucket=bucket, Key=probe, Body=b"probe", ChecksumAlgorithm="SHA256")
    assert s3.get_object(Bucket=bucket, Key=probe)["Body"].read() == b"probe"
    assert s3.delete_object(Bucket=bucket, Key=probe)["DeleteMarker"] is True


def test_the_bucket_is_set_up_exactly_as_the_module_declares(rehearsal):
    admin, bucket = rehearsal.admin_s3(), rehearsal.stack.s3.bucket
    posture = terraform_bucket_posture(kms_key_arn=rehearsal.stack.s3.kms_key_arn)
    assert admin.get_bucket_versioning(Bucket=bucket)["Status"] == posture["VersioningConfiguration"]["Status"] == "Enabled"
    lock = admin.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    if lock["Rule"]["DefaultRetention"].get("Years") == 0:  # moto answers Years: 0 beside Days; AWS gives one of them
        del lock["Rule"]["DefaultRetention"]["Years"]
    assert lock == posture["ObjectLockConfiguration"]
    assert admin.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"] == posture["ServerSideEncryptionConfiguration"]
    assert admin.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"] == posture["LifecycleConfiguration"]["Rules"]
    assert admin.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == posture["PublicAccessBlockConfiguration"]
    assert admin.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"] == posture["OwnershipControls"]
    # What pgBackRest wrote (with no encryption or lock setting of its own) got the bucket's defaults.
    head = admin.head_object(Bucket=bucket, Key=f"{rehearsal.prefix}/backup/coded/backup.info")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == rehearsal.stack.s3.kms_key_arn
    assert head["BucketKeyEnabled"] is True
    assert head["ObjectLockMode"] == "GOVERNANCE"
    days = posture["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]["Days"]
    assert head["ObjectLockRetainUntilDate"] >= rehearsal.started_at + dt.timedelta(days=days)


def test_expire_left_delete_markers_over_locked_versions_and_nothing_was_destroyed(rehearsal):
    admin, bucket, prefix = rehearsal.admin_s3(), rehearsal.stack.s3.bucket, rehearsal.prefix
    posture = terraform_bucket_posture(kms_key_arn=rehearsal.stack.s3.kms_key_arn)
    days = posture["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]["Days"]
    for label in rehearsal.expired:
        backup_prefix = f"{prefix}/backup/coded/{label}/"
        assert admin.list_objects_v2(Bucket=bucket, Prefix=backup_prefix)["KeyCount"] == 0  # gone for pgBackRest
        listing = admin.list_object_versions(Bucket=bucket, Prefix=backup_prefix)
        versions, markers = listing.get("Versions", []), listing.get("DeleteMarkers", [])
        assert versions and {v["Key"] for v in versions} == {m["Key"] for m in markers}
        assert all(m["IsLatest"] for m in markers) and not any(v["IsLatest"] for v in versions)
        # Each non-current version is still there, still locked: removed by the lifecycle rule once
        # both its lock and its 35 non-current days have passed, never earlier.
        version = versions[0]
        # (head_object: moto 5.2.5's GetObjectRetention fails with 500 on a version behind a delete marker)
        head = admin.head_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days - 1)
        code = denied(lambda version=version: admin.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"]))
        assert code == "AccessDenied"  # even the admin key cannot, without bypassing governance
        assert admin.get_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])["ContentLength"] >= 0
    # The WAL that expire removed from the archive: the same delete markers over locked versions.
    archive = admin.list_object_versions(Bucket=bucket, Prefix=f"{prefix}/archive/coded/")
    assert archive.get("DeleteMarkers") and all(m["IsLatest"] for m in archive["DeleteMarkers"])
