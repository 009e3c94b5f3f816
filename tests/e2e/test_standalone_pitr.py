"""PITR under the real scheduler and triggerer, driven through the REST API: the approval
trigger must be importable by the triggerer process, the sensor must really defer (no worker slot
held), and the change and the run note must carry the summary afterwards."""

from __future__ import annotations

import pytest

from rewind.pitr.clone import clone_paths
from rewind.pitr.journal import RunJournal
from rewind.postgres import postmaster_pid
from rewind.servicenow import Auth, ServiceNowClient
from tests.e2e.conftest import task_log, wait_for_run_state, wait_for_task_state

pytestmark = pytest.mark.e2e

DAG_ID = "rewind_pitr__demo"


def test_pitr_waits_deferred_for_approval_then_completes_with_change_and_note(completed_pitr, standalone, demo_stack, servicenow):
    pitr = completed_pitr  # tests/e2e/conftest.py: triggered, waited deferred, approved, finished
    dag_id, run_id, change = pitr.dag_id, pitr.run_id, pitr.change
    # The gate: the sensor handed the wait to the triggerer; PostgreSQL was untouched meanwhile.
    assert change["approval"] == "requested"
    assert pitr.void_rows_while_waiting == "75"
    assert pitr.run["state"] == "success", pitr.states
    assert demo_stack.psql("select count(*) || ' ' || count(*) filter (where status = 'void') from ledger_entry") == "75 0"
    # clone mode: built and checked beside production, then swapped in; the pre-rewind directory kept, stopped
    journal = RunJournal.load(demo_stack.cluster, run_id)
    assert journal.at("checked") < journal.at("stopped") < journal.at("swapped") < journal.at("promoted")
    kept = clone_paths(demo_stack.cluster, run_id).pre_rewind_dir
    assert (kept / "PG_VERSION").exists() and not (kept / "postmaster.pid").exists()

    sn = ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))
    closed = sn.get("change_request", change["sys_id"])
    assert (closed["state"], closed["close_code"]) == ("3", "successful")
    run = standalone.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
    assert run["note"].startswith(f"{change['number']} closed successful")
    assert "Restored from backup" in run["note"]
    assert pitr.seconds_after_approval < 600

    # A DBA clears the finished run's destructive steps (Clear, with downstream): the run runs them
    # again, and they refuse: this run already rewound the cluster. Nothing is stopped or restored.
    pid = postmaster_pid(demo_stack.cluster)
    rows = demo_stack.psql("select count(*) from ledger_entry")
    response = standalone.rest_as("dba").api(
        "POST",
        f"/dags/{dag_id}/clearTaskInstances",
        json={
            "dag_run_id": run_id,
            "task_ids": ["stop_restore_promote"],
            "include_downstream": True,
            "only_failed": False,
            "dry_run": False,
        },
    )
    assert response.status_code == 200, response.text
    wait_for_run_state(standalone, dag_id, run_id, "failed")
    states = standalone.task_states(dag_id, run_id)
    assert (states["stop_restore_promote"], states["full_backup_new_timeline"]) == ("failed", "upstream_failed"), states
    assert "this run already rewound cluster 'demo'" in task_log(standalone, dag_id, run_id, "stop_restore_promote")
    assert postmaster_pid(demo_stack.cluster) == pid and demo_stack.psql("select count(*) from ledger_entry") == rows


def test_a_second_trigger_is_refused_by_name_and_a_sensor_marked_success_opens_nothing(standalone, demo_stack, servicenow):
    """Two triggers in quick succession: the second run starts and is refused, naming the first,
    while the first waits for its approval. Then a DBA marks the first run's approval sensor success
    by hand (FAB gives the right to clear and to mark together): the stop re-reads the change, which
    is still not approved, and refuses. PostgreSQL is never touched."""
    dag_id = "rewind_pitr__demo"
    standalone.wait_for_dag(dag_id)
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "e2e-two-triggers-base"})
    pid = postmaster_pid(demo_stack.cluster)
    conf = {"target_type": "latest", "reason": "e2e: two triggers in quick succession"}
    first = standalone.trigger(dag_id, conf=conf).json()["dag_run_id"]
    wait_for_task_state(standalone, dag_id, first, "wait_for_approval", "deferred")
    second = standalone.trigger(dag_id, conf=conf).json()["dag_run_id"]
    assert standalone.wait_for_run(dag_id, second)["state"] == "failed"
    assert standalone.task_states(dag_id, second)["validate_params"] == "failed"
    assert f"PITR run {first}" in task_log(standalone, dag_id, second, "validate_params")
    assert "is still active" in task_log(standalone, dag_id, second, "validate_params")

    marked = standalone.rest_as("dba").api(
        "PATCH", f"/dags/{dag_id}/dagRuns/{first}/taskInstances/wait_for_approval", json={"new_state": "success"}
    )
    assert marked.status_code == 200, marked.text
    assert standalone.wait_for_run(dag_id, first)["state"] == "failed"
    states = standalone.task_states(dag_id, first)
    assert (states["stop_restore_promote"], states["full_backup_new_timeline"]) == ("failed", "upstream_failed"), states
    assert "waiting for approval" in task_log(standalone, dag_id, first, "stop_restore_promote")
    assert postmaster_pid(demo_stack.cluster) == pid
    sn = ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))
    [change] = sn.query("change_request", f"correlation_id=rewind:{dag_id}:{first}")
    assert change["state"] == "-4"  # Assess, waiting: never Implement
    servicenow.reject(change["number"])  # leave nothing pending


def test_a_refusal_fails_preflight_once_under_the_real_scheduler(standalone, demo_stack):
    """A target before the oldest backup cannot become reachable by waiting: preflight fails on its
    first try with its one line, and the run ends without a second identical try (issue: "try 2")."""
    standalone.wait_for_dag(DAG_ID)
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "e2e-refusal-base"})  # whatever ran before
    conf = {"target_type": "time", "target": "2020-01-01 00:00:00+00", "reason": "e2e: a target before every backup"}
    response = standalone.trigger(DAG_ID, conf=conf)
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    run = standalone.wait_for_run(DAG_ID, run_id, timeout=180)
    assert run["state"] == "failed", standalone.task_states(DAG_ID, run_id)
    preflight = standalone.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/preflight").json()
    assert (preflight["state"], preflight["try_number"]) == ("failed", 1), preflight
    assert preflight["max_tries"] >= 1  # it has retries, for what waiting can change; this was not that
    assert "is before the oldest usable backup" in task_log(standalone, DAG_ID, run_id, "preflight")
