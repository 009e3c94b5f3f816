"""The production shape under work and crashes (conftest: two database hosts, each its own network
namespace, PostgreSQL cluster and Celery worker on its queue; the Airflow components with the
CeleryExecutor, Redis and a PostgreSQL metadata database). Three tests, each several of the issue's
points on one run, so the stack's slow parts (full backups, a PITR) are paid once:

1. Both clusters' full backups, and crm's worker SIGKILLed mid-backup (its process group and
   everything below it: Airflow's task runner has a process group of its own and Rewind's pgbackrest
   a session of its own, so a kill of the worker's group alone would leave both running; a host
   crash, an OOM kill of the service or `systemctl kill` of its cgroup leaves nothing): every try of
   every task ran on its cluster's host's worker; pgBackRest's lock died with its holder; Airflow
   failed the try within a minute (docker-compose's task_instance_heartbeat_timeout), and the retry
   on the restarted worker took the run's one backup without waiting on any lock.

2. A PITR of ledger (host A) with every Airflow process (API server, scheduler, DAG processor,
   triggerer, both workers and what they run) killed while its restore runs, restarted 10 s later
   in the worst order: everything but the API server, which is held back until a retry of the
   downtime task has run without it and failed. The restarted scheduler takes over the dead one's
   tasks (orphaned_tasks_check_interval), fails the restore for its missing heartbeat; the tries
   that cannot reach the API server fail; the next one (the PITR's retries, sized for an outage of
   Airflow itself) restores again under the same change within a minute of the API server's
   return; the rewind ends exactly at its target. crm's (host B) backups are triggered one after
   the other meanwhile. Every PITR step ran on ledger's host; crm's backups ran on crm's host and
   succeeded while ledger was stopped, restored and rewound (ledger's restore guard is not crm's),
   and crm's PostgreSQL was never touched.

3. The same crash in clone mode, during the clone's restore, everything restarted at once:
   production never stopped by it and serving, the retry resumes the clone within a minute, the
   cutover puts the rewound directory in place (the restart in the other order is test 2's).
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from rewind.pitr.clone import clone_paths
from rewind.postgres import postmaster_pid
from rewind.servicenow import Auth, ServiceNowClient
from tests.e2e_celery.conftest import (
    backup_lock_file,
    flock_holders,
    host_netns,
    netns_of,
    pgbackrest_pids,
    utc,
    wait_for_command,
)

pytestmark = pytest.mark.e2e

VOID_CHECK = [{"sql": "select count(*) from ledger_entry where status = 'void'", "expect": 0}]


def assert_placed_on_its_host(shape, name: str, dag_id: str, run_id: str) -> None:
    """Every try of every task of the run that ran ran on the cluster's queue, on its host's worker
    (a task instance's hostname is its worker's address: each host has its own)."""
    host = shape.host(name)
    for task_id in shape.task_instances(dag_id, run_id):
        for ti in shape.tries(dag_id, run_id, task_id):
            if ti["start_date"] is None:  # a try that never ran (Clear archives the downstream's too)
                continue
            assert (ti["queue"], ti["hostname"]) == (shape.queues[name], host.address), (dag_id, task_id, ti)


def test_backups_run_on_their_hosts_and_a_worker_killed_mid_backup_leaves_no_stale_lock(shape):
    crm = shape.clusters["crm"]
    runs = {name: shape.trigger(f"rewind_backup_full__{name}") for name in shape.clusters}
    dag_id, run_id = "rewind_backup_full__crm", runs["crm"]
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
    # The backup DAGs' retry_delay is 5 minutes; the on-call's "Clear" starts the same next try now.
    cleared = shape.airflow.api(
        "POST",
        f"/dags/{dag_id}/clearTaskInstances",
        json={"dag_run_id": run_id, "task_ids": ["backup"], "only_failed": False, "include_downstream": True, "dry_run": False},
    )
    assert cleared.status_code == 200, cleared.text

    for name, run in runs.items():
        full = f"rewind_backup_full__{name}"
        shape.wait_for_run(full, run)
        assert {t: ti["state"] for t, ti in shape.task_instances(full, run).items()} == dict.fromkeys(
            ("preflight", "backup", "expire"), "success"
        )
        assert_placed_on_its_host(shape, name, full, run)
        stack = shape.clusters[name]
        mine = [b for b in stack.pgbackrest().info().backups if b.annotations.get("airflow_run_id") == run]
        assert [(b.type, bool(b.error), b.annotations["airflow_dag_id"]) for b in mine] == [("full", False, full)], mine
        # the cluster itself runs on that host: its postmaster is in the host's network namespace
        assert netns_of(postmaster_pid(stack.cluster)) == host_netns(stack.host)

    tries = shape.tries(dag_id, run_id, "backup")
    assert len(tries) >= 2 and tries[-1]["state"] == "success", tries
    assert "backup lock held by another process" not in shape.task_log(dag_id, run_id, "backup")
    info = crm.pgbackrest().info()
    [taken] = [b for b in info.backups if b.annotations.get("airflow_run_id") == run_id]
    assert taken.annotations["airflow_try"] == str(tries[-1]["try_number"])  # the retry's, not a reused half
    assert not [b.label for b in info.backups if b.error]
    assert not info.backup_lock_held and flock_holders(lock) == [] and pgbackrest_pids("crm", "backup") == []
    # the worker of each host is the one that ran them (Celery hostname <queue>@<host>)
    for worker in shape.airflow.workers:
        assert f"{worker.celery_hostname} ready." in worker.log_file.read_text()


def prepare_mistake(stack) -> dict:
    """75 posted entries, then a mistake voiding all of them: the PITR's request to go back to just
    before the mistake (from the cluster's last full backup, taken here if it has none)."""
    if not any(b.type == "full" and not b.error for b in stack.pgbackrest().info().backups):
        stack.pgbackrest().backup("full", annotations={"airflow_run_id": "e2e-celery-pitr-base"})
    stack.psql("drop table if exists ledger_entry")
    stack.psql("create table ledger_entry (id bigint primary key, status text)")
    stack.psql("insert into ledger_entry select g, 'posted' from generate_series(1, 75) g")
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    time.sleep(1.2)
    stack.psql("update ledger_entry set status = 'void'")
    return {
        "target_type": "time",
        "target": target.strftime("%Y-%m-%d %H:%M:%S+00"),
        "validation_sql": VOID_CHECK,
        "reason": "e2e celery: a migration voided the ledger",
    }


def wait_for_a_failed_retry(shape, dag_id: str, run_id: str, task_id: str = "stop_restore_promote", timeout: float = 300) -> int:
    """Until a retry of the task (a try after the crash's) has failed, read from the metadata
    database (the API server is down); returns that try's number."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        [seen] = shape.metadata_db.query(
            "select try_number, state from task_instance where dag_id = %s and run_id = %s and task_id = %s", dag_id, run_id, task_id
        )
        if seen[0] >= 2 and seen[1] == "up_for_retry":
            return seen[0]
        time.sleep(1)
    raise AssertionError(f"no retry of {task_id} failed without the API server within {timeout:.0f} s: (try, state) {seen}")


def test_a_rewind_of_ledger_resumes_after_every_airflow_process_is_killed_while_crm_keeps_backing_up(shape):
    ledger, crm = shape.clusters["ledger"], shape.clusters["crm"]
    pitr, incr = "rewind_pitr__ledger", "rewind_backup_incr__crm"
    conf = prepare_mistake(ledger)
    crm_postmaster = postmaster_pid(crm.cluster)
    shape.airflow.wait_for_dag(incr)

    run_id = shape.trigger(pitr, conf)
    restore_pid = wait_for_command("ledger", "restore")
    assert postmaster_pid(ledger.cluster) is None  # stopped by this run: the restore is under way
    killed = shape.airflow.crash()
    assert restore_pid in killed and pgbackrest_pids("ledger", "restore") == []
    time.sleep(10)
    # Restarted in the order that failed before PITR steps had their retries sized for it: the
    # workers, scheduler, DAG processor and triggerer first, the API server held back until a try
    # of the downtime task has run and failed without it (read from the metadata database).
    failed_without_api_server = []
    shape.airflow.restart(api_server_after=lambda: failed_without_api_server.append(wait_for_a_failed_retry(shape, pitr, run_id)))
    api_server_up_at = dt.datetime.now(dt.timezone.utc)

    crm_runs = []
    while shape.airflow.api("GET", f"/dags/{pitr}/dagRuns/{run_id}").json()["state"] not in ("success", "failed"):
        crm_runs.append(shape.trigger(incr))
        shape.wait_for_run(incr, crm_runs[-1])
    shape.wait_for_run(pitr, run_id, timeout=400)

    # resumed within a minute of the API server's return: a later try of the downtime task
    # (stop_restore_promote, whose restore step the crash cut; it does not stop again and restores
    # with --delta), on ledger's host; the crash's try and the ones without the API server failed
    restores = shape.tries(pitr, run_id, "stop_restore_promote")
    [failed_try] = failed_without_api_server
    assert restores[-1]["state"] == "success" and restores[-1]["try_number"] > failed_try >= 2, (failed_try, restores)
    assert all(r["state"] == "failed" for r in restores[:-1]), restores
    resumed_after = utc(restores[-1]["start_date"]) - api_server_up_at
    completed_after = utc(shape.airflow.api("GET", f"/dags/{pitr}/dagRuns/{run_id}").json()["end_date"]) - api_server_up_at
    print(
        f"{failed_try - 1} tr{'y' if failed_try == 2 else 'ies'} failed without the API server; restore resumed "
        f"{resumed_after.total_seconds():.0f} s, rewind completed {completed_after.total_seconds():.0f} s after it was back"
    )
    assert resumed_after < dt.timedelta(seconds=60), resumed_after
    assert_placed_on_its_host(shape, "ledger", pitr, run_id)

    # rewound exactly: the state at the target, one change closed successful, one new full backup
    assert ledger.psql("select count(*) || ' ' || count(*) filter (where status = 'void') from ledger_entry") == "75 0"
    sn = ServiceNowClient(shape.servicenow.url, Auth("basic", shape.servicenow.state.username, shape.servicenow.state.password))
    [change] = sn.query("change_request", f"correlation_id=rewind:{pitr}:{run_id}")
    assert (change["state"], change["close_code"]) == ("3", "successful")
    backups = [b for b in ledger.pgbackrest().info().backups if b.annotations.get("airflow_run_id") == run_id]
    assert [(b.type, b.annotations.get("rewind_change")) for b in backups] == [("full", change["number"])]

    # crm's backups ran on crm's host, and succeeded while ledger was stopped, restored and rewound
    tis = shape.task_instances(pitr, run_id)
    # from the approval (the downtime task started right after; its start_date is its last try's, after
    # the crash) to the guard's release
    rewind_window = (utc(tis["wait_for_approval"]["end_date"]), utc(tis["release_restore_guard"]["end_date"]))
    assert {r["dag_run_id"] for r in shape.airflow.api("GET", f"/dags/{incr}/dagRuns").json()["dag_runs"]} == set(crm_runs)
    during = []
    for crm_run in crm_runs:
        assert_placed_on_its_host(shape, "crm", incr, crm_run)
        backup = shape.task_instances(incr, crm_run)["backup"]
        assert backup["state"] == "success", backup
        assert crm.pgbackrest().info().find_annotated("airflow_run_id", crm_run) is not None, crm_run
        if rewind_window[0] <= utc(backup["start_date"]) and utc(backup["end_date"]) <= rewind_window[1]:
            during.append(crm_run)
    assert during, f"no crm backup ran while ledger was being rewound {rewind_window}: {crm_runs}"
    assert postmaster_pid(crm.cluster) == crm_postmaster


def test_a_clone_mode_rewind_of_ledger_killed_during_the_clone_restore_resumes_and_production_serves_until_the_cutover(shape):
    """3. The same crash in clone mode (the default): every Airflow process killed while the clone's
    restore runs beside production, all restarted 10 s later. Production was never stopped by the
    crash and serves reads and writes meanwhile; the retry restores into the same clone directory
    (--delta) under the same change within a minute of the restart; the cutover puts the rewound
    directory in place and keeps production's, stopped, beside it."""
    ledger = shape.clusters["ledger"]
    pitr = "rewind_pitr__ledger"
    conf = {**prepare_mistake(ledger), "mode": "clone"}
    production = postmaster_pid(ledger.cluster)

    run_id = shape.trigger(pitr, conf)
    paths = clone_paths(ledger.cluster, run_id)
    restore_pid = wait_for_command("ledger", "restore")
    deadline = time.monotonic() + 2  # preferably once the restore has begun writing the clone (its retry reuses it)
    while not paths.clone_dir.is_dir() and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = shape.airflow.crash()
    assert restore_pid in killed and pgbackrest_pids("ledger", "restore") == []
    print(f"crashed with the clone's directory {'half-restored' if paths.clone_dir.is_dir() else 'not written yet'}")
    # production untouched by the crash: the same postmaster, serving reads and writes
    assert postmaster_pid(ledger.cluster) == production
    ledger.psql(
        "create table if not exists written_while_airflow_was_down (at timestamptz); insert into written_while_airflow_was_down values (now())"
    )
    time.sleep(10)
    restarted_at = dt.datetime.now(dt.timezone.utc)
    shape.airflow.restart()
    shape.wait_for_run(pitr, run_id, timeout=400)

    restores = shape.tries(pitr, run_id, "stop_restore_promote")
    assert restores[-1]["state"] == "success" and all(r["state"] == "failed" for r in restores[:-1]), restores
    resumed_after = utc(restores[-1]["start_date"]) - restarted_at
    print(f"the clone's restore resumed {resumed_after.total_seconds():.0f} s after the restart")
    assert resumed_after < dt.timedelta(seconds=60), resumed_after
    assert_placed_on_its_host(shape, "ledger", pitr, run_id)

    # rewound exactly, on a new postmaster (the cutover), production's directory kept beside it
    assert ledger.psql("select count(*) || ' ' || count(*) filter (where status = 'void') from ledger_entry") == "75 0"
    assert postmaster_pid(ledger.cluster) != production
    assert not paths.clone_dir.exists() and (paths.pre_rewind_dir / "PG_VERSION").is_file()
    log = shape.task_log(pitr, run_id, "stop_restore_promote")
    assert "---- cutover ----" in log and "---- restore ----" not in log, log[-3000:]
