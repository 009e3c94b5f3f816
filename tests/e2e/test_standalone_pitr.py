"""PITR under the real scheduler and triggerer, driven through the REST API: the approval
trigger must be importable by the triggerer process, the sensor must really defer (no worker slot
held), and the change and the run note must carry the summary afterwards."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from rewind.servicenow import Auth, ServiceNowClient

pytestmark = pytest.mark.e2e


def wait_for_task_state(airflow, dag_id, run_id, task_id, state, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = airflow.task_states(dag_id, run_id)
        if states.get(task_id) == state:
            return states
        if states.get(task_id) in ("failed", "upstream_failed"):
            raise AssertionError(f"{task_id} ended {states[task_id]}: {states}")
        time.sleep(1)
    raise AssertionError(f"{task_id} never reached {state}: {airflow.task_states(dag_id, run_id)}")


def test_pitr_waits_deferred_for_approval_then_completes_with_change_and_note(standalone, demo_stack, servicenow):
    dag_id = "rewind_pitr__demo"
    standalone.wait_for_dag(dag_id)
    demo_stack.psql("drop table if exists ledger_entry")
    demo_stack.psql("create table ledger_entry (id bigint primary key, status text)")
    demo_stack.psql("insert into ledger_entry select g, 'posted' from generate_series(1, 75) g")
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    time.sleep(1.2)
    demo_stack.psql("update ledger_entry set status = 'void'")

    conf = {
        "target_type": "time",
        "target": target.strftime("%Y-%m-%d %H:%M:%S+00"),
        "validation_sql": [{"sql": "select count(*) from ledger_entry where status = 'void'", "expect": 0}],
        "reason": "e2e: migration voided the ledger",
    }
    response = standalone.trigger(dag_id, conf=conf, note="e2e PITR")
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    # The gate: the sensor hands the wait to the triggerer; PostgreSQL is untouched meanwhile.
    wait_for_task_state(standalone, dag_id, run_id, "wait_for_approval", "deferred")
    sn = ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))
    [change] = sn.query("change_request", f"correlation_id=rewind:{dag_id}:{run_id}")
    assert change["approval"] == "requested"
    assert demo_stack.psql("select count(*) from ledger_entry where status = 'void'") == "75"
    approved_at = time.monotonic()
    servicenow.approve(change["number"])

    run = standalone.wait_for_run(dag_id, run_id, timeout=600)
    states = standalone.task_states(dag_id, run_id)
    assert run["state"] == "success", states
    assert demo_stack.psql("select count(*) || ' ' || count(*) filter (where status = 'void') from ledger_entry") == "75 0"

    closed = sn.get("change_request", change["sys_id"])
    assert (closed["state"], closed["close_code"]) == ("3", "successful")
    run = standalone.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
    assert run["note"].startswith(f"{change['number']} closed successful")
    assert "Restored from backup" in run["note"]
    assert time.monotonic() - approved_at < 600
