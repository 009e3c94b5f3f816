"""The PITR DAG against the real stack and the ServiceNow simulator: the guide's incident, every
target type (xid and lsn onto a clone first, the rest in place), the change gate, bad params, and
a restore killed midway."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time

import pytest

from rewind.guard import read_guard
from rewind.pitr.clone import clone_paths
from rewind.postgres import postmaster_pid
from tests.conftest import load_dags, run_once
from tests.integration.helpers import (
    VOID_CHECK,
    assert_success,
    change_of,
    client,
    fresh_ledger,
    given_change,
    incidents_for,
    ledger,
    run_pitr,
    the_incident,
    timeline,
    write,
)

pytestmark = pytest.mark.integration


def closed_change(servicenow, run) -> dict:
    return change_of(servicenow, run)


def test_the_guides_incident_rewound_by_time(demo_stack, pitr, servicenow, approve_all):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 100)
    time.sleep(1.2)
    write(demo_stack, 101, 100)
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)  # "02:13:30"
    time.sleep(1.2)
    the_incident(demo_stack)  # "02:14"
    assert ledger(demo_stack) == (250, 200, 10_050)
    timeline_before = timeline(demo_stack)

    run = run_pitr(
        pitr,
        target_type="time",
        target=target.strftime("%Y-%m-%d %H:%M:%S+00"),
        validation_sql=[VOID_CHECK, {"sql": "select count(*) from ledger_entry", "expect": 200}],
    )

    assert_success(run)
    assert ledger(demo_stack) == (200, 0, 200)  # everything before the target, nothing after it
    assert timeline(demo_stack) == timeline_before + 1
    change = closed_change(servicenow, run)
    assert (change["state"], change["close_code"]) == ("3", "successful")
    assert "Target: time" in change["close_notes"] and run.run_id in change["close_notes"]
    info = demo_stack.pgbackrest().info()
    full = info.find_annotated("airflow_run_id", run.run_id)
    assert full.type == "full" and full.annotations["rewind_change"] == change["number"]
    assert full.timeline == timeline_before + 1
    assert read_guard(demo_stack.cluster) is None
    # the cluster archives and backs up normally on its new timeline
    demo_stack.pgbackrest().check()


def test_rewind_by_xid_exclusive_of_the_bad_transaction(demo_stack, pitr, approve_all):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 120)
    xid = demo_stack.psql("begin; update ledger_entry set status = 'void'; select pg_current_xact_id(); commit;").split()[-1]
    write(demo_stack, 5_001, 10)
    run = run_pitr(pitr, target_type="xid", target=xid, target_exclusive=True, validation_sql=[VOID_CHECK], mode="clone")
    assert_success(run)
    assert ledger(demo_stack) == (120, 0, 120)
    shutil.rmtree(clone_paths(demo_stack.cluster, run.run_id).pre_rewind_dir)  # exact on a clone too; the kept directory goes


def test_rewind_to_a_named_restore_point_with_pause_then_promote_under_an_emergency_change(demo_stack, pitr, servicenow, approve_all):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 80)
    demo_stack.psql("select pg_create_restore_point('before-migration-42')")
    the_incident(demo_stack)
    run = run_pitr(
        pitr, target_type="name", target="before-migration-42", target_action="pause", validation_sql=[VOID_CHECK], change_type="emergency"
    )
    assert_success(run)
    assert ledger(demo_stack) == (80, 0, 80)
    assert demo_stack.psql("select pg_is_in_recovery()") == "f"
    change = change_of(servicenow, run)
    assert (change["type"], change["state"], change["close_code"]) == ("emergency", "3", "successful")


def test_rewind_to_an_lsn_under_a_given_change(demo_stack, pitr, servicenow):
    """change_number given: Rewind uses that change (already approved by the CAB) and closes it."""
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 60)
    lsn = demo_stack.psql("select pg_current_wal_insert_lsn()")
    the_incident(demo_stack)
    change = given_change(servicenow)
    run = run_pitr(pitr, target_type="lsn", target=lsn, validation_sql=[VOID_CHECK], change_number=change["number"], mode="clone")
    assert_success(run)
    assert ledger(demo_stack) == (60, 0, 60)
    shutil.rmtree(clone_paths(demo_stack.cluster, run.run_id).pre_rewind_dir)
    closed = client(servicenow).get("change_request", change["sys_id"])
    assert (closed["state"], closed["close_code"]) == ("3", "successful")
    assert "Target: lsn" in closed["close_notes"]
    assert any(run.run_id in note for note in client(servicenow).work_notes("change_request", change["sys_id"]))


def test_failure_after_approval_notes_the_change_takes_no_backup_and_keeps_backups_blocked(
    demo_stack, pitr, servicenow, approve_all, capfd
):
    from airflow.utils.state import DagRunState, TaskInstanceState

    from rewind.cli import main as rewind_cli

    fresh_ledger(demo_stack)
    write(demo_stack, 1, 25)
    backups_before = {b.label for b in demo_stack.pgbackrest().info().backup}
    run = run_pitr(pitr, target_type="latest", validation_sql=[{"sql": "select count(*) from ledger_entry", "expect": 999}])
    assert run.state == DagRunState.FAILED
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["stop_restore_promote"] == TaskInstanceState.FAILED
    assert states["full_backup_new_timeline"] == TaskInstanceState.UPSTREAM_FAILED
    assert {b.label for b in demo_stack.pgbackrest().info().backup} == backups_before  # no new full backup
    change = closed_change(servicenow, run)
    assert change["state"] == "-1"  # left in Implement: not closed as if it had worked
    [note] = [n for n in client(servicenow).work_notes("change_request", change["sys_id"]) if "failed" in n]
    assert "step validate_data failed" in note and "returned '25', expected '999'" in note
    assert "PostgreSQL is running" in note and "Restore guard is up" in note and "no new full backup was taken" in note

    # Backups of the stanza wait until a DBA has looked at the cluster and cleared the guard.
    capfd.readouterr()
    backup_run = run_once(load_dags()["rewind_backup_incr__demo"])
    assert backup_run.state == DagRunState.FAILED
    assert "failed and left backups blocked" in capfd.readouterr().out
    assert rewind_cli(["--inventory", str(demo_stack.inventory_path), "guard", "clear", "--cluster", "demo"]) == 0
    assert read_guard(demo_stack.cluster) is None
    assert run_once(load_dags()["rewind_backup_incr__demo"]).state == DagRunState.SUCCESS


def test_rewind_to_latest_loses_nothing(demo_stack, pitr, approve_all):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 70)
    write(demo_stack, 71, 30)  # committed moments before the stop: still archived and replayed
    run = run_pitr(pitr, target_type="latest", validation_sql=[{"sql": "select count(*) from ledger_entry", "expect": 100}])
    assert_success(run)
    assert ledger(demo_stack) == (100, 0, 100)


def _decide_in_background(servicenow, verdict: str, *, after_trigger_polls: int = 0) -> dict:
    """The approver: waits for the run's change to request approval (and, optionally, for the
    trigger to have polled it), then approves or rejects it. dag.test() itself must run in the
    main thread."""
    outcome: dict = {}
    known = {c["number"] for c in client(servicenow).query("change_request", "")}

    def approver() -> None:
        change = _requested_change(servicenow, exclude=known)
        deadline = time.monotonic() + 60
        while sum(1 for r in servicenow.state.requests if change["number"] in r["query"]) < after_trigger_polls:
            if time.monotonic() > deadline:
                outcome["error"] = "the trigger never polled the change"
                return
            time.sleep(0.2)
        outcome["running_when_decided"] = postmaster_pid_of.get("cluster") and postmaster_pid(postmaster_pid_of["cluster"])
        getattr(servicenow, verdict)(change["number"])
        outcome["change"] = change

    threading.Thread(target=approver, daemon=True).start()
    return outcome


postmaster_pid_of: dict = {}


def _requested_change(servicenow, *, exclude: set[str], timeout=120) -> dict:
    """The change this run opened: requesting approval and not among those that existed before."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = [c for c in client(servicenow).query("change_request", "approval=requested") if c["number"] not in exclude]
        if waiting:
            return waiting[0]
        time.sleep(0.3)
    raise AssertionError("no change requested approval")


def test_rejected_change_never_touches_postgres(demo_stack, pitr, servicenow, capfd):
    from airflow.utils.state import DagRunState, TaskInstanceState

    fresh_ledger(demo_stack)
    write(demo_stack, 1, 40)
    pid = postmaster_pid(demo_stack.cluster)
    incidents_before = len(incidents_for(servicenow, "demo"))
    decision = _decide_in_background(servicenow, "reject")
    run = run_pitr(pitr, target_type="latest")
    assert run.state == DagRunState.FAILED
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["wait_for_approval"] == TaskInstanceState.FAILED
    assert states["stop_restore_promote"] == TaskInstanceState.UPSTREAM_FAILED
    assert postmaster_pid(demo_stack.cluster) == pid
    assert ledger(demo_stack) == (40, 0, 40)
    number = decision["change"]["number"]
    assert f"{number} (state New, approval rejected) was rejected" in capfd.readouterr().out
    assert len(incidents_for(servicenow, "demo")) == incidents_before  # the gate working is not an incident


def test_approval_given_after_the_sensor_deferred(demo_stack, pitr, servicenow):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 30)
    postmaster_pid_of["cluster"] = demo_stack.cluster
    # the sensor checks once before deferring; three queries means the trigger has polled too
    decision = _decide_in_background(servicenow, "approve", after_trigger_polls=3)
    run = run_pitr(pitr, target_type="latest")
    assert "error" not in decision, decision
    assert decision["running_when_decided"], "PostgreSQL was touched before the approval"
    assert_success(run)
    assert ledger(demo_stack) == (30, 0, 30)


@pytest.mark.parametrize(
    "conf, task, message",
    [
        ({"target_type": "time", "target": "2099-01-01 00:00:00+00"}, "preflight", "is in the future"),
        ({"target_type": "time", "target": "2001-01-01 00:00:00+00"}, "preflight", "is before the oldest usable backup"),
        ({"target_type": "time", "target": "2026-11-24 02:13:30"}, "validate_params", "has no time zone"),
        ({"target_type": "xid", "target": "12a"}, "validate_params", "is not a transaction id"),
        ({"target_type": "lsn", "target": "0/XYZ"}, "validate_params", "is not an LSN like 0/3000060"),
        ({"target_type": "name", "target": "x; rm -rf /"}, "validate_params", "is not a restore point name Rewind accepts"),
        ({"target_type": "name", "target": "--type=immediate"}, "validate_params", "is not a restore point name Rewind accepts"),
        (
            {"target_type": "name", "target": "never-created-point"},
            "preflight",
            "restore point 'never-created-point' is not in the archived WAL",
        ),
        (
            {"target_type": "latest", "validation_sql": [{"sql": "select 1; drop table ledger_entry", "expect": 1}]},
            "validate_params",
            "single SQL statement",
        ),
        ({"target_type": "latest", "backup_set": "20990101-000000F"}, "preflight", "backup_set: 20990101-000000F is not in the repository"),
    ],
)
def test_bad_params_fail_before_anything_is_touched(demo_stack, pitr, servicenow, capfd, conf, task, message):
    from airflow.utils.state import DagRunState, TaskInstanceState

    fresh_ledger(demo_stack)
    write(demo_stack, 1, 10)
    pid = postmaster_pid(demo_stack.cluster)
    changes_before = len(client(servicenow).query("change_request", ""))
    incidents_before = len(incidents_for(servicenow, "demo"))
    run = run_pitr(pitr, **conf)
    assert run.state == DagRunState.FAILED
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states[task] == TaskInstanceState.FAILED
    failures = [line for line in capfd.readouterr().out.splitlines() if "Task failed" in line or "Error: " in line or "Reachable: " in line]
    assert any(message in line for line in failures), failures
    assert postmaster_pid(demo_stack.cluster) == pid
    assert ledger(demo_stack) == (10, 0, 10)
    assert len(client(servicenow).query("change_request", "")) == changes_before
    assert len(incidents_for(servicenow, "demo")) == incidents_before  # a typo in the form is not an incident


def test_a_scratch_restore_killed_before_it_wrote_pg_version_converges_when_retried(demo_stack):
    """Killed in its first instants, a restore leaves files but neither PG_VERSION nor
    backup.manifest; pgBackRest's --delta then cannot confirm the directory and refuses ("path not
    empty", error 40): the retry of a rehearsal's or a salvage's scratch restore must still converge."""
    import shutil
    import tempfile
    from pathlib import Path

    from devstack.net import free_port
    from rewind.scratch import ScratchCluster

    pgbackrest = demo_stack.pgbackrest()
    pgbackrest.backup("full", annotations={"airflow_run_id": "early-kill-test"})
    expected = demo_stack.psql("select count(*) from pg_class")
    directory = Path(tempfile.mkdtemp(prefix="rewind-early-kill-", dir="/tmp"))
    directory.chmod(0o755)
    scratch = ScratchCluster(pgbackrest, directory / "scratch", port=free_port())
    half = scratch.data_dir / "base" / "1"
    half.mkdir(parents=True)
    (half / "1259").write_bytes(b"\0" * 8192)  # what a killed restore left: a file, no PG_VERSION
    (scratch.directory / "tablespaces").mkdir()
    for path in (scratch.directory, *scratch.directory.rglob("*")):
        shutil.chown(path, "postgres", "postgres")  # as the restore, run as the cluster's OS user, left it
    try:
        scratch.restore(backup_set=pgbackrest.info().find_annotated("airflow_run_id", "early-kill-test").label)
        scratch.start()
        assert scratch.psql("select count(*) from pg_class") == expected
    finally:
        scratch.remove()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_restore_killed_midway_converges_when_retried(demo_stack, pitr):
    """What the restore task's retry does after a kill: --delta on a half-written data directory."""
    import shutil
    import tempfile
    from pathlib import Path

    from devstack.net import free_port
    from rewind.scratch import ScratchCluster

    fresh_ledger(demo_stack)
    demo_stack.psql("create table ballast as select g, repeat(md5(g::text), 8) as pad from generate_series(1, 300000) g")
    write(demo_stack, 1, 500)
    pgbackrest = demo_stack.pgbackrest()
    pgbackrest.backup("full", annotations={"airflow_run_id": "kill-test"})
    expected = demo_stack.psql("select count(*) || ' ' || md5(string_agg(id::text || status, ',' order by id)) from ledger_entry")

    directory = Path(tempfile.mkdtemp(prefix="rewind-kill-", dir="/tmp"))
    directory.chmod(0o755)
    killer = {"armed": True}

    def kill_once_copying(line: str) -> None:
        if killer["armed"] and "restore backup set" in line:
            killer["armed"] = False
            threading.Timer(0.2, scratch.pgbackrest.runner.terminate).start()

    from rewind.credentials import repository_secrets
    from rewind.pgbackrest.client import PgBackRest
    from rewind.runner import CommandRunner

    runner = CommandRunner(os_user="postgres", secrets=repository_secrets(demo_stack.cluster), line_logger=kill_once_copying)
    scratch = ScratchCluster(PgBackRest(demo_stack.cluster, runner), directory / "pg", port=free_port())
    try:
        with pytest.raises(Exception) as killed:
            scratch.restore(backup_set=pgbackrest.info().find_annotated("airflow_run_id", "kill-test").label)
        assert not killer["armed"], f"the restore was not killed midway: {killed.value}"
        scratch.restore(backup_set=pgbackrest.info().find_annotated("airflow_run_id", "kill-test").label)  # the retry
        scratch.start()
        assert scratch.psql("select count(*) || ' ' || md5(string_agg(id::text || status, ',' order by id)) from ledger_entry") == expected
    finally:
        scratch.remove()
        shutil.rmtree(directory, ignore_errors=True)
        demo_stack.psql("drop table ballast")


def test_a_two_phase_commit_is_found_by_the_finder_and_rewound_by_its_xid(demo_stack, pitr, approve_all):
    """PREPARE TRANSACTION / COMMIT PREPARED: the commit is a WAL record of xid 0 naming the prepared
    xid. Preflight's xid check, the finder and PostgreSQL's recovery target all read it as that
    transaction's commit (before, preflight refused the xid as not found in the archived WAL)."""
    from airflow.utils.state import DagRunState

    if demo_stack.psql("show max_prepared_transactions") == "0":
        demo_stack.psql("alter system set max_prepared_transactions = 5")  # kept: later restores need it too
        demo_stack.stop_postgres()
        demo_stack.start_postgres()
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "two-phase-base"})
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 40)
    start = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    demo_stack.psql("begin; update ledger_entry set status = 'void'; prepare transaction 'migration-42'")
    bad = demo_stack.psql("select transaction from pg_prepared_xacts where gid = 'migration-42'")
    demo_stack.psql("commit prepared 'migration-42'")
    write(demo_stack, 1001, 5)
    assert ledger(demo_stack) == (45, 40, 1005)

    finder = load_dags("rewind_find_target.py")["rewind_find_target__demo"]
    form = {"window_start": start, "window_end": "", "tables": ["ledger_entry"], "timeline": "current", "max_segments": 256}
    run = run_once(finder, run_conf=form)
    assert run.state == DagRunState.SUCCESS
    [ti] = [ti for ti in run.get_task_instances() if ti.task_id == "find_target"]
    found = ti.xcom_pull(task_ids="find_target", key="return_value")
    assert found["suspect"]["xid"] == int(bad), found
    assert found["suspect"]["tables"] == {"public.ledger_entry": {"inserted": 0, "updated": 40, "deleted": 0}}
    params = found["suspect"]["pitr_params"]
    assert params == {"target_type": "xid", "target": bad, "target_exclusive": True, "target_timeline": str(timeline(demo_stack))}

    assert_success(run_pitr(pitr, **params, validation_sql=[VOID_CHECK]))
    # The rewind stopped just before COMMIT PREPARED: the migration is prepared, not committed, in
    # doubt, and holds its locks until a DBA ends it (README "Known limits").
    assert demo_stack.psql("select gid from pg_prepared_xacts") == "migration-42"
    demo_stack.psql("rollback prepared 'migration-42'")
    assert ledger(demo_stack) == (40, 0, 40)
