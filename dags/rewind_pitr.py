"""Point-in-time recovery of one cluster, behind a ServiceNow change approval.

    validate_params -> preflight -> ensure_change -> wait_for_approval (deferrable)
      -> stop_restore_promote: stop_postgres -> restore (--delta) -> start_postgres -> wait_for_target
                               -> validate_data -> promote
      -> decide_at_target (target_action decide: the DBA promotes, moves the target or aborts)
      -> full_backup_new_timeline -> release_restore_guard -> close_change

The downtime (stop_postgres to promote) is one task, so that no scheduler hand-off sits inside it;
its steps are the runbook's, each with its own checks, journaled and logged under its name.

Triggered by hand with the params form. Nothing is stopped or restored before the params, the
repository, the target and the change have all been checked, and the change and the plan are
checked again at the moment of stopping. A run rewinds at most once. After approval, any failure
adds a work note to the change with what the run did and the state the cluster was left in.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta

from airflow.sdk import DAG, Param

from rewind.inventory import Cluster, load_inventory
from rewind.roles import DBA_ONLY
from rewind_airflow.defaults import alert_callbacks, cluster_dag_kwargs
from rewind_airflow.notifiers.servicenow import PitrFailureNotifier
from rewind_airflow.operators.pitr import (
    CloseChangeOperator,
    EnsureChangeOperator,
    PitrFullBackupOperator,
    PitrPreflightOperator,
    PitrValidateParamsOperator,
    ReleaseRestoreGuardOperator,
    StopRestorePromoteOperator,
)
from rewind_airflow.operators.pitr_decide import DecideAtTargetOperator
from rewind_airflow.sensors.servicenow import ChangeApprovalSensor

REQUEST = "{{ ti.xcom_pull(task_ids='validate_params') }}"
PLAN = "{{ ti.xcom_pull(task_ids='preflight') }}"
PITR_STEP_RETRIES = 12

PARAMS = {
    "target_type": Param(
        "time",
        type="string",
        enum=["time", "xid", "name", "lsn", "immediate", "latest"],
        title="Target type",
        description="time, transaction id, restore point name, LSN, the end of the backup (immediate), or all archived WAL (latest)",
    ),
    "target": Param(
        "",
        type="string",
        title="Target",
        maxLength=64,
        description="time: 2026-11-24 02:13:30+00 (with time zone) · xid: 123456 · name: before-migration-42 · lsn: 0/3000060 · empty for immediate/latest",
    ),
    "target_exclusive": Param(False, type="boolean", title="Exclusive", description="stop just before the target (time, xid, lsn)"),
    "target_action": Param(
        "pause",
        type="string",
        enum=["pause", "decide", "promote"],
        title="At the target",
        description="pause (default): stop read-only at the target, run the data checks, promote only if they pass · decide: pause and check, then a DBA decides in Required actions: promote, move the target, or abort back to latest · promote: open for writes at the target, checks after (latest always promotes)",
    ),
    "approved_window_s": Param(
        0,
        type="integer",
        minimum=0,
        maximum=86400,
        title="Approved window (seconds, decide + time targets)",
        description="with decide: a DBA may move a time target this far from the one approved and still promote; "
        "anywhere else needs a follow-on change approved · 0: only the target itself",
    ),
    "mode": Param(
        "inventory",
        type="string",
        enum=["inventory", "in_place", "clone", "undo"],
        title="Where the target is built",
        description="inventory: the cluster's pitr.mode (clone unless it says in_place) · clone: restore and check beside "
        "production while it serves, then cut over in seconds · in_place: stop PostgreSQL, restore over its data directory "
        "(hosts without room beside it; target latest) · undo: back over the last clone-mode rewind in seconds, its kept "
        "directory swapped back in (target_type latest, target_timeline the timeline that rewind left)",
    ),
    "target_timeline": Param("current", type="string", pattern="^(current|latest|[1-9][0-9]*)$", title="Timeline"),
    "backup_set": Param(
        None, type=["null", "string"], title="Backup set", description="leave empty: the newest backup that ended before the target"
    ),
    "change_number": Param(
        None, type=["null", "string"], title="Change number", description="leave empty: Rewind opens a change of the type below"
    ),
    "change_type": Param(
        "normal",
        type="string",
        enum=["normal", "emergency"],
        title="Change type",
        description="normal: the CAB approves · emergency: an incident-driven rewind, the emergency approvers decide",
    ),
    "validation_sql": Param(
        [],
        type="array",
        title="Data checks",
        items={
            "type": "object",
            "properties": {"sql": {"type": "string"}, "expect": {"type": ["string", "number", "boolean"]}},
            "required": ["sql", "expect"],
            "additionalProperties": False,
        },
        description='[{"sql": "select count(*) from ledger_entry where status = \'void\'", "expect": 0}] · run as a read-only, non-superuser role',
    ),
    "validation_database": Param(
        None,
        type=["null", "string"],
        title="Database for the data checks",
        description="leave empty: the cluster's main database (inventory postgres.database)",
    ),
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

        **Where the target is built** (`mode`; this cluster's default: `{cluster.pitr.mode}`): `clone`
        restores, recovers and checks a clone beside production while it serves
        (`restore_clone -> start_clone -> wait_for_target -> validate_data`), then `cutover` stops
        production for seconds and swaps the directories (the old one kept, stopped); with `decide`
        the DBA decides on the clone. `in_place` is the table below. `undo` swaps back the directory
        the last clone-mode rewind kept (`stop_postgres -> swap_back -> start_postgres -> ...`).

        | step | what it does | touches |
        |---|---|---|
        | `validate_params` | target matches its type, data checks are single statements, reason given; a given change is open, raised for this cluster (cmdb_ci) and not used by another PITR; no other PITR of this cluster is active (it is named) | nothing |
        | `preflight` | repository reachable and decryptable, config not drifted, stanza ok; archives the current WAL; resolves the timeline to a number; target not in the future, found in the archived WAL; a backup on the timeline's history before it; every WAL segment between them archived; free disk; data-check role safe. From here the pre-rewind history is held from expiry | a marker commit (time targets stay reachable), WAL switch |
        | `ensure_change` | binds `change_number` to this run, else opens a normal change naming cluster, target, what happens at the target and the run | ServiceNow |
        | `wait_for_approval` | waits in the triggerer until approved **and** Scheduled/Implement **and** inside the window; rejection ends the run; no decision within {cluster.pitr.approval_timeout_h:g} h cancels the change | nothing |
        | `stop_restore_promote` | the downtime, in one task (no scheduler hand-off inside it), step by step: | |
        | · `stop_postgres` | **re-reads the change** (approved, Scheduled/Implement, in window) and **re-plans** from the repository as it is now; then the restore guard (blocks backups), change to Implement, WAL archived, PostgreSQL stopped (`{cluster.postgres.control}`) | **PostgreSQL** |
        | · `restore` | change re-read; `pgbackrest restore --delta --set=<plan> --type=<target type> --target=… --target-timeline=<number>` | **data directory** |
        | · `start_postgres` / `wait_for_target` | change re-read; starts recovery; waits until paused at the target (or promoted); fails loudly if PostgreSQL reports the target was not reached | PostgreSQL |
        | · `validate_data` | the data checks as `{cluster.postgres.check_role}` (no superuser, read-only, {cluster.postgres.check_timeout_s} s each) on the cluster still paused at the target | nothing |
        | · `promote` | promotes only when the checks passed; new timeline (with `decide`: not here) | PostgreSQL |
        | `decide_at_target` | with target_action `decide` only: asks the DBA role in **Required actions**, the cluster paused read-only: **Promote** (refused while a check fails), **Move the target** (checked, then restored again with `--delta`, paused, checked, asked again) or **Abort: back to latest** (nothing lost); the change is re-read before each act; each answer and who gave it is a work note; no answer within {cluster.pitr.decision_timeout_h:g} h fails the task, the cluster stays paused | PostgreSQL |
        | `full_backup_new_timeline` | full backup annotated with the change number | repository |
        | `release_restore_guard` / `close_change` | backups resume; change closed `successful` with the summary, also set as this run's note; the pre-rewind history stays held {cluster.pitr.hold_days:g} days | ServiceNow |

        **At most once:** a run that has started PostgreSQL on restored data never stops or restores it
        again, whatever is cleared (a retry goes on from `wait_for_target`; after promotion it refuses);
        before that, a retry finishes the same rewind under the same change while it is approved, in
        Implement and inside its window. A failed data check or a missed target is not retried.
        One PITR of this cluster at a time (a second trigger is refused, naming the first); no backup of
        the stanza runs while a restore does. On failure after approval: a work note on the change
        says what the run did (stopped, restored, started, promoted, new full backup or not) and the
        state of the cluster; the guard stays up until a DBA clears it or a new PITR takes it over.
        Runs on the worker queue `{cluster.queue}`.
        """
    )


inventory = load_inventory()

for cluster in inventory.clusters.values():
    sn = {"servicenow_conn_id": cluster.connections.servicenow}
    with DAG(
        dag_id=f"rewind_pitr__{cluster.name}",
        description=f"Point-in-time recovery of {cluster.name} behind a ServiceNow change",
        doc_md=doc_md(cluster),
        params=PARAMS,
        render_template_as_native_obj=True,
        **cluster_dag_kwargs(
            cluster,
            workflow="pitr",
            access_control=DBA_ONLY,
            schedule=None,
            tags=("destructive",),
            # Short: a step cut off by a crash (its heartbeat missed for [scheduler]
            # task_instance_heartbeat_timeout) resumes the rewind within a minute (README "Crash recovery").
            # Many: every step resumes from the run's journal, and a try that starts while Airflow
            # itself is still coming back (the API server not up yet after every component was
            # killed) must not be the last one, leaving PostgreSQL down until a DBA clears the task.
            # Growing from 10 s to at most 30 s: about six minutes of outage ridden out, and a step
            # resumes within 30 s of Airflow being back. What no retry can change fails at once (Refused).
            retries=PITR_STEP_RETRIES,
            retry_delay=timedelta(seconds=10),
            # A second trigger must start, to be refused by name, instead of queueing behind the first.
            max_active_runs=3,
            default_args={
                "on_failure_callback": [PitrFailureNotifier(cluster=cluster.name, **sn), alert_callbacks(cluster)["on_failure_callback"]],
                "retry_exponential_backoff": 2.0,
                "max_retry_delay": timedelta(seconds=30),
            },
        ),
    ):
        validate_params = PitrValidateParamsOperator(task_id="validate_params", cluster=cluster.name, retries=0, **sn)
        preflight = PitrPreflightOperator(task_id="preflight", cluster=cluster.name, request=REQUEST, **sn)
        ensure_change = EnsureChangeOperator(task_id="ensure_change", cluster=cluster.name, request=REQUEST, **sn)
        wait_for_approval = ChangeApprovalSensor(
            task_id="wait_for_approval",
            change_number="{{ ti.xcom_pull(task_ids='ensure_change')['number'] }}",
            poll_interval=cluster.pitr.approval_poll_s,
            timeout=cluster.pitr.approval_timeout_h * 3600,
            **sn,
        )
        stop_restore_promote = StopRestorePromoteOperator(
            task_id="stop_restore_promote", cluster=cluster.name, request=REQUEST, plan=PLAN, pool=cluster.pool, **sn
        )
        decide_at_target = DecideAtTargetOperator(
            task_id="decide_at_target",
            cluster=cluster.name,
            request=REQUEST,
            response_timeout=timedelta(hours=cluster.pitr.decision_timeout_h),
            reapproval_poll_s=cluster.pitr.approval_poll_s,  # promoting outside the approved target: a follow-on change
            # every try converges (an answer recorded but not carried out is carried out, else it asks again)
            retries=PITR_STEP_RETRIES,
            pool=cluster.pool,
            **sn,
        )
        full_backup = PitrFullBackupOperator(task_id="full_backup_new_timeline", cluster=cluster.name, pool=cluster.pool)
        # An abort on the clone skips the full backup (no new timeline): the guard is released and
        # the change closed all the same.
        release_guard = ReleaseRestoreGuardOperator(task_id="release_restore_guard", cluster=cluster.name, trigger_rule="none_failed", **sn)
        close_change = CloseChangeOperator(
            task_id="close_change",
            trigger_rule="none_failed",
            cluster=cluster.name,
            request=REQUEST,
            steps={
                "stop": "{{ ti.xcom_pull(task_ids='stop_restore_promote')['stop'] }}",
                "recovery": "{{ ti.xcom_pull(task_ids='stop_restore_promote')['recovery'] }}",
                "checks": "{{ ti.xcom_pull(task_ids='stop_restore_promote')['checks'] }}",
                "promote": "{{ ti.xcom_pull(task_ids='stop_restore_promote')['promote'] }}",
                "decision": "{{ ti.xcom_pull(task_ids='decide_at_target') }}",
                "backup": "{{ ti.xcom_pull(task_ids='full_backup_new_timeline') }}",
            },
            **sn,
        )

        (
            validate_params
            >> preflight
            >> ensure_change
            >> wait_for_approval
            >> stop_restore_promote
            >> decide_at_target
            >> full_backup
            >> release_guard
            >> close_change
        )
