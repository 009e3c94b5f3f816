"""Every task of a cluster runs on its database host's worker: the inventory's `queue` routes it
there, the worker on that host (its own network namespace and address) serves only that queue."""

from __future__ import annotations

import pytest

from rewind.postgres import postmaster_pid
from tests.e2e_celery.conftest import host_netns, netns_of

pytestmark = pytest.mark.e2e


def test_every_task_of_each_cluster_ran_on_its_hosts_worker_and_backed_it_up(shape):
    runs = {name: shape.trigger(f"rewind_backup_full__{name}") for name in shape.clusters}
    for name, run_id in runs.items():
        dag_id = f"rewind_backup_full__{name}"
        shape.wait_for_run(dag_id, run_id)
        host = shape.host(name)
        placed = {task: (ti["queue"], ti["hostname"], ti["state"]) for task, ti in shape.task_instances(dag_id, run_id).items()}
        assert placed == {task: (shape.queues[name], host.address, "success") for task in ("preflight", "backup", "expire")}, placed

        stack = shape.clusters[name]
        backup = stack.pgbackrest().info().find_annotated("airflow_run_id", run_id)
        assert backup is not None and backup.type == "full" and not backup.error
        assert backup.annotations["airflow_dag_id"] == dag_id
        # the cluster itself runs on that host: its postmaster is in the host's network namespace
        assert netns_of(postmaster_pid(stack.cluster)) == host_netns(host)
    # the worker of each host is the one that ran them (Celery hostname <queue>@<host>)
    for worker in shape.airflow.workers:
        assert f"{worker.celery_hostname} ready." in worker.log_file.read_text()
