"""Crashes in the production shape.

A database host's worker killed mid-backup (SIGKILL of the worker's process group and of everything
below it: Airflow's task runner has a process group of its own and Rewind's pgbackrest a session of
its own, so a kill of the worker's group alone would leave both running; a host crash, an OOM kill of
the service or `systemctl kill` of its cgroup leaves nothing): pgBackRest's lock dies with its
holder, Airflow fails the task once its heartbeat is missing (docker-compose's
task_instance_heartbeat_timeout), and the retry on the restarted worker takes the one backup of the
run without waiting on any lock.

Every Airflow process (API server, scheduler, DAG processor, triggerer, both workers and what they
run) killed while a PITR's restore runs, all restarted 10 s later: the restarted scheduler takes over
the dead one's tasks (orphaned_tasks_check_interval), fails the restore for its missing heartbeat,
and its retry (the PITR's retry_delay, 30 s) restores again (--delta) under the same change: the
rewind resumes within about a minute of the restart and ends exactly at its target.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from rewind.postgres import postmaster_pid
from tests.e2e_celery.conftest import backup_lock_file, flock_holders, pgbackrest_pids, utc, wait_for_command
from tests.e2e_celery.test_celery_pitr import assert_rewound_exactly, prepare_mistake

pytestmark = pytest.mark.e2e


def test_a_worker_killed_mid_backup_leaves_no_stale_lock_and_the_retry_takes_one_backup(shape):
    crm = shape.clusters["crm"]
    dag_id = "rewind_backup_full__crm"
    run_id = shape.trigger(dag_id)
    pid = wait_for_command("crm", "backup", containing=f"airflow_run_id={run_id}")
    lock = backup_lock_file(crm)
    deadline = time.monotonic() + 60
    while pid not in flock_holders(lock):  # mid-backup: pgBackRest holds its backup lock
        assert time.monotonic() < deadline, "pgbackrest backup never took its lock"
        time.sleep(0.01)

    killed_at = dt.datetime.now(dt.timezone.utc)
    killed = shape.airflow.kill_worker(crm.queue)
    assert pid in killed
    assert flock_holders(lock) == [] and not crm.pgbackrest().info().backup_lock_held  # no stale lock
    shape.airflow.start_worker(shape.airflow.worker(crm.queue))

    # Airflow notices the dead worker by its missing heartbeat: the try fails, up for retry.
    failed = shape.wait_for_task(dag_id, run_id, "backup", lambda ti: ti["state"] == "up_for_retry", timeout=180)
    noticed = utc(failed["end_date"]) - killed_at
    print(f"the dead worker's backup was failed for retry {noticed.total_seconds():.0f} s after the kill")
    assert noticed < dt.timedelta(seconds=60), noticed
    # The DAG's retry_delay is 5 minutes; the on-call's "Clear" starts the same next try now.
    cleared = shape.airflow.api(
        "POST",
        f"/dags/{dag_id}/clearTaskInstances",
        json={"dag_run_id": run_id, "task_ids": ["backup"], "only_failed": False, "include_downstream": True, "dry_run": False},
    )
    assert cleared.status_code == 200, cleared.text
    shape.wait_for_run(dag_id, run_id)

    tries = shape.tries(dag_id, run_id, "backup")
    assert [(t["try_number"], t["state"]) for t in tries][-1][1] == "success" and len(tries) >= 2, tries
    assert {(t["queue"], t["hostname"]) for t in tries} == {(crm.queue, crm.host.address)}
    retry_log = shape.task_log(dag_id, run_id, "backup")
    assert "backup lock held by another process" not in retry_log
    info = crm.pgbackrest().info()
    mine = [b for b in info.backups if b.annotations.get("airflow_run_id") == run_id]
    assert len(mine) == 1 and not mine[0].error and mine[0].type == "full", mine
    assert mine[0].annotations["airflow_try"] == str(tries[-1]["try_number"])  # the retry's, not a reused half
    assert not [b.label for b in info.backups if b.error]
    assert not info.backup_lock_held and flock_holders(lock) == []
    assert pgbackrest_pids("crm", "backup") == []


def test_every_airflow_process_killed_during_a_restore_resumes_within_a_minute_and_rewinds_exactly(shape):
    crm = shape.clusters["crm"]
    pitr = "rewind_pitr__crm"
    conf = prepare_mistake(crm, "e2e-celery-crash-base")
    run_id = shape.trigger(pitr, conf)
    pid = wait_for_command("crm", "restore")
    assert postmaster_pid(crm.cluster) is None  # stopped by this run: the restore is under way

    killed = shape.airflow.crash()
    assert pid in killed
    time.sleep(10)
    restarted_at = dt.datetime.now(dt.timezone.utc)
    shape.airflow.restart()

    resumed = shape.wait_for_task(
        pitr, run_id, "restore", lambda ti: ti["try_number"] >= 2 and ti["state"] in ("running", "success"), timeout=400, poll=1
    )
    resumed_after = utc(resumed["start_date"]) - restarted_at
    print(f"restore resumed {resumed_after.total_seconds():.0f} s after the restart")
    shape.wait_for_run(pitr, run_id, timeout=400)
    completed_after = utc(shape.airflow.api("GET", f"/dags/{pitr}/dagRuns/{run_id}").json()["end_date"]) - restarted_at
    print(f"rewind completed {completed_after.total_seconds():.0f} s after the restart")
    assert resumed_after < dt.timedelta(seconds=75), resumed_after

    assert_rewound_exactly(shape, crm, pitr, run_id)
    tries = shape.tries(pitr, run_id, "restore")
    assert [t["state"] for t in tries][-1] == "success" and len(tries) == 2, tries
    assert {t["hostname"] for t in tries} == {crm.host.address}
