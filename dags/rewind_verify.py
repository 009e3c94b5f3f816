"""Post-backup verification: after every backup of a cluster (its backup asset) and daily."""

from __future__ import annotations

import textwrap
from datetime import timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable

from rewind.inventory import load_inventory
from rewind.roles import OPERATIONS
from rewind_airflow.assets import backup_asset
from rewind_airflow.defaults import cluster_dag_kwargs
from rewind_airflow.operators.verify import VerifyRepositoryOperator

inventory = load_inventory()

for cluster in inventory.clusters.values():
    with DAG(
        dag_id=f"rewind_verify__{cluster.name}",
        description=f"Verify the pgBackRest repository of {cluster.name}",
        doc_md=textwrap.dedent(
            f"""
            # Verification of `{cluster.name}` (stanza `{cluster.stanza}`)

            Runs after every backup (asset `rewind_backup__{cluster.name}`) and at `{cluster.schedules.verify}` UTC:

            | check | what it proves |
            |---|---|
            | `pgbackrest check` | a WAL switch makes the round trip into the repository; config and cipher agree |
            | `pgbackrest verify` | every backup file and archived WAL segment reads back with its checksum |
            | stanza status | `pgbackrest info` reports the stanza ok |
            | WAL continuity | no segment is missing from each retained backup's first WAL to the end of the archive |

            Each failing check opens (or updates) its own ServiceNow incident
            `rewind:{cluster.name}:<check>` and the task fails; a passing check resolves it.
            Results are also sent as metrics (`rewind.{cluster.name}.check.ok`, `verify.ok`, `wal.gaps`).
            """
        ),
        **cluster_dag_kwargs(
            cluster,
            workflow="verify",
            access_control=OPERATIONS,
            schedule=AssetOrTimeSchedule(
                timetable=CronTriggerTimetable(cluster.schedules.verify, timezone="UTC"), assets=[backup_asset(cluster)]
            ),
        ),
    ):
        VerifyRepositoryOperator(
            task_id="verify_repository",
            cluster=cluster.name,
            pool=cluster.pool,
            execution_timeout=timedelta(seconds=cluster.pgbackrest.backup_timeout_s),
        )
