"""One real Airflow (scheduler, DAG processor, triggerer, API server) for the e2e tests, stopped
when they are done: its scheduler must not keep running DAGs during other tests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from rewind.cli import pools_json
from rewind.inventory import load_inventory
from rewind.stack.airflow import AirflowStandalone
from rewind.stack.net import free_port


@pytest.fixture(scope="package")
def standalone(demo_stack, servicenow):
    home = Path(tempfile.mkdtemp(prefix="rewind-standalone-"))
    env = {
        "REWIND_INVENTORY": str(demo_stack.inventory_path),
        "AIRFLOW_CONN_SERVICENOW_DEFAULT": servicenow.airflow_connection(),
        **demo_stack.worker_env(),
    }
    airflow = AirflowStandalone(home=home, port=free_port(), env=env, paused_at_creation=True)
    try:
        airflow.start(pools=pools_json(load_inventory(demo_stack.inventory_path)))
        yield airflow
    finally:
        airflow.stop()
