"""Backup rotation: for every inventory cluster, a full, a differential and an incremental DAG.

    preflight (read-only) -> backup (annotated, asset event) -> expire (retention)

Parsing reads only the local inventory file: no network, database, subprocess or Vault at import.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta

from airflow.sdk import DAG

from rewind.inventory import BACKUP_TYPES, Cluster, load_inventory
from rewind.roles import OPERATIONS
from rewind_airflow.assets import backup_asset
from rewind_airflow.defaults import cluster_dag_kwargs
from rewind_airflow.operators.pgbackrest import (
    PgBackRestBackupOperator,
    PgBackRestExpireOperator,
    PgBackRestPreflightOperator,
)

WHAT = {
    "full": "a **full** backup: every file of the cluster",
    "diff": "a **differential** backup: files changed since the last full backup",
    "incr": "an **incremental** backup: files changed since the last backup of any type",
}


def retention(repo) -> str:
    if repo.recovery_window_days:
        return f"a recovery window of {repo.recovery_window_days} days (time-based), {repo.retention_diff} differential backups"
    return f"{repo.retention_full} full, {repo.retention_diff} differential backups (count-based)"


def doc_md(cluster: Cluster, backup_type: str) -> str:
    repo = cluster.repo
    return textwrap.dedent(
        f"""
        # {backup_type} backup of `{cluster.name}` (stanza `{cluster.stanza}`)

        Takes {WHAT[backup_type]}, with pgBackRest, into `s3://{repo.bucket}{repo.path}` at
        `{repo.endpoint}` ({repo.compress_type} level {repo.compress_level}, bundling
        {"on" if repo.bundle else "off"}, client-side encryption `{repo.cipher_type}`).

        **Schedule:** `{getattr(cluster.schedules, backup_type)}` (UTC). Rotation: full
        `{cluster.schedules.full}`, diff `{cluster.schedules.diff}`, incr `{cluster.schedules.incr}`.
        **Retention:** {retention(repo)}; what a PITR's hold keeps is never expired (README, Retention).

        | step | what it does | touches |
        |---|---|---|
        | `preflight` | installed `{cluster.config_path}` equals the inventory rendering; CA file readable by `{cluster.postgres.os_user}`; S3 reachable; stanza ok | nothing |
        | `backup` | `pgbackrest --type={backup_type} backup`, annotated with this DAG id and run id; publishes the asset `rewind_backup__{cluster.name}` with label, type, stop LSN and size | repository |
        | `backup` retry | finds the backup an earlier try of this DAG run took (same DAG, run, type and timeline, by annotation) and does not take a second one; waits for a backup lock held elsewhere, never races it | repository |
        | `expire` | `pgbackrest expire` by the retention above, widened only for what a PITR's hold keeps; logs what was removed and what was held | repository |

        **Never overlapping:** `backup` and `expire` of every Rewind DAG of this stanza run in the
        one-slot pool `{cluster.pool}`, and pgBackRest's own stanza lock backs that up. While a PITR
        replaces the data directory every step skips ("restore in progress").
        Runs on the worker queue `{cluster.queue}` (the database host).

        **For auditors:** each backup in `pgbackrest info` carries the annotations
        `airflow_dag_id`, `airflow_run_id` and `airflow_try`; the `backup` task's return value
        (XCom) and the asset event hold the same record.
        """
    )


inventory = load_inventory()

for cluster in inventory.clusters.values():
    for backup_type in BACKUP_TYPES:
        with DAG(
            dag_id=f"rewind_backup_{backup_type}__{cluster.name}",
            description=f"pgBackRest {backup_type} backup of {cluster.name} to s3://{cluster.repo.bucket}{cluster.repo.path}",
            doc_md=doc_md(cluster, backup_type),
            **cluster_dag_kwargs(
                cluster, workflow="backup", tags=(backup_type,), access_control=OPERATIONS, schedule=getattr(cluster.schedules, backup_type)
            ),
        ):
            preflight = PgBackRestPreflightOperator(task_id="preflight", cluster=cluster.name, retries=2, retry_delay=timedelta(minutes=1))
            backup = PgBackRestBackupOperator(
                task_id="backup",
                cluster=cluster.name,
                backup_type=backup_type,
                pool=cluster.pool,
                outlets=[backup_asset(cluster)],
                execution_timeout=timedelta(seconds=cluster.pgbackrest.backup_timeout_s + 600),
            )
            expire = PgBackRestExpireOperator(task_id="expire", cluster=cluster.name, pool=cluster.pool, retries=2)

            preflight >> backup >> expire
