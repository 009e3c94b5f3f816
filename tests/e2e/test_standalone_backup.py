"""The real deployment shape: `airflow standalone` (scheduler, DAG processor, triggerer, API server)
with this repo's DAGs and plugins, driven only through the REST API, against the real stack."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_full_backup_triggered_through_the_rest_api(standalone, demo_stack):
    dag_id = "rewind_backup_full__demo"
    standalone.wait_for_dag(dag_id)
    response = standalone.trigger(dag_id, note="e2e: full backup from the REST API")
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    run = standalone.wait_for_run(dag_id, run_id, timeout=300)
    states = standalone.task_states(dag_id, run_id)
    assert run["state"] == "success", states
    assert states == {"preflight": "success", "backup": "success", "expire": "success"}

    backup = demo_stack.pgbackrest().info().find_annotated("airflow_run_id", run_id)
    assert backup is not None and backup.type == "full" and not backup.error

    xcom = standalone.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/backup/xcomEntries/return_value").json()
    assert backup.label in str(xcom["value"])
    events = standalone.api("GET", "/assets/events", params={"source_run_id": run_id}).json()["asset_events"]
    assert [event["extra"]["label"] for event in events] == [backup.label]


def test_an_auditor_reads_the_dag_docs_in_the_ui_api(standalone):
    details = standalone.api("GET", "/dags/rewind_backup_incr__demo/details").json()
    assert "incremental" in details["doc_md"] and "For auditors" in details["doc_md"]
    assert details["max_active_runs"] == 1
    assert "rewind" in [tag["name"] for tag in details["tags"]]
