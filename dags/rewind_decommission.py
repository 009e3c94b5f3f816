"""Decommissioning: archiving of one cluster stopped, deliberately, under a ServiceNow change.

    validate (the stanza's name typed) -> open_change -> wait_for_approval (deferrable) -> begin_change
      -> final_full_backup -> stop_archiving (restart in the window) -> stop_stanza -> close_change

The repository is kept unless the form asks to delete the stanza (`stanza-delete --force`); with
Object Lock the bucket keeps recent object versions for their retention anyway. Afterwards, remove
the cluster from the inventory: its DAGs go with it.
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
    OpenChangeOperator,
    StopArchivingOperator,
    StopStanzaOperator,
    ValidateDecommissionOperator,
)
from rewind_airflow.operators.pgbackrest import PgBackRestBackupOperator
from rewind_airflow.sensors.servicenow import ChangeApprovalSensor

PLAN = "{{ ti.xcom_pull(task_ids='validate') }}"
CHANGE = "{{ ti.xcom_pull(task_ids='open_change') }}"

PARAMS = {
    "confirm_stanza": Param(
        "", type="string", title="Type the stanza's name", description="deliberate: the decommission runs only when it matches"
    ),
    "delete_repository": Param(
        False,
        type="boolean",
        title="Delete the stanza from the repository",
        description="off (default): the repository and its backups are kept",
    ),
    "reason": Param(type="string", minLength=10, title="Reason"),
}


def doc_md(cluster: Cluster) -> str:
    return textwrap.dedent(
        f"""
        # Decommissioning of `{cluster.name}` (stanza `{cluster.stanza}`)

        | step | what it does | touches |
        |---|---|---|
        | `validate` | the form: `confirm_stanza` must be `{cluster.stanza}`; a reason | nothing |
        | `open_change` / `wait_for_approval` / `begin_change` | a normal change; approval, Scheduled, window; Implement | ServiceNow |
        | `final_full_backup` | a last full backup, annotated with the change (archiving still works, so it is consistent) | repository |
        | `stop_archiving` | change re-read; current WAL archived; `archive_mode = off`, `archive_command = ''`; restart in the window | **PostgreSQL** |
        | `stop_stanza` | change re-read; `pgbackrest stop` for the stanza; `stanza-delete --force` only if asked | **repository** (if asked) |
        | `close_change` | closed successful with what was done | ServiceNow |

        Only the DBA role may trigger it. Afterwards remove the cluster from the inventory.
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
        dag_id=f"rewind_decommission__{cluster.name}",
        description=f"Stop archiving {cluster.name} and retire its stanza, under a change",
        doc_md=doc_md(cluster),
        params=PARAMS,
        render_template_as_native_obj=True,
        **cluster_dag_kwargs(
            cluster,
            workflow="decommission",
            access_control=DBA_ONLY,
            schedule=None,
            tags=("lifecycle", "destructive"),
            retry_delay=timedelta(seconds=30),
            default_args={"on_failure_callback": on_failure},
        ),
    ):
        validate = ValidateDecommissionOperator(task_id="validate", cluster=cluster.name, retries=0, **sn)
        open_change = OpenChangeOperator(
            task_id="open_change",
            cluster=cluster.name,
            workflow="decommission",
            plan=PLAN,
            summary="{{ ti.xcom_pull(task_ids='validate')['summary'] }}",
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
        final_full = PgBackRestBackupOperator(
            task_id="final_full_backup",
            cluster=cluster.name,
            backup_type="full",
            pool=cluster.pool,
            extra_annotations={"rewind_change": "{{ ti.xcom_pull(task_ids='open_change')['number'] }}"},
        )
        stop_archiving = StopArchivingOperator(task_id="stop_archiving", cluster=cluster.name, change=CHANGE, **sn)
        stop_stanza = StopStanzaOperator(task_id="stop_stanza", cluster=cluster.name, change=CHANGE, plan=PLAN, **sn)
        close = CloseLifecycleChangeOperator(
            task_id="close_change",
            cluster=cluster.name,
            change=CHANGE,
            done={
                "final full backup": "{{ (ti.xcom_pull(task_ids='final_full_backup') or {}).get('label') }}",
                "archiving": "{{ ti.xcom_pull(task_ids='stop_archiving') }}",
                "stanza": "{{ ti.xcom_pull(task_ids='stop_stanza') }}",
            },
            **sn,
        )

        validate >> open_change >> wait_for_approval >> begin >> final_full >> stop_archiving >> stop_stanza >> close
