"""One real Airflow (scheduler, DAG processor, triggerer, API server) for the e2e tests, stopped
when they are done: its scheduler must not keep running DAGs during other tests.

It runs as production would: the FAB auth manager with Rewind's roles (an auditor, a DBA and a
backup operator besides the admin), and the demo cluster's repository secrets from Vault (the
simulator), leased by the real task processes through the hashicorp provider."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.airflow import AirflowStandalone
from devstack.net import free_port
from rewind.cli import pools_json
from rewind.inventory import load_inventory
from rewind.servicenow import Auth, ServiceNowClient
from tests.conftest import VAULT_CREDENTIALS

USERS = {"auditor": ["Viewer"], "dba": ["Viewer", "DBA"], "operator": ["Viewer", "BackupOperator"]}


@pytest.fixture(scope="package")
def standalone(demo_stack, servicenow, vault):
    home = Path(tempfile.mkdtemp(prefix="rewind-standalone-"))
    env = {
        "REWIND_INVENTORY": str(demo_stack.inventory_path),
        "AIRFLOW_CONN_SERVICENOW_DEFAULT": servicenow.airflow_connection(),
        "AIRFLOW_CONN_VAULT_DEFAULT": vault.airflow_connection(approle=vault.approle),
        **demo_stack.worker_env(),
    }
    demo_stack.use_credentials(VAULT_CREDENTIALS)
    airflow = AirflowStandalone(home=home, port=free_port(), env=env, paused_at_creation=True, auth_manager="fab", users=USERS)
    try:
        airflow.start(pools=pools_json(load_inventory(demo_stack.inventory_path)))
        yield airflow
    finally:
        airflow.stop()
        demo_stack.use_credentials(None)


@pytest.fixture(autouse=True)
def no_run_left_going(request):
    """A test that fails midway leaves its run going (a PITR asking, a backup running): ended here,
    before the demo cluster is put back (tests/conftest.py), so that nothing of it acts on the cluster
    during the next test."""
    yield
    if "standalone" in request.fixturenames:
        ended = request.getfixturevalue("standalone").end_unfinished_runs()
        if ended:
            print(f"\n[{request.node.nodeid}] left runs going, marked failed: {', '.join(ended)}")


@dataclass
class CompletedPitr:
    dag_id: str
    run_id: str
    conf: dict
    change: dict  # as it was while the run waited for approval
    void_rows_while_waiting: str
    run: dict  # the finished run
    states: dict[str, str]
    seconds_after_approval: float


@pytest.fixture(scope="package")
def completed_pitr(standalone, demo_stack, servicenow) -> CompletedPitr:
    """One PITR of the demo cluster run to the end under the real scheduler and triggerer: a table
    voided after the target, triggered by the admin (the simulator's on-call DBA), waited for in the
    triggerer, approved by the CAB approver, restored onto a clone and checked there while production
    served, cut over, promoted, backed up, closed. Shared
    by the PITR test (which then clears it) and the audit page test (which reads it first)."""
    dag_id = "rewind_pitr__demo"
    standalone.wait_for_dag(dag_id)
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "e2e-pitr-base"})  # whatever ran before
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
        # onto a clone first, cut over in seconds (rewind.pitr.clone); in place: the decide and Celery e2e tests
        "mode": "clone",
    }
    response = standalone.trigger(dag_id, conf=conf, note="e2e PITR")
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    wait_for_task_state(standalone, dag_id, run_id, "wait_for_approval", "deferred")
    sn = ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))
    [change] = sn.query("change_request", f"correlation_id=rewind:{dag_id}:{run_id}")
    void_rows = demo_stack.psql("select count(*) from ledger_entry where status = 'void'")
    approved_at = time.monotonic()
    servicenow.approve(change["number"])

    run = standalone.wait_for_run(dag_id, run_id, timeout=600)
    return CompletedPitr(
        dag_id=dag_id,
        run_id=run_id,
        conf=conf,
        change=change,
        void_rows_while_waiting=void_rows,
        run=run,
        states=standalone.task_states(dag_id, run_id),
        seconds_after_approval=time.monotonic() - approved_at,
    )


def wait_for_task_state(airflow, dag_id, run_id, task_id, state, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = airflow.task_states(dag_id, run_id)
        if states.get(task_id) == state:
            return states
        if states.get(task_id) in ("failed", "upstream_failed"):
            failed = [t for t, state in states.items() if state == "failed"]
            logs = {t: task_log(airflow, dag_id, run_id, t)[-3000:] for t in failed}
            raise AssertionError(f"{task_id} ended {states[task_id]}: {states}; failed task logs: {logs}")
        time.sleep(0.5)
    raise AssertionError(f"{task_id} never reached {state}: {airflow.task_states(dag_id, run_id)}")


def wait_for_run_state(airflow, dag_id, run_id, state, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"] == state:
            return
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} never became {state}: {airflow.task_states(dag_id, run_id)}")


def task_log(airflow, dag_id, run_id, task_id) -> str:
    try_number = airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}").json()["try_number"]
    return airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}").text
