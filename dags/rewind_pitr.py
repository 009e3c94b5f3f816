"""Point-in-time recovery of one cluster, behind a ServiceNow change approval.

    validate_params -> preflight -> ensure_change -> wait_for_approval (deferrable)
      -> stop_postgres -> restore (--delta) -> start_postgres -> wait_for_target
      -> validate_data -> promote -> full_backup_new_timeline -> release_restore_guard -> close_change

Triggered by hand with the params form. Nothing is stopped or restored before the params, the
repository, the target and the change have all been checked. After approval, any failure adds a
work note to the change with the state the cluster was left in; no new full backup is taken.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from rewind.inventory import Cluster, load_inventory
from rewind_airflow.access import DBA_ONLY
from rewind_airflow.notifiers.alerts import RewindAlertNotifier
from rewind_airflow.notifiers.servicenow import ChangeWorkNoteNotifier
from rewind_airflow.operators.pgbackrest import PgBackRestBackupOperator
from rewind_airflow.operators.pitr import (
    CloseChangeOperator,
    EnsureChangeOperator,
    PgBackRestRestoreOperator,
    PitrPreflightOperator,
    PitrValidateParamsOperator,
    PromoteOperator,
    ReleaseRestoreGuardOperator,
    StartPostgresOperator,
    StopPostgresOperator,
    ValidateDataOperator,
    WaitForRecoveryTargetOperator,
)
from rewind_airflow.sensors.servicenow import ChangeApprovalSensor

REQUEST = "{{ ti.xcom_pull(task_ids='validate_params') }}"
PLAN = "{{ ti.xcom_pull(task_ids='preflight') }}"
CHANGE = "{{ ti.xcom_pull(task_ids='ensure_change') }}"

PARAMS = {
    "target_type": Param("time", type="string", enum=["time", "xid", "name", "lsn", "immediate", "latest"], title="Target type",
                         description="time, transaction id, restore point name, LSN, the end of the backup (immediate), or all archived WAL (latest)"),
    "target": Param("", type="string", title="Target", maxLength=64,
                    description="time: 2026-11-24 02:13:30+00 (with time zone) · xid: 123456 · name: before-migration-42 · lsn: 0/3000060 · empty for immediate/latest"),
    "target_exclusive": Param(False, type="boolean", title="Exclusive", description="stop just before the target (time, xid, lsn)"),
    "target_action": Param("promote", type="string", enum=["promote", "pause"], title="At the target",
                           description="promote: open for writes at once · pause: run the data checks while paused, then promote"),
    "target_timeline": Param("current", type="string", pattern="^(current|latest|[1-9][0-9]*)$", title="Timeline"),
    "backup_set": Param(None, type=["null", "string"], title="Backup set", description="leave empty: the newest backup that ended before the target"),
    "change_number": Param(None, type=["null", "string"], title="Change number", description="leave empty: Rewind opens a normal change"),
    "validation_sql": Param([], type="array", title="Data checks",
                            items={"type": "object", "properties": {"sql": {"type": "string"}, "expect": {"type": ["string", "number", "boolean"]}},
                                   "required": ["sql", "expect"], "additionalProperties": False},
                            description='[{"sql": "select count(*) from ledger_entry where status = \'void\'", "expect": 0}]'),
    "reason": Param(type="string", minLength=10, title="Reason", description="why this rewind is needed (goes into the change)"),
}


def doc_md(cluster: Cluster) -> str:
    return textwrap.dedent(
        f"""
        # Point-in-time recovery of `{cluster.name}` (stanza `{cluster.stanza}`)

        **Destructive:** replaces the data directory `{cluster.postgres.data_dir}` with the state at
        the chosen target. Trigger it with the form; the change request records who approved it.

        **Who may run it:** only the DBA role may trigger or clear it (DAG access_control); auditors
        (Viewer) read every run, task log and run note, and trigger nothing.

        | step | what it does | touches |
        |---|---|---|
        | `validate_params` | target matches its type (time with zone, integer xid, safe restore point name, X/Y LSN), data checks are single statements, reason given | nothing |
        | `preflight` | repository reachable and decryptable, config not drifted, stanza ok, no other restore running; archives the current WAL; target not in the future, inside the archived WAL (xid and restore points are found in the WAL itself), after the chosen backup; free disk | WAL switch only |
        | `ensure_change` | uses `change_number`, else opens a normal change naming cluster, target and run | ServiceNow |
        | `wait_for_approval` | waits in the triggerer until approved **and** Scheduled/Implement **and** inside the window; rejection fails the run | nothing |
        | `stop_postgres` | change to Implement; restore guard up (blocks backups); WAL archived; PostgreSQL stopped (`{cluster.postgres.control}`) | **PostgreSQL** |
        | `restore` | `pgbackrest restore --delta --set=<plan> --type=<target type> --target=…` | **data directory** |
        | `start_postgres` / `wait_for_target` | starts recovery; fails loudly if PostgreSQL reports the target was not reached | PostgreSQL |
        | `validate_data` | the data checks, read-only | nothing |
        | `promote` | promotes if paused; new timeline | PostgreSQL |
        | `full_backup_new_timeline` | full backup annotated with the change number | repository |
        | `release_restore_guard` / `close_change` | backups resume; change closed `successful` with the summary, also set as this run's note | ServiceNow |

        One PITR of this stanza at a time (`max_active_runs=1`, restore guard); no backup of the
        stanza starts while a restore runs. On failure after approval: a work note on the change says
        which step failed and the state of the cluster; the guard stays up until a DBA clears it.
        Runs on the worker queue `{cluster.queue}`.
        """
    )


inventory = load_inventory()

for cluster in inventory.clusters.values():
    # From the first destructive step on, a failure is reported on the change.
    alert = RewindAlertNotifier(cluster=cluster.name, servicenow_conn_id=cluster.connections.servicenow)
    after_approval = {
        "on_failure_callback": [
            ChangeWorkNoteNotifier(cluster=cluster.name, change_sys_id="{{ ti.xcom_pull(task_ids='ensure_change')['sys_id'] }}",
                                   servicenow_conn_id=cluster.connections.servicenow),
            alert,
        ]
    }
    with DAG(
        dag_id=f"rewind_pitr__{cluster.name}",
        description=f"Point-in-time recovery of {cluster.name} behind a ServiceNow change",
        doc_md=doc_md(cluster),
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        access_control=DBA_ONLY,
        params=PARAMS,
        render_template_as_native_obj=True,
        tags=["rewind", "pitr", "destructive", f"cluster:{cluster.name}"],
        default_args={"owner": "dba", "queue": cluster.queue, "retries": 1, "retry_delay": timedelta(seconds=30),
                      "on_failure_callback": alert},
    ):
        validate_params = PitrValidateParamsOperator(task_id="validate_params", cluster=cluster.name, retries=0)
        preflight = PitrPreflightOperator(task_id="preflight", cluster=cluster.name, request=REQUEST)
        ensure_change = EnsureChangeOperator(task_id="ensure_change", cluster=cluster.name, request=REQUEST,
                                             servicenow_conn_id=cluster.connections.servicenow)
        wait_for_approval = ChangeApprovalSensor(
            task_id="wait_for_approval",
            change_number="{{ ti.xcom_pull(task_ids='ensure_change')['number'] }}",
            servicenow_conn_id=cluster.connections.servicenow,
            poll_interval=30,
            timeout=24 * 3600,
        )
        stop_postgres = StopPostgresOperator(task_id="stop_postgres", cluster=cluster.name, change=CHANGE, pool=cluster.pool,
                                             servicenow_conn_id=cluster.connections.servicenow, **after_approval)
        restore = PgBackRestRestoreOperator(task_id="restore", cluster=cluster.name, request=REQUEST, plan=PLAN, pool=cluster.pool,
                                            execution_timeout=timedelta(seconds=cluster.pgbackrest.backup_timeout_s), **after_approval)
        start_postgres = StartPostgresOperator(task_id="start_postgres", cluster=cluster.name, **after_approval)
        wait_for_target = WaitForRecoveryTargetOperator(task_id="wait_for_target", cluster=cluster.name, request=REQUEST, retries=0,
                                                        started="{{ ti.xcom_pull(task_ids='start_postgres') }}", **after_approval)
        validate_data = ValidateDataOperator(task_id="validate_data", cluster=cluster.name, request=REQUEST, retries=0, **after_approval)
        promote = PromoteOperator(task_id="promote", cluster=cluster.name, **after_approval)
        full_backup = PgBackRestBackupOperator(
            task_id="full_backup_new_timeline", cluster=cluster.name, backup_type="full", pool=cluster.pool,
            extra_annotations={"rewind_change": "{{ ti.xcom_pull(task_ids='ensure_change')['number'] }}"},
            restore_run_id="{{ run_id }}", **after_approval,
        )
        release_guard = ReleaseRestoreGuardOperator(task_id="release_restore_guard", cluster=cluster.name, **after_approval)
        close_change = CloseChangeOperator(
            task_id="close_change", cluster=cluster.name, request=REQUEST, change=CHANGE,
            servicenow_conn_id=cluster.connections.servicenow,
            steps={
                "plan": PLAN,
                "stop": "{{ ti.xcom_pull(task_ids='stop_postgres') }}",
                "restore": "{{ ti.xcom_pull(task_ids='restore') }}",
                "start": "{{ ti.xcom_pull(task_ids='start_postgres') }}",
                "recovery": "{{ ti.xcom_pull(task_ids='wait_for_target') }}",
                "checks": "{{ ti.xcom_pull(task_ids='validate_data') }}",
                "promote": "{{ ti.xcom_pull(task_ids='promote') }}",
                "backup": "{{ ti.xcom_pull(task_ids='full_backup_new_timeline') }}",
            },
            **after_approval,
        )

        (
            validate_params >> preflight >> ensure_change >> wait_for_approval
            >> stop_postgres >> restore >> start_postgres >> wait_for_target
            >> validate_data >> promote >> full_backup >> release_guard >> close_change
        )
