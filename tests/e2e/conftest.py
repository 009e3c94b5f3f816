"""One real Airflow (scheduler, DAG processor, triggerer, API server) for the e2e tests, stopped
when they are done: its scheduler must not keep running DAGs during other tests.

It runs as production would: the FAB auth manager with Rewind's roles (an auditor, a DBA and a
backup operator besides the admin), and the demo cluster's repository secrets from Vault (the
simulator), leased by the real task processes through the hashicorp provider."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from devstack.airflow import AirflowStandalone
from devstack.net import free_port
from rewind.cli import pools_json
from rewind.inventory import load_inventory
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
