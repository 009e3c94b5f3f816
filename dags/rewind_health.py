"""Watchdog: for every inventory cluster, an hourly health check that pages and opens a
deduplicated ServiceNow incident when WAL archiving fails or no good backup exists within the
threshold, and resolves it when healthy again."""

from __future__ import annotations

import textwrap
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from rewind.inventory import load_inventory
from rewind_airflow.access import OPERATIONS
from rewind_airflow.notifiers.alerts import RewindAlertNotifier
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

            Metrics go to StatsD as `rewind.{cluster.name}.*` (see the README). Impact/urgency
            {cluster.alerts.impact}/{cluster.alerts.urgency}. Schedule `{cluster.schedules.health}` (UTC).
            """
        ),
        schedule=cluster.schedules.health,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        access_control=OPERATIONS,
        tags=["rewind", "health", f"cluster:{cluster.name}"],
        default_args={
            "owner": "dba",
            "queue": cluster.queue,
            "retries": 1,
            "retry_delay": timedelta(minutes=2),
            "on_failure_callback": RewindAlertNotifier(cluster=cluster.name, servicenow_conn_id=cluster.connections.servicenow),
        },
    ):
        HealthCheckOperator(task_id="check_health", cluster=cluster.name, execution_timeout=timedelta(minutes=10))
