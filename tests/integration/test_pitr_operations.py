"""The PITR operated like a month of production, on the real stack: the gate re-checked at the point
of no return (a sensor marked success by hand, a window that ended), a finished rewind whose run is
cleared, a restore that failed while S3 was down finished by a re-run of the same rewind, changes of
another cluster or already used, an approval that never comes, a weekly full and expire (and a
backup expired by hand) during the approval wait, data checks that try to do harm, a failed check
on a paused cluster, and routine work while a restore is in progress or a guard file is damaged."""

from __future__ import annotations

import datetime as dt
import os
import pwd
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rewind import guard as restore_guard
from rewind.pitr.journal import RunJournal
from rewind.postgres import postmaster_pid, psql_argv
from rewind.servicenow import sn_time
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
    notes,
    run_pitr,
    states,
    write,
)

pytestmark = pytest.mark.integration


def wait_for(predicate, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def in_background(work) -> dict:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # reported by the test, not lost in the thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def requested_change(servicenow, known: set[str]) -> dict | None:
    waiting = [c for c in client(servicenow).query("change_request", "approval=requested") if c["number"] not in known]
    return waiting[0] if waiting else None


# ---- the gate at the point of no return ---------------------------------------------------------
def test_a_sensor_marked_success_by_hand_does_not_open_the_gate(demo_stack, pitr, servicenow):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 30)
    pid = postmaster_pid(demo_stack.cluster)
    incidents_before = len(incidents_for(servicenow, "demo"))
    run = run_pitr(pitr, target_type="latest", mark_success_pattern="^wait_for_approval$")
    assert (states(run)["wait_for_approval"], states(run)["stop_restore_promote"], states(run)["full_backup_new_timeline"]) == (
        "success",
        "failed",
        "upstream_failed",
    )
    assert postmaster_pid(demo_stack.cluster) == pid and ledger(demo_stack) == (30, 0, 30)
    change = change_of(servicenow, run)
    assert (change["approval"], change["state"]) == ("requested", "-4")  # Assess, waiting: never moved to Implement
    assert any(
        "stop_postgres failed" in n and "waiting for approval" in n and "nothing was touched" in n for n in notes(servicenow, change)
    )
    assert restore_guard.read_guard(demo_stack.cluster) is None
    assert len(incidents_for(servicenow, "demo")) == incidents_before
    servicenow.reject(change["number"])  # leave no change waiting for other tests


def test_a_change_whose_window_ended_stops_nothing(demo_stack, pitr, servicenow):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 20)
    pid = postmaster_pid(demo_stack.cluster)
    now = dt.datetime.now(dt.timezone.utc)
    change = given_change(servicenow, start_date=sn_time(now - dt.timedelta(hours=2)), end_date=sn_time(now - dt.timedelta(minutes=1)))
    run = run_pitr(pitr, target_type="latest", change_number=change["number"], mark_success_pattern="^wait_for_approval$")
    assert states(run)["stop_restore_promote"] == "failed", states(run)
    assert postmaster_pid(demo_stack.cluster) == pid and ledger(demo_stack) == (20, 0, 20)
    assert any("its window ended" in n for n in notes(servicenow, change))
    assert client(servicenow).get("change_request", change["sys_id"])["state"] == "-2"


# ---- at most once -----------------------------------------------------------------------------
def test_a_finished_rewind_is_not_repeated_when_its_run_is_cleared(demo_stack, pitr, servicenow, approve_all, capfd):
    """dag.test() with the same logical date clears the run's task instances and runs them again:
    what "Clear" on a finished run does. The run already rewound the cluster, so it refuses."""
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 40)
    logical = dt.datetime.now(dt.timezone.utc)
    first = run_pitr(pitr, target_type="latest", logical_date=logical, run_after=logical)
    assert_success(first)
    write(demo_stack, 1_001, 5)  # work done after the rewind must survive its re-run
    pid = postmaster_pid(demo_stack.cluster)
    changes = len(client(servicenow).query("change_request", ""))
    capfd.readouterr()
    again = run_pitr(pitr, target_type="latest", logical_date=logical, run_after=logical)
    assert again.run_id == first.run_id
    assert states(again)["validate_params"] == "failed" and states(again)["stop_restore_promote"] == "upstream_failed", states(again)
    assert "this run already rewound cluster 'demo'" in capfd.readouterr().out
    assert postmaster_pid(demo_stack.cluster) == pid and ledger(demo_stack) == (45, 0, 1_005)
    assert len(client(servicenow).query("change_request", "")) == changes


def test_a_restore_that_failed_while_s3_was_down_finishes_the_same_rewind_when_its_run_is_cleared(
    demo_stack, pitr, servicenow, approve_all
):
    """S3 goes away right after PostgreSQL stopped: the restore fails, PostgreSQL stays down, the
    change stays in Implement with a note saying so. The on-call clears the run once S3 is back: the
    same rewind finishes under the same change (no second stop, no second change) and is exact."""
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 60)
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.2)
    demo_stack.psql("update ledger_entry set status = 'void'")
    logical = dt.datetime.now(dt.timezone.utc)
    run_id = f"manual__{logical.isoformat()}"

    def s3_down_once_postgres_stopped():
        # The restore follows the stop at once, in the same task: S3 goes the moment PostgreSQL is gone.
        deadline = time.monotonic() + 120
        while postmaster_pid(demo_stack.cluster) is not None:
            if time.monotonic() > deadline:
                raise AssertionError("PostgreSQL was never stopped")
            time.sleep(0.005)
        demo_stack.s3.stop_tls()
        # Then a 1 s io-timeout instead of 5 s (the restore retries the refused connection until it
        # runs out: 41 s on pgBackRest 2.45). S3 goes first, so the race with the restore is the
        # same as ever; a restore that read the config before this only takes longer to fail.
        demo_stack.use_pgbackrest_settings({"io_timeout_s": 1})

    outage = in_background(s3_down_once_postgres_stopped)
    try:
        failed = run_pitr(
            pitr, target_type="time", target=target.isoformat(), validation_sql=[VOID_CHECK], logical_date=logical, run_after=logical
        )
    finally:
        outage["thread"].join(timeout=130)
        demo_stack.use_pgbackrest_settings(None)
        demo_stack.s3.start_tls()
    assert "error" not in outage, outage
    assert failed.run_id == run_id and states(failed)["stop_restore_promote"] == "failed", states(failed)
    assert postmaster_pid(demo_stack.cluster) is None
    change = change_of(servicenow, failed)
    assert change["state"] == "-1"
    [note] = [n for n in notes(servicenow, change) if "step restore failed" in n]
    assert "PostgreSQL stopped at" in note and "no new full backup was taken" in note and "PostgreSQL is stopped" in note

    again = run_pitr(
        pitr, target_type="time", target=target.isoformat(), validation_sql=[VOID_CHECK], logical_date=logical, run_after=logical
    )
    assert_success(again)
    assert ledger(demo_stack) == (60, 0, 60)
    assert [c["number"] for c in client(servicenow).query("change_request", f"correlation_id=rewind:{again.dag_id}:{run_id}")] == [
        change["number"]
    ]
    assert client(servicenow).get("change_request", change["sys_id"])["state"] == "3"
    journal = RunJournal.load(demo_stack.cluster, run_id)
    assert journal.at("stopped") < journal.at("restore_started") and journal.at("closed")


def test_a_change_that_refuses_to_close_is_told_what_the_run_really_did(demo_stack, pitr, servicenow, approve_all):
    """The rewind and its new full backup are done when a data policy refuses the close: the note
    on the change must say so (it once said "no new full backup was taken" after any failure)."""
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 15)
    servicenow.state.mandatory_on_close = ["u_post_implementation_review"]
    try:
        run = run_pitr(pitr, target_type="latest")
    finally:
        servicenow.state.mandatory_on_close = []
    assert states(run)["close_change"] == "failed" and states(run)["full_backup_new_timeline"] == "success", states(run)
    label = demo_stack.pgbackrest().info().find_annotated("airflow_run_id", run.run_id).label
    [note] = [n for n in notes(servicenow, change_of(servicenow, run)) if "step close_change failed" in n]
    assert "Data Policy Exception" in note and "PostgreSQL started on the restored data" in note and "promoted at" in note
    assert f"new full backup {label} exists" in note and "no new full backup" not in note


# ---- which change may drive a PITR --------------------------------------------------------------
@pytest.mark.parametrize(
    "fields, message",
    [
        ({"cmdb_ci": "crm"}, "is for configuration item crm, not cluster demo"),
        (
            {"correlation_id": "rewind:rewind_pitr__demo:manual__2026-11-01T02:14:00+00:00"},
            "already drives rewind:rewind_pitr__demo:manual__2026-11-01",
        ),
    ],
)
def test_a_change_of_another_cluster_or_already_used_is_refused_before_anything(demo_stack, pitr, servicenow, capfd, fields, message):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 10)
    pid = postmaster_pid(demo_stack.cluster)
    change = given_change(servicenow, **fields)
    incidents_before = len(incidents_for(servicenow, "demo"))
    run = run_pitr(pitr, target_type="latest", change_number=change["number"])
    assert states(run)["validate_params"] == "failed", states(run)
    assert message in capfd.readouterr().out
    assert postmaster_pid(demo_stack.cluster) == pid
    assert notes(servicenow, change) == []  # not even a note: the change is not this run's
    assert len(incidents_for(servicenow, "demo")) == incidents_before


def test_an_approval_that_never_comes_cancels_the_change(demo_stack, pitr, servicenow):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 10)
    pid = postmaster_pid(demo_stack.cluster)
    incidents_before = len(incidents_for(servicenow, "demo"))
    gate = pitr.get_task("wait_for_approval")
    gate.timeout = 3
    try:
        run = run_pitr(pitr, target_type="latest")
    finally:
        gate.timeout = 120
    assert states(run)["wait_for_approval"] == "failed", states(run)
    change = change_of(servicenow, run)
    assert change["state"] == "4"  # Canceled
    assert any("no approval within the wait" in n and "nothing was touched" in n for n in notes(servicenow, change))
    assert postmaster_pid(demo_stack.cluster) == pid and restore_guard.read_guard(demo_stack.cluster) is None
    assert len(incidents_for(servicenow, "demo")) == incidents_before


# ---- the approval wait and the plan -------------------------------------------------------------
def test_weekly_fulls_and_expire_during_the_approval_wait_keep_the_plan(demo_stack, pitr, servicenow):
    """Retention keeps 4 fulls; four new fulls and the expire after them run while the change waits.
    Without the PITR's hold the planned backup would be gone and PostgreSQL stopped on a plan that
    no longer exists."""
    from rewind.backup import take_backup
    from rewind.retention import expire_with_holds

    fresh_ledger(demo_stack)
    write(demo_stack, 1, 70)
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "planned-full"})
    planned = demo_stack.pgbackrest().info().find_annotated("airflow_run_id", "planned-full").label
    write(demo_stack, 71, 30)
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.2)
    demo_stack.psql("update ledger_entry set status = 'void'")
    known = {c["number"] for c in client(servicenow).query("change_request", "")}
    expired: dict = {}

    def weekly_full_then_approve():
        change = wait_for(lambda: requested_change(servicenow, known), timeout=120, what="the change")
        pgbackrest = demo_stack.pgbackrest()
        for number in range(4):
            take_backup(pgbackrest, "full", annotations={"airflow_run_id": f"weekly-{number}"}, log=lambda _m: None)
        expired.update(expire_with_holds(pgbackrest, log=lambda _m: None))
        servicenow.approve(change["number"])

    approver = in_background(weekly_full_then_approve)
    run = run_pitr(pitr, target_type="time", target=target.isoformat(), validation_sql=[VOID_CHECK])
    approver["thread"].join(timeout=10)
    assert "error" not in approver, approver
    assert planned not in expired["expired"] and planned in {label for labels in expired["held"].values() for label in labels}
    assert_success(run)
    assert ledger(demo_stack) == (100, 0, 100)
    assert RunJournal.load(demo_stack.cluster, run.run_id).data["plan"]["backup_set"] == planned


def test_a_backup_expired_by_hand_during_the_wait_is_replanned_before_stopping(demo_stack, pitr, servicenow):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 50)
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "to-be-expired"})
    planned = demo_stack.pgbackrest().info().find_annotated("airflow_run_id", "to-be-expired").label
    write(demo_stack, 51, 10)
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.2)
    demo_stack.psql("update ledger_entry set status = 'void'")
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "after-target"})  # so the planned set is not the latest
    known = {c["number"] for c in client(servicenow).query("change_request", "")}

    def expire_by_hand_then_approve():
        change = wait_for(lambda: requested_change(servicenow, known), timeout=120, what="the change")
        pgbackrest = demo_stack.pgbackrest()
        argv = pgbackrest.commands.expire()
        argv.insert(-1, f"--set={planned}")  # a DBA's manual expire: pgBackRest's own, no hold applies
        pgbackrest.run(argv)
        servicenow.approve(change["number"])
        return change

    approver = in_background(expire_by_hand_then_approve)
    run = run_pitr(pitr, target_type="time", target=target.isoformat(), validation_sql=[VOID_CHECK])
    approver["thread"].join(timeout=10)
    assert "error" not in approver, approver
    assert planned not in {b.label for b in demo_stack.pgbackrest().info().backup}
    assert_success(run)
    assert ledger(demo_stack) == (60, 0, 60)
    plan = RunJournal.load(demo_stack.cluster, run.run_id).data["plan"]
    assert plan["backup_set"] != planned
    assert any(f"re-planned before stopping: backup {planned}" in n for n in notes(servicenow, change_of(servicenow, run)))


# ---- data checks ----------------------------------------------------------------------------------
def test_data_checks_cannot_write_reach_secrets_or_touch_other_sessions(demo_stack, pitr, servicenow, approve_all, capfd):
    """Each of these worked when checks ran as the superuser (and the cipher passphrase, which the
    postmaster's environment holds, came back in the failure, the XCom, the change and the incident)."""
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 25)
    # A secret the task knows (the repository's S3 secret key) sitting in a table a check may read:
    # the answer is masked wherever it goes. (It is put there by hand, never sent in the run's conf.)
    secret = demo_stack.s3.secret_key
    demo_stack.psql(f"drop table if exists planted; create table planted as select '{secret}'::text as v")
    logical = dt.datetime.now(dt.timezone.utc)
    run_id = f"manual__{logical.isoformat()}"
    sessions: list[subprocess.Popen] = []

    def another_session_once_restored():
        # PostgreSQL restarts during the rewind: the other session must start on the restored cluster
        wait_for(lambda: RunJournal.load(demo_stack.cluster, run_id).at("at_target"), timeout=120, what="the target")
        sessions.append(
            subprocess.Popen(
                ["runuser", "-u", "postgres", "--", *psql_argv(demo_stack.cluster, "select pg_sleep(120)")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    checks = [
        {"sql": "select pg_sleep(3)", "expect": ""},  # lets the other session connect first
        {"sql": "select pg_read_file('/proc/self/environ')", "expect": "x"},
        {"sql": "copy (select 1) to program 'env'", "expect": "x"},
        {"sql": "select lo_import('/etc/hostname')", "expect": "x"},
        {"sql": "do 'begin insert into ledger_entry values (999999, 1, ''x''); end'", "expect": "x"},
        {
            "sql": "select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = 'postgres' and pid <> pg_backend_pid()",
            "expect": "1",
        },
        {"sql": "select v from planted", "expect": "x"},  # a secret in an answer is masked wherever it goes
        {"sql": "select repeat('y', 100000)", "expect": "x"},  # and an answer is bounded
    ]
    helper = in_background(another_session_once_restored)
    try:
        run = run_pitr(pitr, target_type="latest", validation_sql=checks, logical_date=logical, run_after=logical)
        output = capfd.readouterr().out
        helper["thread"].join(timeout=10)
        assert "error" not in helper, helper
        assert states(run)["stop_restore_promote"] == "failed", states(run)
        [other] = sessions
        assert other.poll() is None, "a data check terminated another session"
    finally:
        for session in sessions:
            session.kill()
    assert demo_stack.psql("select count(*) from ledger_entry where id = 999999") == "0"
    results = [line for line in output.splitlines() if "data check " in line and ("FAILED" in line or ": ok:" in line)]
    assert len(results) == len(checks), results
    assert ": ok:" in results[0] and all("FAILED" in line for line in results[1:]), results
    assert "permission denied for function pg_read_file" in results[1], results[1]
    # PostgreSQL 15 and 17 word the same refusal differently
    assert any(
        refusal in results[2]
        for refusal in (
            "must be superuser or have privileges of the pg_execute_server_program role",
            "permission denied to COPY to or from an external program",
        )
    ), results[2]
    assert "permission denied for function lo_import" in results[3], results[3]
    assert "read-only transaction" in results[4] or "permission denied" in results[4], results[4]
    assert "must be a superuser to terminate superuser process" in results[5] or "permission denied to terminate process" in results[5], (
        results[5]
    )
    assert "'***'" in results[6] and "(100000 chars)" in results[7]
    change = change_of(servicenow, run)
    incidents = incidents_for(servicenow, "demo")
    written = notes(servicenow, change) + [i.get("description", "") for i in incidents]
    written += [n for i in incidents for n in client(servicenow).work_notes("incident", i["sys_id"])]
    leaks = [line.replace(secret, "<SECRET>")[:300] for text in [output, *written] for line in text.splitlines() if secret in line]
    assert not leaks, leaks
    cipher_leaks = [line[:200] for text in [output, *written] for line in text.splitlines() if demo_stack.cipher_pass in line]
    assert not cipher_leaks, "the cipher passphrase (postmaster environment) reached the output"
    assert all(len(text) <= 4000 for text in notes(servicenow, change))
    assert ledger(demo_stack) == (25, 0, 25)  # restored to latest and promoted: nothing lost
    demo_stack.psql("drop table planted")


def test_a_failed_check_leaves_the_cluster_paused_read_only_and_a_new_pitr_takes_over(demo_stack, pitr, servicenow, approve_all):
    """target_action pause (the default): the checks run on the paused cluster; a failed check
    leaves it paused, read-only, not promoted, says so on the change; the README's next step (a new
    PITR, here to latest) takes over the guard and gives back everything (nothing lost)."""
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 40)
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.2)
    demo_stack.psql("update ledger_entry set status = 'void'")
    write(demo_stack, 1_001, 10)
    before = ledger(demo_stack)
    run = run_pitr(
        pitr, target_type="time", target=target.isoformat(), validation_sql=[{"sql": "select count(*) from ledger_entry", "expect": 999}]
    )
    assert (states(run)["stop_restore_promote"], states(run)["full_backup_new_timeline"]) == ("failed", "upstream_failed"), states(run)
    assert demo_stack.psql("select pg_is_in_recovery()::text || ' ' || pg_get_wal_replay_pause_state()") == "true paused"
    assert ledger(demo_stack) == (40, 0, 40)
    with pytest.raises(Exception, match="read-only transaction"):
        demo_stack.psql("insert into ledger_entry values (5, 1, 'x')")
    change = change_of(servicenow, run)
    assert "recovery pauses read-only at the target" in change["description"]
    [note] = [n for n in notes(servicenow, change) if "step validate_data failed" in n]
    assert "paused at the target, read-only and not promoted" in note and "target_type latest" in note
    assert restore_guard.read_guard(demo_stack.cluster).phase == "failed"

    back = run_pitr(pitr, target_type="latest", validation_sql=[{**VOID_CHECK, "expect": 40}])
    assert_success(back)
    assert ledger(demo_stack) == before
    assert restore_guard.read_guard(demo_stack.cluster) is None


# ---- routine work and the restore guard ---------------------------------------------------------------
def test_routine_work_skips_while_a_restore_is_in_progress(demo_stack, airflow_db, servicenow):
    """Backups, verify and the watchdog report "restore in progress": skipped, no failure, no incident."""
    cluster = demo_stack.cluster
    restore_guard.claim(cluster, dag_id="rewind_pitr__demo", run_id="restoring-now", run_state=lambda *_: "running")
    restore_guard.begin_rewind(cluster, "restoring-now", change="CHG0000001")
    incidents_before = len(incidents_for(servicenow, "demo"))
    try:
        for dag_file, dag_id in (
            ("rewind_backup.py", "rewind_backup_incr__demo"),
            ("rewind_health.py", "rewind_health__demo"),
            ("rewind_verify.py", "rewind_verify__demo"),
        ):
            run = run_once(load_dags(dag_file)[dag_id])
            assert run.state == "success" and set(states(run).values()) == {"skipped"}, (dag_id, states(run))
    finally:
        restore_guard.clear(cluster)
    assert len(incidents_for(servicenow, "demo")) == incidents_before


def test_a_damaged_guard_file_is_named_and_rewind_guard_clear_fixes_it(demo_stack, airflow_db, servicenow, capfd):
    from rewind.cli import main as rewind_cli

    path = restore_guard.guard_path(demo_stack.cluster)
    assert not str(path).startswith("/tmp/pgbackrest") and path.parent == Path(demo_stack.cluster.state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"run_id": "half-writ')
    capfd.readouterr()
    run = run_once(load_dags()["rewind_backup_incr__demo"])
    assert states(run)["preflight"] == "failed"
    assert f"restore guard {path} is damaged" in capfd.readouterr().out
    health = run_once(load_dags("rewind_health.py")["rewind_health__demo"])
    assert health.state == "success"
    assert any(i["state"] == "1" for i in incidents_for(servicenow, "demo", "restore_guard"))
    assert rewind_cli(["--inventory", str(demo_stack.inventory_path), "guard", "clear", "--cluster", "demo"]) == 0
    assert not path.exists()
    assert run_once(load_dags()["rewind_backup_incr__demo"]).state == "success"
    run_once(load_dags("rewind_health.py")["rewind_health__demo"])
    assert not any(i["state"] == "1" for i in incidents_for(servicenow, "demo", "restore_guard"))


# ---- who asked, who approved ----------------------------------------------------------------------
def test_the_change_names_the_requester_and_its_close_the_approver(demo_stack, pitr, servicenow, approve_all):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 5)
    run = run_pitr(pitr, target_type="latest")
    assert_success(run)
    change = change_of(servicenow, run)
    dba, cab = servicenow.state.user("dba.oncall"), servicenow.state.group("Database CAB")
    assert (change["requested_by"], change["assignment_group"]) == (dba["sys_id"], cab["sys_id"])
    person = "DBA On-Call <dba.oncall@example.com> (Airflow user dag_test; MFA asserted by the IdP (amr: pwd, otp))"
    assert f"Requested by: {person}" in change["description"] and f"Requested by: {person}" in change["close_notes"]
    assert "Approved by: CAB Approver <cab.approver@example.com>" in change["close_notes"]
    assert RunJournal.load(demo_stack.cluster, run.run_id).data["requester"]["amr"] == ["pwd", "otp"]  # the run's own record


@pytest.mark.parametrize(
    "approver, words",
    [("dba.oncall", "the requester cannot approve their own change"), ("ops.outsider", "approved by someone outside its approval group")],
    ids=["the requester", "someone outside the approval group"],
)
def test_an_approval_by_the_requester_or_an_outsider_stops_nothing(demo_stack, pitr, servicenow, approver, words):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 7)
    pid = postmaster_pid(demo_stack.cluster)
    known = {c["number"] for c in client(servicenow).query("change_request", "")}

    def approve_as():
        change = wait_for(lambda: requested_change(servicenow, known), timeout=120, what="the change")
        servicenow.approve(change["number"], by=approver)

    approval = in_background(approve_as)
    run = run_pitr(pitr, target_type="latest")
    approval["thread"].join(timeout=10)
    assert "error" not in approval, approval
    assert (states(run)["wait_for_approval"], states(run)["stop_restore_promote"]) == ("success", "failed"), states(run)
    assert postmaster_pid(demo_stack.cluster) == pid and ledger(demo_stack) == (7, 0, 7)
    assert any("stop_postgres refused" in n and words in n for n in notes(servicenow, change_of(servicenow, run)))


def test_a_run_whose_requester_servicenow_does_not_know_is_refused_before_anything(demo_stack, pitr, servicenow, monkeypatch, capfd):
    monkeypatch.setenv("AIRFLOW_VAR_REWIND_IDENTITY__DAG_TEST", '{"email": "stranger@example.com", "amr": ["pwd"]}')
    pid, changes = postmaster_pid(demo_stack.cluster), len(client(servicenow).query("change_request", ""))
    run = run_pitr(pitr, target_type="latest")
    assert states(run)["validate_params"] == "failed", states(run)
    assert "the run was triggered by 'dag_test' <stranger@example.com>, who is not a ServiceNow user" in capfd.readouterr().out
    assert postmaster_pid(demo_stack.cluster) == pid and len(client(servicenow).query("change_request", "")) == changes


def test_a_cluster_found_stopped_with_wal_never_archived_has_it_archived_before_the_restore(demo_stack, pitr, servicenow, approve_all):
    """Issue: a PITR started while PostgreSQL was already stopped restored over pg_wal, destroying
    finished segments its archive_command had never archived (and with them every commit they held:
    no abort back to latest could reach them)."""
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 10)
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "left-behind-base"})
    target = demo_stack.psql("begin; insert into ledger_entry values (11, 1, 'posted'); select pg_current_xact_id(); commit;").split()[-1]
    demo_stack.psql("select pg_switch_wal()")  # the target's commit reaches the repository
    wait_for(
        lambda: demo_stack.psql("select count(*) from pg_ls_archive_statusdir() where name like '%.ready'") == "0",
        timeout=30,
        what="archiving",
    )
    # archiving breaks (the repository unreachable, say); the cluster goes on, then crashes
    demo_stack.psql("alter system set archive_command = '/bin/false'")
    demo_stack.psql("select pg_reload_conf()")
    write(demo_stack, 100, 50)
    unarchived = [demo_stack.psql("select pg_walfile_name(pg_switch_wal())")]
    write(demo_stack, 200, 50)
    unarchived.append(demo_stack.psql("select pg_walfile_name(pg_switch_wal())"))
    demo_stack.stop_postgres(mode="immediate")
    auto_conf = demo_stack.data_dir / "postgresql.auto.conf"
    auto_conf.write_text("".join(line for line in auto_conf.read_text().splitlines(True) if "archive_command" not in line))
    ready = sorted(p.name for p in (demo_stack.data_dir / "pg_wal" / "archive_status").glob("*.ready"))
    assert [f"{name}.ready" for name in unarchived] == [r for r in ready if r.removesuffix(".ready") in unarchived]

    assert_success(run_pitr(pitr, target_type="xid", target=target, target_exclusive=False))
    assert ledger(demo_stack) == (11, 0, 11)
    # every segment the crash left behind is in the repository: the rows after the target can still be recovered
    fetched = demo_stack.base / "fetched"
    fetched.mkdir(exist_ok=True)
    user = pwd.getpwnam(demo_stack.os_user)
    os.chown(fetched, user.pw_uid, user.pw_gid)  # archive-get writes as the cluster's OS user
    for name in unarchived:
        demo_stack.pgbackrest().archive_get(name, str(fetched / name))
        assert (fetched / name).stat().st_size == 16 * 1024 * 1024
