"""Watchdog: for every inventory cluster, an hourly health check that pages and opens a
deduplicated ServiceNow incident when WAL archiving fails or no good backup exists within the
threshold, and resolves it when healthy again."""

from __future__ import annotations

import textwrap
from datetime import timedelta

from airflow.sdk import DAG

from rewind.inventory import load_inventory
from rewind.roles import OPERATIONS
from rewind_airflow.defaults import cluster_dag_kwargs
from rewind_airflow.operators.health import HealthCheckOperator

inventory = load_inventory()

for cluster in inventory.clusters.values():
    with DAG(
        dag_id=f"rewind_health__{cluster.name}",
        description=f"WAL archiving and backup-age watchdog of {cluster.name}",
        doc_md=textwrap.dedent(
            f"""
            # Watchdog of `{cluster.name}` (stanza `{cluster.stanza}`)

            Every run checks, read-only, and reports each problem to ServiceNow under
            `correlation_id = rewind:{cluster.name}:<problem>` (one open incident per problem: a repeat
            adds a work note; the first passing check resolves it):

            | problem | failing when |
            |---|---|
            | `archive_failing` | `pg_stat_archiver` shows the last attempt failed after the last success, `failed_count` rose since the previous run, or WAL has waited longer than {cluster.alerts.stale_archive_factor} x `archive_timeout` |
            | `repository` | `pgbackrest info` cannot read the repository |
            | `stanza_status` | the stanza status is not ok |
            | `backup_age` | the newest good backup ended more than {cluster.alerts.max_backup_age_hours} h ago |
            | `backup_lock` | a backup lock is held far longer than the longest retained backup took |
            | `credentials` | the repository credentials cannot be obtained (Vault, environment); archiving is still checked |
            | `restore_guard` | a PITR failed mid-rewind and left backups blocked |

            While a PITR replaces the data directory the check skips ("restore in progress"): no
            incident, no failure. Held backups (PITR retention holds) are counted in the metrics.

            Metrics go to StatsD as `rewind.{cluster.name}.*` (see the README). Impact/urgency
            {cluster.alerts.impact}/{cluster.alerts.urgency}. Schedule `{cluster.schedules.health}` (UTC).
            """
        ),
        **cluster_dag_kwargs(
            cluster, workflow="health", access_control=OPERATIONS, schedule=cluster.schedules.health, retry_delay=timedelta(minutes=2)
        ),
    ):
        HealthCheckOperator(task_id="check_health", cluster=cluster.name, execution_timeout=timedelta(minutes=10))
