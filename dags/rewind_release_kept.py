"""Release the directory a clone-mode rewind kept, before its hold ends.

    release_kept_directory: the named PITR run's pre-rewind directory, confirmed by its name, removed

A clone-mode rewind keeps production's directory from before its cutover, stopped, as long as the
pre-rewind backups and WAL are held (salvage reads it, undo would swap it back); the first expire
after the hold ends removes it. This DAG removes it sooner, when the disk is needed: triggered by a
DBA with the run, the directory's name typed out and a reason, all kept in the hold's record, the
task log and the run note. The old branch stays recoverable from the repository until the hold ends.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from rewind.inventory import load_inventory
from rewind.roles import DBA_ONLY
from rewind_airflow.defaults import cluster_dag_kwargs
from rewind_airflow.operators.kept_directory import ReleaseKeptDirectoryOperator

PARAMS = {
    "pitr_run_id": Param(
        type="string", minLength=1, title="PITR run", description="the run whose pre-rewind directory goes (its change's notes name it)"
    ),
    "confirm": Param(
        type="string", minLength=1, title="Directory name", description="type the directory's name: <data_dir>.pre-rewind-<run>"
    ),
    "reason": Param(
        type="string", minLength=10, title="Reason", description="why it goes before its hold ends (kept in the hold's record)"
    ),
}

inventory = load_inventory()
for cluster in inventory.clusters.values():
    with DAG(
        dag_id=f"rewind_release_kept__{cluster.name}",
        description=f"Remove the pre-rewind directory a clone-mode rewind of {cluster.name} kept, before its hold ends",
        doc_md=__doc__,
        params=PARAMS,
        **cluster_dag_kwargs(cluster, workflow="release_kept", access_control=DBA_ONLY, schedule=None),
    ):
        ReleaseKeptDirectoryOperator(
            task_id="release_kept_directory",
            cluster=cluster.name,
            pitr_run_id="{{ params.pitr_run_id }}",
            confirm="{{ params.confirm }}",
            reason="{{ params.reason }}",
        )
