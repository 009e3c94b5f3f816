"""Repository credentials from Vault (the simulator), against the real stack: S3 keys leased from
the AWS engine for one task and revoked when it ends, the cipher passphrase from KV v2, and
nothing secret in a task log, a process's argv or a file. Vault sealed, denying, failing or down
fails the run before PostgreSQL or the repository is touched."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from devstack.airflow import REPO
from rewind.postgres import postmaster_pid
from tests.conftest import load_dags, run_once
from tests.integration.helpers import FORM_DEFAULTS, assert_success, fresh_ledger, ledger, write

pytestmark = pytest.mark.integration


class ArgvSampler(threading.Thread):
    """Reads every process's /proc/<pid>/cmdline every few milliseconds while a run goes on, and
    keeps each distinct argv it saw; counts the pgbackrest ones to prove it saw the commands run."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        self.seen.add((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                    except OSError:
                        pass
            time.sleep(0.005)

    def pgbackrest_commands(self) -> list[str]:
        return [argv for argv in self.seen if "pgbackrest" in argv and "--stanza" in argv]

    def __enter__(self) -> ArgvSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()


def files_containing(roots: list[Path], values: list[str], *, skip: tuple[str, ...] = ()) -> list[str]:
    needles = [v.encode() for v in values if v]
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if any(part in skip for part in path.parts) or not path.is_file() or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += [f"{path}" for needle in needles if needle in data]
    return hits


def leases_since(vault, count_before: int):
    return vault.leases()[count_before:]


def vault_iam_users(demo_stack) -> list[str]:
    return [u["UserName"] for u in demo_stack.s3.client("iam").list_users()["Users"] if u["UserName"].startswith("vault-")]


def test_a_backup_with_leased_credentials_revokes_its_leases_and_leaks_nothing(demo_stack, airflow_db, vault_credentials, capfd):
    from airflow.utils.state import DagRunState

    vault = vault_credentials
    before = len(vault.leases())
    with ArgvSampler() as sampler:
        run = run_once(load_dags()["rewind_backup_full__demo"])
    output = capfd.readouterr()
    assert run.state == DagRunState.SUCCESS, {ti.task_id: ti.state for ti in run.get_task_instances()}

    backup = demo_stack.pgbackrest().info().find_annotated("airflow_run_id", run.run_id)
    assert backup is not None and backup.type == "full"
    # One lease per task that ran pgBackRest (preflight, backup, expire), each revoked at task end.
    leases = leases_since(vault, before)
    assert len(leases) == 3, [lease.public() for lease in leases]
    assert all(lease.revoked_at is not None and lease.revoked_by == "request" for lease in leases)
    assert vault_iam_users(demo_stack) == []  # Vault's revocation deleted the IAM users and keys
    assert "revoked Vault lease" in output.out

    secrets = [*vault.state.issued_values, demo_stack.cipher_pass, vault.approle[1]]
    assert len(sampler.pgbackrest_commands()) >= 3, "the sampler never saw pgbackrest run"
    assert not [argv for argv in sampler.seen for s in secrets if s in argv]
    assert not [s for s in secrets if s in output.out or s in output.err]
    assert files_containing([Path(os.environ["AIRFLOW_HOME"]), demo_stack.base, REPO], secrets, skip=(".venv", ".git")) == []


def test_a_leased_key_stops_working_once_revoked(demo_stack, vault_credentials):
    """The leased keys are real: they sign S3 requests moto accepts, until Vault revokes the lease."""
    import botocore.exceptions

    vault = vault_credentials
    issued = vault.state.issue_aws_credentials("aws", "rewind-demo")
    key, secret = issued["data"]["access_key"], issued["data"]["secret_key"]
    s3 = demo_stack.s3.client(access_key=key, secret_key=secret)
    repository = demo_stack.cluster.repo.path.strip("/") + "/"
    assert s3.list_objects_v2(Bucket=demo_stack.s3.bucket, Prefix=repository, MaxKeys=1)["KeyCount"] == 1
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        s3.list_buckets()  # the role's policy (terraform/'s) grants its repository prefix, nothing else
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        s3.list_objects_v2(Bucket=demo_stack.s3.bucket, MaxKeys=1)
    vault.state.revoke(issued["lease_id"])
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidAccessKeyId"):
        s3.list_objects_v2(Bucket=demo_stack.s3.bucket, Prefix=repository, MaxKeys=1)


@pytest.mark.parametrize(
    "failure, message",
    [
        ("sealed", "is sealed (authentication): unseal Vault, then re-run the task"),
        ("forbidden", "denied KV v2 read of secret/data/rewind/demo (permission denied)"),
        ("error", "with an internal error (internal error): check the Vault server"),
        ("down", "is unreachable (authentication: ConnectionError): check that Vault is running"),
    ],
)
def test_vault_sealed_denying_failing_or_down_fails_the_backup_before_anything_is_touched(
    demo_stack, airflow_db, vault_credentials, monkeypatch, capfd, failure, message
):
    from airflow.utils.state import DagRunState, TaskInstanceState

    from devstack.net import free_port

    vault = vault_credentials
    policy = list(vault.state.policies["rewind-demo"])
    if failure == "down":
        monkeypatch.setenv(
            "AIRFLOW_CONN_VAULT_DEFAULT", vault.airflow_connection(approle=vault.approle).replace(str(vault.port), str(free_port()))
        )
    elif failure == "forbidden":  # authentication works, the token's policy does not cover the path
        vault.state.add_policy("rewind-demo", [])
    else:
        vault.set_mode(failure)
    pgbackrest = demo_stack.pgbackrest()
    backups_before = [b.label for b in pgbackrest.info().backup]
    pid_before = postmaster_pid(demo_stack.cluster)
    leases_before = len(vault.leases())
    try:
        run = run_once(load_dags()["rewind_backup_incr__demo"])
    finally:
        vault.state.add_policy("rewind-demo", policy)
    assert run.state == DagRunState.FAILED
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["preflight"] == TaskInstanceState.FAILED and states["backup"] == TaskInstanceState.UPSTREAM_FAILED
    errors = [line for line in capfd.readouterr().out.splitlines() if "CredentialsError: " in line]
    assert any("cluster 'demo': Vault at http://127.0.0.1:" in line and message in line for line in errors), errors
    assert [b.label for b in pgbackrest.info().backup] == backups_before
    assert postmaster_pid(demo_stack.cluster) == pid_before
    assert len(vault.leases()) == leases_before  # nothing leased, nothing left to revoke


@pytest.fixture
def pitr_dag(demo_stack, airflow_db, servicenow):
    dag = load_dags("rewind_pitr.py")["rewind_pitr__demo"]
    gate = dag.get_task("wait_for_approval")
    gate.poll_interval = 1
    gate.timeout = 120
    servicenow.state.auto_approve = True
    yield dag
    servicenow.state.auto_approve = False
    from rewind.guard import clear

    clear(demo_stack.cluster)


def test_a_pitr_with_leased_credentials(demo_stack, pitr_dag, vault_credentials, capfd):
    import datetime as dt

    vault = vault_credentials
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 100)
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "vault-pitr-base"})
    write(demo_stack, 101, 100)
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    time.sleep(1.2)
    demo_stack.psql("update ledger_entry set status = 'void'")
    before = len(vault.leases())

    with ArgvSampler() as sampler:
        run = run_once(pitr_dag, run_conf={**FORM_DEFAULTS, "target_type": "time", "target": target.isoformat()})
    output = capfd.readouterr()
    assert_success(run)
    assert ledger(demo_stack) == (200, 0, 200)
    leases = leases_since(vault, before)
    assert len(leases) >= 3  # preflight, stop_restore_promote (one lease from the stop to the promotion), full backup, ...
    assert all(lease.revoked_by == "request" for lease in leases), [lease.public() for lease in leases]
    assert vault_iam_users(demo_stack) == []
    secrets = [*vault.state.issued_values, demo_stack.cipher_pass, vault.approle[1]]
    assert any("restore" in argv for argv in sampler.pgbackrest_commands())
    assert not [argv for argv in sampler.seen for s in secrets if s in argv]
    assert not [s for s in secrets if s in output.out or s in output.err]


def test_vault_sealed_after_approval_fails_before_postgres_is_stopped(demo_stack, pitr_dag, vault_credentials, servicenow, capfd):
    """Vault checked again right before the destructive step: sealed between approval and stop ->
    the stop fails with the reason and PostgreSQL keeps running (same postmaster)."""
    from airflow.utils.state import DagRunState, TaskInstanceState

    vault = vault_credentials
    servicenow.state.auto_approve = False
    pid_before = postmaster_pid(demo_stack.cluster)
    rows_before = ledger(demo_stack)

    known = set(servicenow.state.records["change_request"])

    def seal_then_approve():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            requested = [
                c
                for sys_id, c in list(servicenow.state.records["change_request"].items())
                if sys_id not in known and c.get("approval") == "requested"
            ]
            if requested:
                vault.set_mode("sealed")
                servicenow.approve(requested[0]["number"])
                return
            time.sleep(0.2)

    approver = threading.Thread(target=seal_then_approve, daemon=True)
    approver.start()
    run = run_once(pitr_dag, run_conf={**FORM_DEFAULTS, "target_type": "immediate"})
    approver.join()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == DagRunState.FAILED
    assert states["wait_for_approval"] == TaskInstanceState.SUCCESS
    assert states["stop_restore_promote"] == TaskInstanceState.FAILED, states
    assert "is sealed" in capfd.readouterr().out
    assert postmaster_pid(demo_stack.cluster) == pid_before
    assert ledger(demo_stack) == rows_before


def test_token_auth_and_a_lease_kept_alive_past_its_ttl(demo_stack, airflow_db, vault_credentials, monkeypatch):
    """Token auth (a Vault token with Rewind's policy) instead of AppRole; a lease whose TTL is
    shorter than the work is renewed while the task runs, and revoked at the end."""
    from rewind_airflow.hooks.pgbackrest import PgBackRestHook

    vault = vault_credentials
    token = vault.state.create_token(["rewind-demo"])
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", vault.airflow_connection(token=token))
    role = vault.state.aws_mounts["aws"]["rewind-demo"]
    monkeypatch.setattr(role, "lease_duration_s", 3)
    logins_before = sum(r["path"] == "auth/approle/login" for r in vault.state.requests)

    hook = PgBackRestHook(cluster="demo")
    client = hook.get_conn()
    [lease] = [held for held in vault.leases() if held.revoked_at is None]
    # Until the lease has outlived its first 3 s TTL by more than the simulator's expiry sweep (every
    # second) and was renewed twice (at two thirds of what remains): it was 8 s flat.
    deadline = time.monotonic() + 60
    while (lease.renewals < 2 or time.time() < lease.issued_at + 3 + 1.5) and time.monotonic() < deadline:
        time.sleep(0.1)
    info = client.info()
    assert info.status.code in (0, 2), info.status  # the repository was readable with the leased key
    assert lease.revoked_at is None and lease.renewals >= 2
    hook.release()
    assert lease.revoked_by == "request"
    assert vault_iam_users(demo_stack) == []
    assert sum(r["path"] == "auth/approle/login" for r in vault.state.requests) == logins_before  # the token did it


def test_a_revocation_that_hangs_does_not_hold_the_end_of_the_task(demo_stack, vault_credentials):
    """Revoking a lease makes Vault delete the key in AWS IAM: when that hangs (here the simulator's
    revocation waits 8 s before it deletes the IAM user), the end of the task waits for it a bounded
    time, says so, and goes on; the revocation still lands (or the lease's TTL ends the key)."""
    import hvac

    from rewind.credentials import RepositoryCredentials

    vault = vault_credentials
    messages: list[str] = []
    credentials = RepositoryCredentials(
        demo_stack.cluster, vault_client=lambda: hvac.Client(url=vault.url, token=vault.state.root_token), log=messages.append
    )
    credentials.secrets()
    [lease] = [held for held in vault.leases() if held.revoked_at is None]
    vault.set_delay("sys/leases/revoke", 8)
    try:
        credentials.release(wait_s=1)
        assert lease.revoked_at is None  # release() is back while Vault is still waiting on IAM
        [warning] = [m for m in messages if m.startswith("WARNING: revoking Vault lease")]
        assert f"lease {lease.lease_id} did not finish within 1s" in warning and "the lease expires by itself within" in warning
        deadline = time.monotonic() + 60
        # the simulator marks the lease revoked, then deletes its IAM user (as Vault's revocation does)
        while (lease.revoked_at is None or vault_iam_users(demo_stack)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        vault.set_delay("sys/leases/revoke", 0)
    assert lease.revoked_by == "request"  # the request released in the background got through
    assert vault_iam_users(demo_stack) == []


def test_the_cli_reaches_vault_like_the_vault_cli_and_revokes_its_lease(demo_stack, vault_credentials, monkeypatch, capsys):
    """`rewind metrics` on a Vault cluster: VAULT_ADDR + VAULT_ROLE_ID/VAULT_SECRET_ID (AppRole)."""
    import json

    from rewind.cli import main

    vault = vault_credentials
    monkeypatch.setenv("VAULT_ADDR", vault.url)
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.setenv("VAULT_ROLE_ID", vault.approle[0])
    monkeypatch.setenv("VAULT_SECRET_ID", vault.approle[1])
    before = len(vault.leases())
    assert main(["--inventory", str(demo_stack.inventory_path), "metrics", "--cluster", "demo", "--format", "json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["stanza.status"] in (0, 2)  # readable (99 would be "other": access denied)
    [lease] = leases_since(vault, before)
    assert lease.revoked_by == "request"


def test_sts_credentials_with_a_session_token_back_up_and_are_not_renewed(demo_stack, airflow_db, vault_credentials, monkeypatch):
    """assumed_role: Vault returns an STS session (ASIA key + session token). The token reaches
    pgBackRest as PGBACKREST_REPO1_S3_TOKEN, moto checks it, and a non-renewable lease is left to
    its TTL rather than renewed."""
    from devstack.vault_sim import inventory_credentials, rewind_policy_paths, s3_bucket_policy
    from rewind.credentials import S3_TOKEN
    from rewind_airflow.hooks.pgbackrest import PgBackRestHook

    vault = vault_credentials
    vault.state.sts = demo_stack.s3.client("sts")
    if "rewind-demo-sts" not in vault.state.aws_mounts["aws"]:
        vault.state.add_aws_role(
            "aws",
            "rewind-demo-sts",
            s3_bucket_policy(demo_stack.s3.bucket, demo_stack.cluster.repo.path),
            lease_duration_s=3,
            credential_type="assumed_role",
        )
    policy = list(vault.state.policies["rewind-demo"])
    vault.state.add_policy(
        "rewind-demo", rewind_policy_paths(aws_mount="aws", aws_role="rewind-demo-sts", kv_mount="secret", kv_path="rewind/demo")
    )
    demo_stack.use_credentials(inventory_credentials("demo", "REWIND_DEMO_", aws_role="rewind-demo-sts"))
    try:
        count_before = len(vault.leases())
        hook = PgBackRestHook(cluster="demo")
        assert hook.secrets()[S3_TOKEN]
        record = hook.get_conn().backup("full", annotations={"airflow_run_id": "vault-sts"})
        [lease] = leases_since(vault, count_before)
        assert lease.role == "rewind-demo-sts" and lease.access_key.startswith("ASIA")
        assert not lease.renewable and lease.renewals == 0  # a backup longer than the 3 s TTL was not renewed either
        hook.release()
        # Revoked at the end of the task, or (the backup outlasted its 3 s) by Vault at its TTL.
        assert lease.revoked_by == "request" or (lease.revoked_by == "expiry" and lease.revoked_at >= lease.expires_at)
    finally:
        vault.state.add_policy("rewind-demo", policy)
    backup = demo_stack.pgbackrest().info().find_annotated("airflow_run_id", "vault-sts")
    assert backup is not None and backup.type == "full" and not backup.error, record


def test_the_watchdog_checks_archiving_without_credentials_and_reports_them_as_their_own_finding(
    demo_stack, airflow_db, vault_credentials, servicenow
):
    """Vault sealed: the watchdog cannot lease repository credentials. It still checks archiving
    (pg_stat_archiver needs none), the task succeeds, and the credential failure is its own incident,
    resolved by the next run that gets credentials (never a generic task_failed incident that no
    success would resolve)."""
    from tests.integration.helpers import incidents_for

    vault = vault_credentials
    health = load_dags("rewind_health.py")["rewind_health__demo"]
    vault.set_mode("sealed")
    run = run_once(health)
    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    [credentials] = [i for i in incidents_for(servicenow, "demo", "credentials") if i["state"] == "1"]
    assert "is sealed" in credentials["description"]
    assert not [i for i in incidents_for(servicenow, "demo", "task_failed.rewind_health__demo") if i["state"] == "1"]
    assert not [i for i in incidents_for(servicenow, "demo", "archive_failing") if i["state"] == "1"]  # archiving was checked, and is fine

    vault.set_mode("ok")
    assert run_once(health).state == "success"
    from tests.integration.helpers import client

    assert client(servicenow).get("incident", credentials["sys_id"])["state"] == "6"
