"""Onboarding: archiving of one cluster into its repository, under a ServiceNow change.

    plan (read-only) -> open_change -> wait_for_approval (deferrable) -> begin_change
      -> configure_archiving -> restart_postgres (only if needed, in the window)
      -> check -> first_full_backup -> verify -> close_change

Nothing is touched before the plan's checks pass (bucket posture, archiving elsewhere, a stanza of
another database system) and the change is approved. A second run on an onboarded cluster changes
nothing: the plan says so and the run ends there.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta

from airflow.sdk import DAG, Param

from rewind.inventory import Cluster, load_inventory
from rewind.roles import DBA_ONLY
from rewind_airflow.defaults import alert_callbacks, cluster_dag_kwargs
from rewind_airflow.notifiers.servicenow import ChangeFailureNotifier
from rewind_airflow.operators.lifecycle import (
    BeginChangeOperator,
    CloseLifecycleChangeOperator,
    ConfigureArchivingOperator,
    OpenChangeOperator,
    PgBackRestCheckOperator,
    PlanOnboardingOperator,
    RestartPostgresOperator,
)
from rewind_airflow.operators.pgbackrest import PgBackRestBackupOperator
from rewind_airflow.operators.verify import VerifyRepositoryOperator
from rewind_airflow.sensors.servicenow import ChangeApprovalSensor

PLAN = "{{ ti.xcom_pull(task_ids='plan') }}"
CHANGE = "{{ ti.xcom_pull(task_ids='open_change') }}"


def doc_md(cluster: Cluster) -> str:
    return textwrap.dedent(
        f"""
        # Onboarding of `{cluster.name}` (stanza `{cluster.stanza}`)

        Enables continuous archiving of `{cluster.postgres.data_dir}` into
        `s3://{cluster.repo.bucket}{cluster.repo.path}`. The restart it needs (archive_mode, wal_level)
        is the one disruptive step: it runs only once the change is approved, inside its window.

        | step | what it does | touches |
        |---|---|---|
        | `plan` | the bucket's posture through the amazon provider's S3Hook (versioning, Object Lock, default encryption, public access blocked); no archiving elsewhere; no stanza of another database system; what would change. Nothing to change: the run ends here, saying so | nothing |
        | `open_change` / `wait_for_approval` | a normal change with the plan; waits in the triggerer for approval, Scheduled, window | ServiceNow |
        | `begin_change` | the change re-read: Implement | ServiceNow |
        | `configure_archiving` | change re-read; pgbackrest.conf installed, stanza-create, `ALTER SYSTEM` archive_mode, archive_command, wal_level, archive_timeout, max_wal_senders; reload | **PostgreSQL settings**, repository |
        | `restart_postgres` | change re-read; restart, only when a setting needs it | **PostgreSQL** |
        | `check` / `first_full_backup` / `verify` | WAL round trip, the first full backup, pgbackrest verify | repository |
        | `close_change` | closed successful with what was done | ServiceNow |

        Only the DBA role may trigger it. Runs on the worker queue `{cluster.queue}`.
        """
    )


inventory = load_inventory()

for cluster in inventory.clusters.values():
    sn = {"servicenow_conn_id": cluster.connections.servicenow}
    on_failure = [
        ChangeFailureNotifier(change_sys_id="{{ (ti.xcom_pull(task_ids='open_change') or {}).get('sys_id') }}", **sn),
        alert_callbacks(cluster)["on_failure_callback"],
    ]
    with DAG(
        dag_id=f"rewind_onboard__{cluster.name}",
        description=f"Enable archiving of {cluster.name} into s3://{cluster.repo.bucket}{cluster.repo.path}, under a change",
        doc_md=doc_md(cluster),
        params={"reason": Param("Onboard the cluster into Rewind", type="string", minLength=10, title="Reason")},
        render_template_as_native_obj=True,
        **cluster_dag_kwargs(
            cluster,
            workflow="onboard",
            access_control=DBA_ONLY,
            schedule=None,
            tags=("lifecycle",),
            retry_delay=timedelta(seconds=30),
            default_args={"on_failure_callback": on_failure},
        ),
    ):
        plan = PlanOnboardingOperator(task_id="plan", cluster=cluster.name, **sn)
        open_change = OpenChangeOperator(
            task_id="open_change",
            cluster=cluster.name,
            workflow="onboarding",
            plan=PLAN,
            summary="{{ ti.xcom_pull(task_ids='plan')['describe'] }}",
            **sn,
        )
        wait_for_approval = ChangeApprovalSensor(
            task_id="wait_for_approval",
            change_number="{{ ti.xcom_pull(task_ids='open_change')['number'] }}",
            poll_interval=cluster.pitr.approval_poll_s,
            timeout=cluster.pitr.approval_timeout_h * 3600,
            **sn,
        )
        begin = BeginChangeOperator(task_id="begin_change", cluster=cluster.name, change=CHANGE, **sn)
        configure = ConfigureArchivingOperator(task_id="configure_archiving", cluster=cluster.name, change=CHANGE, plan=PLAN, **sn)
        restart = RestartPostgresOperator(task_id="restart_postgres", cluster=cluster.name, change=CHANGE, plan=PLAN, **sn)
        check = PgBackRestCheckOperator(task_id="check", cluster=cluster.name, **sn)
        first_full = PgBackRestBackupOperator(
            task_id="first_full_backup",
            cluster=cluster.name,
            backup_type="full",
            pool=cluster.pool,
            extra_annotations={"rewind_change": "{{ ti.xcom_pull(task_ids='open_change')['number'] }}"},
        )
        verify = VerifyRepositoryOperator(task_id="verify", cluster=cluster.name, pool=cluster.pool)
        close = CloseLifecycleChangeOperator(
            task_id="close_change",
            cluster=cluster.name,
            change=CHANGE,
            record_onboarding=True,  # from now on a lost config, stanza or archiving pages
            done={
                "plan": "{{ ti.xcom_pull(task_ids='plan')['describe'] }}",
                "settings after": "{{ ti.xcom_pull(task_ids='restart_postgres') }}",
                "first full backup": "{{ (ti.xcom_pull(task_ids='first_full_backup') or {}).get('label') }}",
            },
            **sn,
        )

        plan >> open_change >> wait_for_approval >> begin >> configure >> restart >> check >> first_full >> verify >> close
