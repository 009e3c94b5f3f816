"""docker-compose.yaml is the production shape that tests/e2e_celery runs for real.

Debian's docker-compose renders and validates it offline (`docker-compose -f docker-compose.yaml
config`, no Docker engine needed), and the rendering has what the e2e starts: Redis, a PostgreSQL
metadata database, the API server, scheduler, DAG processor and triggerer with the CeleryExecutor,
and one worker per database host for every queue of config/inventory.example.yaml, started with the
arguments devstack's CeleryWorker uses; every Airflow service gets the settings the e2e takes from
this file (devstack.airflow.compose_airflow_settings), the crash-recovery ones among them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from devstack.airflow import COMPOSE_FILE, REPO, AirflowStandalone, CeleryWorker, compose_airflow_settings
from rewind.inventory import load_inventory

EXAMPLE_INVENTORY = REPO / "config" / "inventory.example.yaml"
# Every variable the file requires (${NAME:?...}) comes from the deployment's secret store.
REQUIRED = sorted(set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE_FILE.read_text())))
AIRFLOW_COMPONENTS = {
    "airflow-apiserver": ["airflow", "api-server"],
    "airflow-scheduler": ["airflow", "scheduler"],
    "airflow-dag-processor": ["airflow", "dag-processor"],
    "airflow-triggerer": ["airflow", "triggerer"],
}
# How a running task's heartbeat and a dead scheduler's tasks are watched (README "Production
# deployment"): a rewind interrupted by a crash resumes within about a minute.
CRASH_RECOVERY = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": 30,
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": 5,
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": 10,
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": 30,
}


def docker_compose() -> str:
    # Debian 12 ships docker-compose 1.29 as /usr/bin/docker-compose; Debian 13's 2.x may install only
    # the Docker CLI plugin, which runs standalone just the same.
    for candidate in (shutil.which("docker-compose"), "/usr/libexec/docker/cli-plugins/docker-compose"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("docker-compose is not installed: run scripts/install.sh (Debian's docker-compose package)")


def render(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [docker_compose(), "-f", str(COMPOSE_FILE), "config"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
    )


@pytest.fixture(scope="module")
def services() -> dict:
    result = render({name: f"test-{name.lower()}" for name in REQUIRED})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def example_queues() -> list[str]:
    return sorted({cluster.queue for cluster in load_inventory(EXAMPLE_INVENTORY).clusters.values()})


def test_docker_compose_validates_it_and_refuses_to_run_without_its_secrets():
    assert {"AIRFLOW_DB_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY"} <= set(REQUIRED)
    missing = render({name: "x" for name in REQUIRED if name != "AIRFLOW_JWT_SECRET"})
    assert missing.returncode != 0 and "AIRFLOW_JWT_SECRET" in missing.stderr, missing.stderr


def test_the_services_are_the_production_shape(services):
    assert example_queues() == ["pg-crm-01", "pg-ledger-01"]
    assert set(services) == {"airflow-db", "redis", "airflow-init", *AIRFLOW_COMPONENTS, *example_queues()}
    for name, command in AIRFLOW_COMPONENTS.items():
        assert services[name]["command"] == command, name
    assert services["redis"]["image"].startswith("redis:")
    assert services["airflow-db"]["image"].startswith("postgres:")
    init = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init and "airflow pools import" in init and "rewind roles --apply" in init


def test_a_worker_per_database_host_on_its_queue_named_after_it(services):
    for queue in example_queues():
        worker = services[queue]
        # what devstack's CeleryWorker runs on the e2e's database host of that name
        expected = CeleryWorker(queue=queue, home=Path("/nonexistent"))
        assert worker["command"] == ["airflow", *expected.arguments()]
        assert worker["hostname"] == queue == expected.hostname
        assert {dep: worker["depends_on"][dep]["condition"] for dep in worker["depends_on"]} == {
            "airflow-db": "service_healthy",
            "redis": "service_healthy",
            "airflow-init": "service_completed_successfully",
        }


@pytest.mark.parametrize("service", [*AIRFLOW_COMPONENTS, "airflow-init", *example_queues()])
def test_every_airflow_service_runs_the_celery_settings_the_e2e_runs(services, service):
    env = services[service]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://airflow:")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].endswith("@airflow-db/airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == AirflowStandalone.FAB_AUTH_MANAGER
    # the secrets every component and worker must share come from the secret store, never the file
    for name in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert env[name].startswith("test-"), name
    assert {key: int(env[key]) for key in CRASH_RECOVERY} == CRASH_RECOVERY
    # what the e2e takes from the file is what every service gets
    assert compose_airflow_settings().items() <= {k: str(v) for k, v in env.items()}.items()


def test_the_e2e_components_and_workers_run_with_the_compose_settings(tmp_path):
    """devstack's production shape reads the settings from docker-compose.yaml: each component and
    each worker gets them, with its own database, broker and shared secrets."""
    airflow = AirflowStandalone(
        home=tmp_path,
        port=8080,
        host="10.201.0.1",
        executor="celery",
        database_url="postgresql+psycopg2://airflow:pw@10.201.0.1:5432/airflow",
        broker_url="redis://10.201.0.1:6379/0",
        result_backend="db+postgresql://airflow:pw@10.201.0.1:5432/airflow",
        auth_manager="fab",
    )
    worker = CeleryWorker(queue="pg-ledger-01", home=tmp_path / "worker")
    settings = compose_airflow_settings()
    assert set(CRASH_RECOVERY) <= set(settings) and settings["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    component, on_host = airflow.environment(), airflow.worker_environment(worker)
    for env in (component, on_host):
        assert settings.items() <= env.items()
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://10.201.0.1:6379/0"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://10.201.0.1:8080/execution/"
    shared = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")
    assert {k: component[k] for k in shared} == {k: on_host[k] for k in shared}
    assert on_host["AIRFLOW_HOME"] == str(tmp_path / "worker") != component["AIRFLOW_HOME"]
