"""Onboarding and decommissioning on the real stack: a cluster that has never archived is onboarded
under an approved change (bucket posture checked through the amazon provider's S3Hook, settings,
restart, stanza, first full backup), a second run changes nothing, bad input and rejected changes
touch nothing; a cluster is decommissioned deliberately (the stanza's name typed), keeping or
deleting its repository."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from devstack.demo import DemoStack
from devstack.s3tls import apply_bucket_posture, terraform_bucket_posture
from rewind.postgres import postmaster_pid
from tests.conftest import load_dags, run_once
from tests.integration.helpers import client, states

pytestmark = pytest.mark.integration

POSTURED_BUCKET = "rewind-locked"


def settings(stack) -> dict[str, str]:
    rows = stack.psql("select name || '=' || setting from pg_settings where name in ('archive_mode', 'archive_command', 'wal_level')")
    return dict(row.split("=", 1) for row in rows.splitlines())


def postured_bucket(stack) -> None:
    """A bucket as terraform/ makes it (devstack/s3tls.py reads the module's settings): versioning,
    Object Lock GOVERNANCE, SSE-KMS with a bucket key, the lifecycle, public access blocked."""
    s3 = stack.s3.client()
    if POSTURED_BUCKET in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        return
    key_arn = stack.s3.client("kms").create_key(Description=f"SSE-KMS key of {POSTURED_BUCKET}")["KeyMetadata"]["Arn"]
    apply_bucket_posture(s3, POSTURED_BUCKET, terraform_bucket_posture(kms_key_arn=key_arn))


@pytest.fixture(scope="module")
def newcomer(airflow_db, servicenow):
    """A cluster running for years without archiving; its inventory entry names the repository."""
    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-stack-", dir="/tmp")), name="newcomer", onboarded=False)
    saved = dict(os.environ)
    try:
        stack.start()
        os.environ.update(
            {
                "REWIND_INVENTORY": str(stack.inventory_path),
                "AIRFLOW_CONN_REWIND_PG_NEWCOMER": stack.postgres_connection(),
                "AIRFLOW_CONN_AWS_DEFAULT": stack.aws_connection(),
                **stack.worker_env(),
            }
        )
        stack.psql("create table ledger_entry as select g as id from generate_series(1, 500) g")
        yield stack
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.remove()


def onboard(stack):
    dag = load_dags("rewind_onboard.py")["rewind_onboard__newcomer"]
    gate = dag.get_task("wait_for_approval")
    gate.poll_interval, gate.timeout = 1, 120
    return run_once(dag, run_conf={"reason": "onboard the newcomer cluster"})


def untouched(stack, pid) -> None:
    assert postmaster_pid(stack.cluster) == pid
    assert settings(stack)["archive_mode"] == "off"
    assert not Path(stack.cluster.config_path).exists()


def test_a_bucket_without_the_posture_is_refused_before_anything(newcomer, servicenow, capfd):
    pid, changes = postmaster_pid(newcomer.cluster), len(client(servicenow).query("change_request", ""))
    run = onboard(newcomer)
    assert states(run)["plan"] == "failed", states(run)
    out = capfd.readouterr().out
    assert f"repository bucket {newcomer.s3.bucket}: versioning is not enabled; Object Lock is not enabled" in out
    assert "public access is not blocked" in out
    untouched(newcomer, pid)
    assert len(client(servicenow).query("change_request", "")) == changes


def use_postured_bucket(stack) -> None:
    postured_bucket(stack)
    stack.repo_settings = {"bucket": POSTURED_BUCKET}
    stack.write_inventory()


def test_an_onboarding_whose_requester_cannot_be_named_is_refused_before_anything(newcomer, servicenow, monkeypatch, capfd):
    use_postured_bucket(newcomer)
    monkeypatch.setenv("AIRFLOW_VAR_REWIND_IDENTITY__DAG_TEST", '{"email": "stranger@example.com", "amr": ["pwd"]}')
    pid, changes = postmaster_pid(newcomer.cluster), len(client(servicenow).query("change_request", ""))
    run = onboard(newcomer)
    assert states(run)["plan"] == "failed", states(run)
    assert "the run was triggered by 'dag_test' <stranger@example.com>, who is not a ServiceNow user" in capfd.readouterr().out
    untouched(newcomer, pid)
    assert len(client(servicenow).query("change_request", "")) == changes


@pytest.mark.parametrize("decision", ["rejected", "approved by its requester"])
def test_an_onboarding_change_rejected_or_self_approved_touches_nothing(newcomer, servicenow, decision):
    use_postured_bucket(newcomer)
    pid = postmaster_pid(newcomer.cluster)
    known = set(servicenow.state.records["change_request"])

    def decide():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for sys_id, change in list(servicenow.state.records["change_request"].items()):
                if sys_id not in known and change.get("approval") == "requested":
                    if decision == "rejected":
                        return servicenow.reject(change["number"])
                    return servicenow.approve(change["number"], by="dba.oncall")  # the requester: separation of duties
            time.sleep(0.2)

    threading.Thread(target=decide, daemon=True).start()
    run = onboard(newcomer)
    if decision == "rejected":
        assert (states(run)["wait_for_approval"], states(run)["configure_archiving"]) == ("failed", "upstream_failed"), states(run)
    else:
        steps = states(run)
        assert (steps["wait_for_approval"], steps["begin_change"], steps["configure_archiving"]) == ("success", "failed", "upstream_failed")
        change = next(c for c in servicenow.state.records["change_request"].values() if c["sys_id"] not in known)
        assert change["state"] == "-2", change  # never moved to Implement
    untouched(newcomer, pid)


def approve_after(servicenow, known: set, meanwhile) -> threading.Thread:
    """The CAB approves the run's change once it is requested; `meanwhile` runs just before (what
    changes on the host while the change waits)."""

    def decide():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for sys_id, change in list(servicenow.state.records["change_request"].items()):
                if sys_id not in known and change.get("approval") == "requested":
                    meanwhile()
                    return servicenow.approve(change["number"])
            time.sleep(0.2)

    thread = threading.Thread(target=decide, daemon=True)
    thread.start()
    return thread


def test_onboarding_checks_again_at_configure_time_that_nothing_else_archives(newcomer, servicenow, capfd):
    """Another tool starts archiving the cluster while the change waits for approval: the plan saw
    nothing, configure (inside the window) sees it and changes nothing."""
    use_postured_bucket(newcomer)
    elsewhere = "cp %p /var/tmp/elsewhere/%f"

    def another_tool_starts_archiving():
        newcomer.psql("alter system set archive_mode = 'on'")
        newcomer.psql(f"alter system set archive_command = '{elsewhere}'")
        newcomer.stop_postgres()
        newcomer.start_postgres()

    approving = approve_after(servicenow, set(servicenow.state.records["change_request"]), another_tool_starts_archiving)
    try:
        run = onboard(newcomer)
        approving.join(timeout=60)
        steps = states(run)
        assert (steps["plan"], steps["wait_for_approval"], steps["configure_archiving"]) == ("success", "success", "failed"), steps
        assert f"already archives elsewhere (archive_command = '{elsewhere}')" in capfd.readouterr().out
        assert settings(newcomer)["archive_command"] == elsewhere  # left as the other tool set it
        assert not Path(newcomer.cluster.config_path).exists()
    finally:
        newcomer.psql("alter system reset archive_mode")
        newcomer.psql("alter system reset archive_command")
        newcomer.stop_postgres()
        newcomer.start_postgres()
    assert settings(newcomer)["archive_mode"] == "off"


ROUTINE = (
    ("rewind_backup.py", "rewind_backup_incr__newcomer"),
    ("rewind_health.py", "rewind_health__newcomer"),
    ("rewind_verify.py", "rewind_verify__newcomer"),
)


def test_a_cluster_waiting_for_its_onboarding_skips_its_routine_work_and_opens_no_incident(newcomer, servicenow, capfd):
    """Issue: a stack left running for hours showed incidents for the cluster waiting to be onboarded
    (its hourly backup's preflight failed three tries on a missing config; the watchdog opened a
    "repository" incident) while the stack's own banner said those DAGs skip until it is onboarded."""
    capfd.readouterr()
    for dag_file, dag_id in ROUTINE:
        run = run_once(load_dags(dag_file)[dag_id])
        assert run.state == "success" and set(states(run).values()) == {"skipped"}, (dag_id, states(run))
    out = capfd.readouterr().out
    assert "cluster 'newcomer' is not onboarded yet" in out and "run rewind_onboard__newcomer" in out
    assert [i for i in client(servicenow).query("incident", "cmdb_ci=newcomer")] == []


def test_onboarding_enables_archiving_then_a_second_run_changes_nothing(newcomer, servicenow):
    use_postured_bucket(newcomer)
    pid = postmaster_pid(newcomer.cluster)
    servicenow.state.auto_approve = True
    try:
        run = onboard(newcomer)
        assert run.state == "success", states(run)
        assert postmaster_pid(newcomer.cluster) != pid  # restarted, inside the approved change
        now = settings(newcomer)
        assert now["archive_mode"] == "on" and now["archive_command"].endswith("--stanza=newcomer archive-push %p")
        info = newcomer.pgbackrest().info()
        [full] = [b for b in info.backups if b.type == "full"]
        [change] = client(servicenow).query("change_request", f"correlation_id=rewind:rewind_onboard__newcomer:{run.run_id}")
        assert (change["state"], change["close_code"], full.annotations["rewind_change"]) == ("3", "successful", change["number"])
        assert f"first full backup: {full.label}" in change["close_notes"]
        assert "approved by: CAB Approver <cab.approver@example.com>" in change["close_notes"]  # the audit page reads it

        pid, changes = postmaster_pid(newcomer.cluster), len(client(servicenow).query("change_request", ""))
        again = onboard(newcomer)
        assert again.state == "success" and set(states(again).values()) == {"skipped"}, states(again)
        assert postmaster_pid(newcomer.cluster) == pid and len(client(servicenow).query("change_request", "")) == changes
    finally:
        servicenow.state.auto_approve = False


def test_an_onboarded_cluster_that_loses_its_config_still_pages(newcomer, servicenow):
    config = Path(newcomer.cluster.config_path)
    aside = config.with_name(config.name + ".aside")
    config.rename(aside)  # kept with its owner and mode
    try:
        run = run_once(load_dags("rewind_backup.py")["rewind_backup_incr__newcomer"])
        assert states(run)["preflight"] == "failed", states(run)
        assert [i for i in client(servicenow).query("incident", "cmdb_ci=newcomer") if i["state"] == "1"], "no incident opened"
    finally:
        aside.rename(config)


def test_a_cluster_archiving_elsewhere_is_refused(newcomer, capfd):
    original = settings(newcomer)["archive_command"]
    newcomer.psql("alter system set archive_command = 'cp %p /var/tmp/elsewhere/%f'")
    newcomer.psql("select pg_reload_conf()")
    try:
        run = onboard(newcomer)
        assert states(run)["plan"] == "failed"
        assert "already archives elsewhere (archive_command = 'cp %p /var/tmp/elsewhere/%f')" in capfd.readouterr().out
    finally:
        newcomer.psql(f"alter system set archive_command = '{original}'")
        newcomer.psql("select pg_reload_conf()")


def test_a_stanza_of_another_database_system_is_refused(newcomer, capfd):
    """The inventory names the right stanza, but the data directory now holds another database
    system (a rebuilt host, a wrong data_dir): its WAL must not go into that stanza."""
    import shutil

    from devstack.demo import PG_BIN

    original_id = newcomer.psql("select system_identifier from pg_control_system()")
    newcomer.stop_postgres()
    aside = newcomer.data_dir.with_name("data-aside")
    newcomer.data_dir.rename(aside)
    try:
        newcomer.runner().run(
            [str(PG_BIN / "initdb"), "-D", str(newcomer.data_dir), "-A", "trust", "-U", "postgres"], timeout=120, log_stdout=False
        )
        (newcomer.data_dir / "postgresql.auto.conf").write_text((aside / "postgresql.auto.conf").read_text())
        newcomer.start_postgres()
        other_id = newcomer.psql("select system_identifier from pg_control_system()")
        run = onboard(newcomer)
        assert states(run)["plan"] == "failed", states(run)
        assert (
            f"stanza 'newcomer' in s3://{POSTURED_BUCKET}/rewind/newcomer belongs to database system {original_id}, this cluster is {other_id}"
            in (capfd.readouterr().out)
        )
    finally:
        newcomer.stop_postgres()
        shutil.rmtree(newcomer.data_dir)
        aside.rename(newcomer.data_dir)
        newcomer.start_postgres()


def test_decommission_needs_the_stanza_typed_and_a_rejected_change_touches_nothing(newcomer, servicenow, capfd):
    dag = load_dags("rewind_decommission.py")["rewind_decommission__newcomer"]
    gate = dag.get_task("wait_for_approval")
    gate.poll_interval, gate.timeout = 1, 120
    pid = postmaster_pid(newcomer.cluster)
    run = run_once(dag, run_conf={"confirm_stanza": "newcomr", "delete_repository": False, "reason": "retire the newcomer"})
    assert states(run)["validate"] == "failed"
    assert "param confirm_stanza: type the stanza's name, 'newcomer'" in capfd.readouterr().out
    assert postmaster_pid(newcomer.cluster) == pid and settings(newcomer)["archive_mode"] == "on"


@pytest.fixture
def retiree(airflow_db, servicenow):
    """An onboarded cluster with a backup, to be decommissioned for good."""
    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-stack-", dir="/tmp")), name="retiree")
    saved = dict(os.environ)
    try:
        stack.start()
        os.environ.update(
            {
                "REWIND_INVENTORY": str(stack.inventory_path),
                "AIRFLOW_CONN_REWIND_PG_RETIREE": stack.postgres_connection(),
                **stack.worker_env(),
            }
        )
        yield stack
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.remove()


@pytest.mark.parametrize("delete_repository", [False, True], ids=["keeps the repository", "deletes the stanza"])
def test_decommission_stops_archiving_after_a_final_full_backup(retiree, servicenow, delete_repository):
    dag = load_dags("rewind_decommission.py")["rewind_decommission__retiree"]
    gate = dag.get_task("wait_for_approval")
    gate.poll_interval, gate.timeout = 1, 120
    servicenow.state.auto_approve = True
    try:
        run = run_once(dag, run_conf={"confirm_stanza": "retiree", "delete_repository": delete_repository, "reason": "retire the cluster"})
    finally:
        servicenow.state.auto_approve = False
    assert run.state == "success", states(run)
    assert settings(retiree)["archive_mode"] == "off"
    [change] = client(servicenow).query("change_request", f"correlation_id=rewind:rewind_decommission__retiree:{run.run_id}")
    assert (change["state"], change["close_code"]) == ("3", "successful")
    info = retiree.pgbackrest().info()
    if delete_repository:
        assert info.status.code == 1 and "the stanza was deleted from the repository" in change["close_notes"]
    else:
        [final] = [b for b in info.backups if b.annotations.get("rewind_change") == change["number"]]
        assert final.type == "full" and f"final full backup: {final.label}" in change["close_notes"]
        assert "the repository is kept" in change["close_notes"]
    # routine work of the cluster now skips instead of failing against a stopped stanza
    backup = run_once(load_dags()["rewind_backup_incr__retiree"])
    assert backup.state == "success" and set(states(backup).values()) == {"skipped"}, states(backup)


def decommission(stack, servicenow, *, delete_repository: bool = False, meanwhile=None):
    dag = load_dags("rewind_decommission.py")[f"rewind_decommission__{stack.name}"]
    gate = dag.get_task("wait_for_approval")
    gate.poll_interval, gate.timeout = 1, 120
    conf = {"confirm_stanza": stack.name, "delete_repository": delete_repository, "reason": "retire the cluster"}
    if meanwhile is None:
        servicenow.state.auto_approve = True
        try:
            return run_once(dag, run_conf=conf)
        finally:
            servicenow.state.auto_approve = False
    approving = approve_after(servicenow, set(servicenow.state.records["change_request"]), meanwhile)
    run = run_once(dag, run_conf=conf)
    approving.join(timeout=60)
    return run


def test_decommission_never_turns_off_archiving_it_does_not_own(retiree, servicenow, capfd):
    """archive_mode goes off only where the archive_command is Rewind's own: checked at validate, and
    again at the moment archiving stops (another tool took over while the change waited)."""
    ours = settings(retiree)["archive_command"]
    elsewhere = "cp %p /var/tmp/elsewhere/%f"

    def another_tool_takes_over():
        retiree.psql(f"alter system set archive_command = '{elsewhere}'")
        retiree.psql("select pg_reload_conf()")

    another_tool_takes_over()
    run = decommission(retiree, servicenow)
    assert states(run)["validate"] == "failed", states(run)
    assert f"is archived by something other than Rewind (archive_command = '{elsewhere}'; Rewind's is '{ours}')" in capfd.readouterr().out
    assert (settings(retiree)["archive_mode"], settings(retiree)["archive_command"]) == ("on", elsewhere)

    retiree.psql(f"alter system set archive_command = '{ours}'")
    retiree.psql("select pg_reload_conf()")
    # While the change waits, someone wraps Rewind's command in their own (WAL still reaches the
    # repository, so the final full backup works): stop_archiving sees it and touches nothing.
    wrapped = f"{ours} && echo archived by another tool too >/dev/null"

    def another_tool_wraps_it():
        retiree.psql(f"alter system set archive_command = '{wrapped}'")
        retiree.psql("select pg_reload_conf()")

    run = decommission(retiree, servicenow, meanwhile=another_tool_wraps_it)
    steps = states(run)
    assert (steps["validate"], steps["final_full_backup"], steps["stop_archiving"]) == ("success", "success", "failed"), steps
    assert "is archived by something other than Rewind (archive_command = " in capfd.readouterr().out
    assert (settings(retiree)["archive_mode"], settings(retiree)["archive_command"]) == ("on", wrapped)
    assert retiree.pgbackrest().info().status.code == 0


def test_decommission_keeps_a_stanza_a_pitr_hold_protects(retiree, servicenow, capfd):
    """stanza-delete honours the holds expire honours: the pre-rewind history of a recent rewind."""
    from rewind.retention import active_holds, place_hold

    retiree.pgbackrest().backup("full", annotations={"airflow_run_id": "held-base"})
    hold = place_hold(retiree.cluster, run_id="manual__a-recent-rewind", info=retiree.pgbackrest().info(), timeline=1, reason="a rewind")
    assert active_holds(retiree.cluster) == [hold]
    run = decommission(retiree, servicenow, delete_repository=True)
    assert states(run)["validate"] == "failed", states(run)
    assert (
        "param delete_repository: stanza 'retiree' is held from deletion by hold of PITR run manual__a-recent-rewind"
        in capfd.readouterr().out
    )
    info = retiree.pgbackrest().info()
    assert info.status.code == 0 and info.backups and settings(retiree)["archive_mode"] == "on"
